// ctest of the QvgenW4A4Linear plugin's TensorRT-free core (plugin_core.h).
// Usage: qvgen_trt_plugin_core_test [path/to/trt_plugin.json]
// The JSON (default: the path baked into the generated header) is re-read here with a small
// independent scanner and compared with the generated constants, so a generator bug cannot hide.
#include "plugin_core.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "qvgen/w4a4_types.h"

using namespace qvgen::trt;
namespace c = qvgen::trt::contract;

static int gFailures = 0;
static int gChecks = 0;

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        ++gChecks;                                                                                                     \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            ++gFailures;                                                                                               \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                              \
        }                                                                                                              \
    } while (0)

// Expects `expr` to throw PluginError whose message contains every one of `parts`.
static void expectThrow(char const* file, int line, std::function<void()> const& expr,
    std::initializer_list<char const*> parts)
{
    ++gChecks;
    try
    {
        expr();
    }
    catch (PluginError const& e)
    {
        for (char const* p : parts)
        {
            if (std::strstr(e.what(), p) == nullptr)
            {
                ++gFailures;
                std::fprintf(stderr, "%s:%d: message lacks '%s': %s\n", file, line, p, e.what());
            }
        }
        return;
    }
    catch (std::exception const& e)
    {
        ++gFailures;
        std::fprintf(stderr, "%s:%d: threw a non-PluginError: %s\n", file, line, e.what());
        return;
    }
    ++gFailures;
    std::fprintf(stderr, "%s:%d: expected an exception\n", file, line);
}
#define EXPECT_THROW(expr, ...) expectThrow(__FILE__, __LINE__, [&] { (void) (expr); }, {__VA_ARGS__})

static bool noThrow(std::function<void()> const& f)
{
    try
    {
        f();
        return true;
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        return false;
    }
}

// ---------------------------------------------------------------------------------------------
// The generated header equals the JSON
// ---------------------------------------------------------------------------------------------

// The JSON without whitespace outside strings, so patterns like "name":"x" are exact.
static std::string compactJson(std::string const& s)
{
    std::string out;
    bool inStr = false;
    for (size_t i = 0; i < s.size(); ++i)
    {
        char const ch = s[i];
        if (inStr)
        {
            out += ch;
            if (ch == '\\' && i + 1 < s.size())
            {
                out += s[++i];
            }
            else if (ch == '"')
            {
                inStr = false;
            }
        }
        else if (ch == '"')
        {
            inStr = true;
            out += ch;
        }
        else if (ch != ' ' && ch != '\n' && ch != '\t' && ch != '\r')
        {
            out += ch;
        }
    }
    return out;
}

static std::string stringAfter(std::string const& j, std::string const& key, size_t from = 0)
{
    size_t p = j.find("\"" + key + "\":\"", from);
    if (p == std::string::npos)
    {
        return "<missing " + key + ">";
    }
    p += key.size() + 4;
    return j.substr(p, j.find('"', p) - p);
}

static long long intAfter(std::string const& j, std::string const& key, size_t from, size_t to)
{
    size_t const p = j.find("\"" + key + "\":", from);
    if (p == std::string::npos || p >= to)
    {
        return std::numeric_limits<long long>::min();
    }
    return std::stoll(j.substr(p + key.size() + 3));
}

static void testContractMatchesJson(std::string const& path)
{
    std::ifstream in(path);
    CHECK(in.good());
    if (!in.good())
    {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        return;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::string const j = compactJson(ss.str());

    CHECK(stringAfter(j, "op_type") == c::kOpType);
    CHECK(stringAfter(j, "version") == c::kVersion);
    CHECK(stringAfter(j, "namespace") == c::kNamespace);
    CHECK(intAfter(j, "min_rank", 0, j.size()) == c::kMinRank);
    CHECK(intAfter(j, "max_rank", 0, j.size()) == c::kMaxRank);
    CHECK(intAfter(j, "row_align_bytes", 0, j.size()) == c::kRowAlignBytes);
    CHECK(intAfter(j, "codes_per_byte", 0, j.size()) == c::kCodesPerByte);

    // Inputs: same names in the same order, same dtypes, same count.
    size_t const inputs = j.find("\"inputs\":[");
    size_t const outputs = j.find("\"outputs\":[");
    CHECK(inputs != std::string::npos && outputs != std::string::npos && inputs < outputs);
    int count = 0;
    for (size_t p = j.find("{\"name\":", inputs); p < outputs; p = j.find("{\"name\":", p + 1))
    {
        ++count;
    }
    CHECK(count == c::kNbInputs);
    size_t prev = inputs;
    for (int32_t i = 0; i < c::kNbInputs; ++i)
    {
        size_t const p = j.find("{\"name\":\"" + std::string(c::kInputs[i].name) + "\"", inputs);
        CHECK(p != std::string::npos && p > prev && p < outputs);
        size_t const end = j.find('}', p);
        std::string const seg = j.substr(p, end - p);
        uint32_t mask = 0;
        mask |= seg.find("\"float32\"") != std::string::npos ? c::kDtypeF32 : 0u;
        mask |= seg.find("\"float16\"") != std::string::npos ? c::kDtypeF16 : 0u;
        mask |= seg.find("\"bfloat16\"") != std::string::npos ? c::kDtypeBF16 : 0u;
        mask |= seg.find("\"int32\"") != std::string::npos ? c::kDtypeI32 : 0u;
        CHECK(mask == c::kInputs[i].dtypes);
        prev = p;
    }
    CHECK(stringAfter(j, "name", outputs) == c::kOutputName);

    // Fields: names in order, limits / allowed lists.
    size_t const fields = j.find("\"fields\":[");
    CHECK(fields != std::string::npos);
    int nbFields = 0;
    size_t const fieldsEnd = j.find("],\"layout\"", fields);
    for (size_t p = j.find("{\"name\":", fields); p < fieldsEnd; p = j.find("{\"name\":", p + 1))
    {
        ++nbFields;
    }
    CHECK(nbFields == c::kNbFields);
    prev = fields;
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        c::FieldSpec const& s = c::kFields[i];
        size_t const p = j.find("{\"name\":\"" + std::string(s.name) + "\"", fields);
        CHECK(p != std::string::npos && p > prev);
        size_t const end = j.find('}', p);
        CHECK(stringAfter(j, "type", p) == "int32");
        size_t const allowed = j.find("\"allowed\":[", p);
        if (allowed != std::string::npos && allowed < end)
        {
            std::string list = j.substr(allowed + 11, j.find(']', allowed) - allowed - 11);
            std::string mine;
            for (int32_t k = 0; k < s.nbAllowed; ++k)
            {
                mine += (k ? "," : "") + std::to_string(s.allowed[k]);
            }
            CHECK(list == mine); // the JSON lists them sorted; the header sorts them
        }
        else
        {
            CHECK(s.nbAllowed == 0);
            CHECK(intAfter(j, "min", p, end) == s.min);
            CHECK(intAfter(j, "max", p, end) == s.max);
        }
        prev = p;
    }
    // The values the code relies on, spelled out once (a JSON change must be looked at here too).
    CHECK(std::string(c::kOpType) == "QvgenW4A4Linear");
    CHECK(c::kFields[c::kField_in_features].max == 74565);
    CHECK(c::kField_in_features == 0 && c::kField_out_features == 1 && c::kField_act_bits == 2 && c::kField_weight_bits == 3);
}

// ---------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------

struct FieldSet
{
    std::vector<int32_t> v32;
    std::vector<RawField> raw;
    FieldSet(int32_t k, int32_t n, int32_t ab, int32_t wb) : v32{k, n, ab, wb}
    {
        char const* names[] = {"in_features", "out_features", "act_bits", "weight_bits"};
        for (int i = 0; i < 4; ++i)
        {
            raw.push_back(RawField{names[i], FieldType::kINT32, &v32[i], 1});
        }
    }
};

static void testFields()
{
    FieldSet ok(3072, 1536, 4, 4);
    Fields f = parseFields(ok.raw);
    CHECK(f.inFeatures == 3072 && f.outFeatures == 1536 && f.actBits == 4 && f.weightBits == 4);

    // Order does not matter; int64 and int16 values are accepted (Python builders may send them).
    FieldSet rev(64, 32, 3, 2);
    std::swap(rev.raw[0], rev.raw[3]);
    int64_t k64 = 64;
    rev.raw[3] = RawField{"in_features", FieldType::kINT64, &k64, 1};
    int16_t ab16 = 3;
    rev.raw[2] = RawField{"act_bits", FieldType::kINT16, &ab16, 1};
    f = parseFields(rev.raw);
    CHECK(f.inFeatures == 64 && f.outFeatures == 32 && f.actBits == 3 && f.weightBits == 2);

    // Limits: both ends accepted, one past rejected with field name and value in the message.
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        CHECK(noThrow([&] { checkFieldValue(i, c::kFields[i].min); }));
        CHECK(noThrow([&] { checkFieldValue(i, c::kFields[i].max); }));
        std::string const below = std::to_string(int64_t{c::kFields[i].min} - 1);
        std::string const above = std::to_string(int64_t{c::kFields[i].max} + 1);
        EXPECT_THROW(checkFieldValue(i, int64_t{c::kFields[i].min} - 1), c::kFields[i].name, below.c_str());
        EXPECT_THROW(checkFieldValue(i, int64_t{c::kFields[i].max} + 1), c::kFields[i].name, above.c_str());
    }
    EXPECT_THROW(parseFields(FieldSet(0, 8, 4, 4).raw), "in_features", "= 0");
    EXPECT_THROW(parseFields(FieldSet(74566, 8, 4, 4).raw), "in_features", "74566", "[1, 74565]");
    EXPECT_THROW(parseFields(FieldSet(64, 0, 4, 4).raw), "out_features", "= 0");
    EXPECT_THROW(parseFields(FieldSet(64, 8, 1, 4).raw), "act_bits", "= 1", "{2, 3, 4}");
    EXPECT_THROW(parseFields(FieldSet(64, 8, 4, 8).raw), "weight_bits", "= 8");
    int64_t huge = int64_t{1} << 40;
    FieldSet h(64, 8, 4, 4);
    h.raw[1] = RawField{"out_features", FieldType::kINT64, &huge, 1};
    EXPECT_THROW(parseFields(h.raw), "out_features", "1099511627776");

    // Missing, unknown, duplicated, wrong type/length/data.
    FieldSet m(64, 8, 4, 4);
    m.raw.erase(m.raw.begin() + 2);
    EXPECT_THROW(parseFields(m.raw), "missing field 'act_bits'");
    FieldSet u(64, 8, 4, 4);
    int32_t one = 1;
    u.raw.push_back(RawField{"group_size", FieldType::kINT32, &one, 1});
    EXPECT_THROW(parseFields(u.raw), "unknown field 'group_size'", "in_features");
    FieldSet d(64, 8, 4, 4);
    d.raw.push_back(d.raw[0]);
    EXPECT_THROW(parseFields(d.raw), "'in_features' given twice");
    FieldSet t(64, 8, 4, 4);
    float fl = 4.0f;
    t.raw[3] = RawField{"weight_bits", FieldType::kFLOAT32, &fl, 1};
    EXPECT_THROW(parseFields(t.raw), "'weight_bits' must be an integer");
    FieldSet l(64, 8, 4, 4);
    l.raw[0].length = 2;
    EXPECT_THROW(parseFields(l.raw), "'in_features' must hold exactly one value", "length 2");
    l.raw[0].length = 1;
    l.raw[0].data = nullptr;
    EXPECT_THROW(parseFields(l.raw), "'in_features'", "no data");
    EXPECT_THROW(parseFields({}), "missing field 'in_features'");

    auto vals = fieldValues(Fields{100, 200, 3, 2});
    CHECK(vals.size() == 4 && std::string(vals[0].first) == "in_features" && vals[0].second == 100);
    CHECK(std::string(vals[3].first) == "weight_bits" && vals[3].second == 2);
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

static void testSerialization()
{
    for (Fields const& f : {Fields{1, 1, 2, 2}, Fields{3072, 1536, 4, 4}, Fields{74565, 1048576, 3, 4}})
    {
        std::vector<uint8_t> const b = serializeFields(f);
        CHECK(deserializeFields(b.data(), b.size()) == f);
        // Every single-byte corruption and every truncation is refused.
        for (size_t i = 0; i < b.size(); ++i)
        {
            std::vector<uint8_t> bad = b;
            bad[i] ^= 0x5a;
            EXPECT_THROW(deserializeFields(bad.data(), bad.size()), "serialized state");
            EXPECT_THROW(deserializeFields(b.data(), i), "serialized state");
        }
        std::vector<uint8_t> longer = b;
        longer.push_back(0);
        EXPECT_THROW(deserializeFields(longer.data(), longer.size()), "trailing");
    }
    EXPECT_THROW(deserializeFields(nullptr, 10), "null");

    // A state written by another contract version (valid checksum) names both versions.
    std::vector<uint8_t> b = serializeFields(Fields{64, 8, 4, 4});
    size_t const verPos = 8 + 4; // magic, format, then u32 length + version bytes
    CHECK(b.size() > verPos && std::string(reinterpret_cast<char const*>(&b[verPos]), std::strlen(c::kVersion)) == c::kVersion);
    b[verPos] = static_cast<uint8_t>(b[verPos] == '9' ? '8' : '9');
    uint32_t h = 2166136261u;
    for (size_t i = 0; i + 4 < b.size(); ++i)
    {
        h = (h ^ b[i]) * 16777619u;
    }
    for (int i = 0; i < 4; ++i)
    {
        b[b.size() - 4 + i] = static_cast<uint8_t>(h >> (8 * i));
    }
    EXPECT_THROW(deserializeFields(b.data(), b.size()), "contract version", "rebuild the engine");

    // The state field: accepted only at runtime; alone or agreeing with the plain fields.
    std::vector<uint8_t> const s = serializeFields(Fields{64, 8, 3, 2});
    RawField const state{kStateFieldName, FieldType::kINT8, s.data(), static_cast<int32_t>(s.size())};
    CHECK(parseFields({state}, true) == (Fields{64, 8, 3, 2}));
    FieldSet same(64, 8, 3, 2);
    same.raw.push_back(state);
    CHECK(parseFields(same.raw, true) == (Fields{64, 8, 3, 2}));
    FieldSet other(64, 8, 4, 2);
    other.raw.push_back(state);
    EXPECT_THROW(parseFields(other.raw, true), "disagrees");
    EXPECT_THROW(parseFields(other.raw, false), "unknown field 'qvgen_state'");
    RawField wrongType = state;
    wrongType.type = FieldType::kINT32;
    EXPECT_THROW(parseFields({wrongType}, true), "must be bytes");
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

static std::vector<Shape> inputsFor(Shape x, int64_t K, int64_t N, int64_t ldw)
{
    (void) K;
    return {x, {x[0]}, {x[0]}, {N, ldw}, {N}, {N}, {N}, {N}};
}

static void testShapes()
{
    Fields const f{40, 24, 4, 4}; // ceil(40/2) = 20 bytes -> rows of 32 bytes -> LDW = 8
    for (Shape const& x : {Shape{3, 40}, Shape{2, 7, 40}, Shape{2, 5, 6, 40}})
    {
        CHECK(noThrow([&] { checkInputShapes(f, inputsFor(x, 40, 24, 8)); }));
        Shape y = outputShape(f, x);
        CHECK(y.size() == x.size() && y.back() == 24);
        for (size_t i = 0; i + 1 < x.size(); ++i)
        {
            CHECK(y[i] == x[i]);
        }
    }
    CHECK(outputShape(f, Shape{-1, -1, 40}) == (Shape{-1, -1, 24}));
    // Dynamic extents pass the build-time checks.
    CHECK(noThrow([&] { checkInputShapes(f, {{-1, -1, 40}, {-1}, {-1}, {24, 8}, {24}, {24}, {24}, {24}}); }));
    CHECK(noThrow([&] { checkInputShapes(f, inputsFor({2, 9, 40}, 40, 24, 12)); })); // wider rows: 48 bytes

    EXPECT_THROW(checkInputShapes(f, inputsFor({40}, 40, 24, 8)), "rank 2..4", "[40]");
    EXPECT_THROW(checkInputShapes(f, inputsFor({1, 2, 3, 4, 40}, 40, 24, 8)), "rank 2..4");
    EXPECT_THROW(checkInputShapes(f, inputsFor({2, 7, 41}, 40, 24, 8)), "in_features = 40", "[2, 7, 41]");
    EXPECT_THROW(checkInputShapes(f, inputsFor({2, 7, 40}, 40, 24, 4)), "qweight", "16 bytes", "ceil(K/2) = 20");
    EXPECT_THROW(checkInputShapes(f, inputsFor({2, 7, 40}, 40, 24, 5)), "qweight", "multiple of 16");
    EXPECT_THROW(checkInputShapes(f, inputsFor({2, 7, 40}, 40, 25, 8)), "qweight", "N = 24");
    auto in = inputsFor({2, 7, 40}, 40, 24, 8);
    in[1] = {3};
    EXPECT_THROW(checkInputShapes(f, in), "'clip_lo' must be [B] = [2]", "[3]");
    in = inputsFor({2, 7, 40}, 40, 24, 8);
    in[2] = {2, 1};
    EXPECT_THROW(checkInputShapes(f, in), "'clip_hi'");
    in = inputsFor({2, 7, 40}, 40, 24, 8);
    in[3] = {24, 8, 1};
    EXPECT_THROW(checkInputShapes(f, in), "qweight");
    for (int i = 4; i < 8; ++i)
    {
        in = inputsFor({2, 7, 40}, 40, 24, 8);
        in[i] = {23};
        EXPECT_THROW(checkInputShapes(f, in), c::kInputs[i].name, "[N] = [24]");
    }
    in = inputsFor({2, 7, 40}, 40, 24, 8);
    in.pop_back();
    EXPECT_THROW(checkInputShapes(f, in), "expected 8 inputs");

    CHECK(tokenCount({2, 5, 6, 40}) == 60);
    CHECK(tokenCount({3, 40}) == 3);
    EXPECT_THROW(tokenCount({-1, 40}), "unknown");
    EXPECT_THROW(tokenCount({int64_t{1} << 40, int64_t{1} << 40, 8}), "overflow");
}

// ---------------------------------------------------------------------------------------------
// Types and formats
// ---------------------------------------------------------------------------------------------

static void testTypes()
{
    DataType const fl[] = {DataType::kFLOAT, DataType::kHALF, DataType::kBF16};
    for (DataType xt : fl)
    {
        IoDesc io[9] = {{xt, true}, {DataType::kFLOAT, true}, {DataType::kFLOAT, true}, {DataType::kINT32, true},
            {DataType::kFLOAT, true}, {DataType::kFLOAT, true}, {DataType::kINT32, true}, {DataType::kFLOAT, true},
            {xt, true}};
        for (int pos = 0; pos < 9; ++pos)
        {
            CHECK(supportsCombination(pos, io, 8, 1));
            IoDesc saved = io[pos];
            io[pos].linear = false;
            CHECK(!supportsCombination(pos, io, 8, 1));
            io[pos] = saved;
        }
        for (DataType yt : fl)
        {
            io[8].type = yt;
            CHECK(supportsCombination(8, io, 8, 1) == (yt == xt));
        }
        io[8].type = xt;
        // Fixed-type inputs refuse every other type.
        io[3].type = DataType::kFLOAT;
        CHECK(!supportsCombination(3, io, 8, 1));
        io[1].type = DataType::kHALF;
        CHECK(!supportsCombination(1, io, 8, 1));
        io[6].type = DataType::kFLOAT;
        CHECK(!supportsCombination(6, io, 8, 1));
        CHECK(!supportsCombination(0, io, 7, 1));
        CHECK(!supportsCombination(9, io, 8, 1));
        CHECK(!supportsCombination(-1, io, 8, 1));

        DataType types[8] = {xt, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT,
            DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT};
        CHECK(outputType(types, 8) == xt);
    }
    IoDesc io[9] = {};
    io[0] = {DataType::kINT32, true};
    CHECK(!supportsCombination(0, io, 8, 1));
    io[0] = {DataType::kOTHER, true};
    CHECK(!supportsCombination(0, io, 8, 1));
    DataType bad[8] = {DataType::kINT32};
    EXPECT_THROW(outputType(bad, 8), "input 'x'", "int32");
    EXPECT_THROW(outputType(bad, 7), "expected 8");
    CHECK(qvgenDtype(DataType::kFLOAT) == QVGEN_DTYPE_F32);
    CHECK(qvgenDtype(DataType::kHALF) == QVGEN_DTYPE_F16);
    CHECK(qvgenDtype(DataType::kBF16) == QVGEN_DTYPE_BF16);
    EXPECT_THROW(qvgenDtype(DataType::kINT32), "no kernel");
}

// ---------------------------------------------------------------------------------------------
// Workspace and launch plan
// ---------------------------------------------------------------------------------------------

static void testWorkspace()
{
    // Hand-computed: K = 33 -> 17 bytes -> ldq 32; M = 3: qx 96 B at 0, scale at 256, zero at 512,
    // code_sum at 768, end 1024, + 255 slack.
    WorkspaceLayout w = workspaceLayout(3, 33);
    CHECK(w.ldq == 32 && w.qxOffset == 0 && w.scaleOffset == 256 && w.zeroOffset == 512 && w.codeSumOffset == 768);
    CHECK(w.total == 1024 + 255);
    // K = 3072, M = 1000: ldq 1536, qx 1,536,000 B (a multiple of 256); vectors 4000 B -> 4096.
    w = workspaceLayout(1000, 3072);
    CHECK(w.ldq == 1536 && w.scaleOffset == 1536000 && w.zeroOffset == 1536000 + 4096);
    CHECK(w.codeSumOffset == 1536000 + 2 * 4096 && w.total == 1536000 + 3 * 4096 + 255);
    w = workspaceLayout(0, 64);
    CHECK(w.ldq == 32 && w.total == 255);
    CHECK(workspaceLayout(1, 1).ldq == 16 && workspaceLayout(1, 32).ldq == 16 && workspaceLayout(1, 34).ldq == 32);
    // Properties over a sweep: aligned, ordered, non-overlapping regions that fit.
    for (int64_t M : {1, 2, 7, 63, 64, 65, 255, 257, 4096, 32760})
    {
        for (int64_t K : {1, 2, 31, 32, 33, 64, 1000, 5120, 13824, 74565})
        {
            WorkspaceLayout const l = workspaceLayout(M, K);
            CHECK(l.ldq % 16 == 0 && l.ldq >= (K + 1) / 2 && l.ldq < (K + 1) / 2 + 16);
            CHECK(l.scaleOffset % 256 == 0 && l.zeroOffset % 256 == 0 && l.codeSumOffset % 256 == 0);
            CHECK(l.scaleOffset >= static_cast<size_t>(M * l.ldq));
            CHECK(l.zeroOffset >= l.scaleOffset + 4 * M && l.codeSumOffset >= l.zeroOffset + 4 * M);
            CHECK(l.total >= l.codeSumOffset + 4 * M + 255 && l.total < l.codeSumOffset + 4 * M + 512);
        }
    }
    EXPECT_THROW(workspaceLayout(std::numeric_limits<int64_t>::max() / 8, 64), "overflow");
    EXPECT_THROW(workspaceLayout(-1, 64), "workspace");
    CHECK(workspaceSize(Fields{3072, 1536, 4, 4}, {2, 500, 3072}) == workspaceLayout(1000, 3072).total);
    CHECK(alignWorkspace(0) == 0 && alignWorkspace(1) == 256 && alignWorkspace(256) == 256 && alignWorkspace(257) == 512);

    // Launch plan.
    Fields const f{40, 24, 3, 4};
    auto in = inputsFor({2, 5, 7, 40}, 40, 24, 8);
    size_t const need = workspaceLayout(70, 40).total;
    LaunchPlan p = makeLaunchPlan(f, in, DataType::kHALF, DataType::kHALF, need);
    CHECK(p.M == 70 && p.T == 35 && p.K == 40 && p.N == 24 && p.ldx == 40 && p.ldy == 24 && p.ldqw == 32);
    CHECK(p.xDtype == QVGEN_DTYPE_F16 && p.actBits == 3 && p.ws.ldq == 32 && !p.empty());
    p = makeLaunchPlan(f, inputsFor({3, 40}, 40, 24, 8), DataType::kBF16, DataType::kBF16, need);
    CHECK(p.M == 3 && p.T == 1 && p.xDtype == QVGEN_DTYPE_BF16);
    p = makeLaunchPlan(f, inputsFor({0, 7, 40}, 40, 24, 8), DataType::kFLOAT, DataType::kFLOAT, 0);
    CHECK(p.empty());
    p = makeLaunchPlan(f, inputsFor({2, 0, 40}, 40, 24, 8), DataType::kFLOAT, DataType::kFLOAT, 0);
    CHECK(p.empty() && p.T == 0);
    EXPECT_THROW(makeLaunchPlan(f, in, DataType::kHALF, DataType::kHALF, need - 1), "workspace of", "smaller");
    EXPECT_THROW(makeLaunchPlan(f, in, DataType::kHALF, DataType::kFLOAT, need), "differs");
    EXPECT_THROW(makeLaunchPlan(f, in, DataType::kINT32, DataType::kINT32, need), "no kernel");
    EXPECT_THROW(makeLaunchPlan(f, inputsFor({-1, 5, 40}, 40, 24, 8), DataType::kHALF, DataType::kHALF, need), "unknown dim");
    EXPECT_THROW(makeLaunchPlan(f, inputsFor({2, 5, 41}, 40, 24, 8), DataType::kHALF, DataType::kHALF, need), "in_features");
}

int main(int argc, char** argv)
{
    std::string const json = argc > 1 ? argv[1] : c::kContractJsonPath;
    testContractMatchesJson(json);
    testFields();
    testSerialization();
    testShapes();
    testTypes();
    testWorkspace();
    std::printf("qvgen_trt_plugin_core_test: %d checks, %d failures (contract %s)\n", gChecks, gFailures, json.c_str());
    return gFailures == 0 ? 0 : 1;
}
