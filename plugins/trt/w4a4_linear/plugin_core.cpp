// TensorRT-free core of the QvgenW4A4Linear plugin (see plugin_core.h for the rules).
#include "plugin_core.h"

#include <cstring>
#include <limits>
#include <sstream>

#include "qvgen/w4a4_types.h"

namespace qvgen
{
namespace trt
{
namespace
{
namespace c = contract;

[[noreturn]] void fail(std::string const& msg)
{
    throw PluginError(std::string(c::kNamespace) + "::" + c::kOpType + " v" + c::kVersion + ": " + msg);
}

int32_t fieldIndex(std::string const& name)
{
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        if (name == c::kFields[i].name)
        {
            return i;
        }
    }
    return -1;
}

std::string allowedText(c::FieldSpec const& s)
{
    std::ostringstream os;
    if (s.nbAllowed == 0)
    {
        os << "[" << s.min << ", " << s.max << "]";
    }
    else
    {
        os << "{";
        for (int32_t i = 0; i < s.nbAllowed; ++i)
        {
            os << (i ? ", " : "") << s.allowed[i];
        }
        os << "}";
    }
    return os.str();
}

// Reads the single integer value of a raw field (any integer width; a float is refused rather
// than truncated).
int64_t readInteger(RawField const& r)
{
    if (r.data == nullptr || r.length != 1)
    {
        fail("field '" + r.name + "' must hold exactly one value (got length " + std::to_string(r.length)
            + (r.data ? ")" : ", no data)"));
    }
    switch (r.type)
    {
    case FieldType::kINT8: return *static_cast<int8_t const*>(r.data);
    case FieldType::kINT16: { int16_t v; std::memcpy(&v, r.data, sizeof v); return v; }
    case FieldType::kINT32: { int32_t v; std::memcpy(&v, r.data, sizeof v); return v; }
    case FieldType::kINT64: { int64_t v; std::memcpy(&v, r.data, sizeof v); return v; }
    default: fail("field '" + r.name + "' must be an integer (int32), got another type");
    }
}

int64_t checkedMul(int64_t a, int64_t b, char const* what)
{
    if (a < 0 || b < 0 || (a != 0 && b > std::numeric_limits<int64_t>::max() / a))
    {
        fail(std::string(what) + " overflows int64 (" + std::to_string(a) + " * " + std::to_string(b) + ")");
    }
    return a * b;
}

size_t roundUp(size_t v, size_t a)
{
    if (v > std::numeric_limits<size_t>::max() - (a - 1))
    {
        fail("workspace size overflows size_t");
    }
    return (v + a - 1) / a * a;
}

// Byte image helpers (little endian regardless of the host).
void putU32(std::vector<uint8_t>& out, uint32_t v)
{
    for (int i = 0; i < 4; ++i)
    {
        out.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
}

void putString(std::vector<uint8_t>& out, char const* s)
{
    size_t const n = std::strlen(s);
    putU32(out, static_cast<uint32_t>(n));
    out.insert(out.end(), s, s + n);
}

uint32_t fnv1a(uint8_t const* p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; ++i)
    {
        h = (h ^ p[i]) * 16777619u;
    }
    return h;
}

class Reader
{
public:
    Reader(uint8_t const* p, size_t n) : mP(p), mN(n) {}
    uint32_t u32(char const* what)
    {
        need(4, what);
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i)
        {
            v |= static_cast<uint32_t>(mP[mPos + i]) << (8 * i);
        }
        mPos += 4;
        return v;
    }
    std::string str(char const* what)
    {
        uint32_t const n = u32(what);
        need(n, what);
        std::string s(reinterpret_cast<char const*>(mP + mPos), n);
        mPos += n;
        return s;
    }
    size_t pos() const { return mPos; }

private:
    void need(size_t n, char const* what)
    {
        if (n > mN - mPos)
        {
            fail(std::string("serialized state truncated while reading ") + what + " (" + std::to_string(mN)
                + " bytes)");
        }
    }
    uint8_t const* mP;
    size_t mN;
    size_t mPos{0};
};

constexpr char kMagic[4] = {'Q', 'V', 'W', '4'};
constexpr uint32_t kFormat = 1;

int64_t dim(Shape const& s, int32_t i)
{
    return s[static_cast<size_t>(i < 0 ? static_cast<int32_t>(s.size()) + i : i)];
}

// Equal unless one of them is unknown (-1).
bool agrees(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

void checkVector(Shape const& s, int32_t input, int64_t expect, char const* expectName)
{
    if (s.size() != 1 || !agrees(s[0], expect))
    {
        fail(std::string("input ") + std::to_string(input) + " '" + c::kInputs[input].name + "' must be ["
            + expectName + "] = [" + std::to_string(expect) + "], got " + shapeToString(s));
    }
}

uint32_t dtypeBit(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return c::kDtypeF32;
    case DataType::kHALF: return c::kDtypeF16;
    case DataType::kBF16: return c::kDtypeBF16;
    case DataType::kINT32: return c::kDtypeI32;
    default: return 0;
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------

void checkFieldValue(int32_t index, int64_t value)
{
    if (index < 0 || index >= c::kNbFields)
    {
        fail("field index " + std::to_string(index) + " out of range");
    }
    c::FieldSpec const& s = c::kFields[index];
    bool ok = value >= s.min && value <= s.max;
    if (ok && s.nbAllowed > 0)
    {
        ok = false;
        for (int32_t i = 0; i < s.nbAllowed; ++i)
        {
            ok = ok || value == s.allowed[i];
        }
    }
    if (!ok)
    {
        fail("field '" + std::string(s.name) + "' = " + std::to_string(value) + " is out of range: allowed "
            + allowedText(s));
    }
}

Fields parseFields(std::vector<RawField> const& raw, bool allowState)
{
    int64_t values[c::kNbFields];
    bool seen[c::kNbFields] = {};
    bool haveState = false;
    Fields fromState;
    for (RawField const& r : raw)
    {
        if (allowState && r.name == kStateFieldName)
        {
            if (r.type != FieldType::kINT8 && r.type != FieldType::kCHAR)
            {
                fail(std::string("field '") + kStateFieldName + "' must be bytes (kINT8/kCHAR)");
            }
            if (r.data == nullptr || r.length <= 0)
            {
                fail(std::string("field '") + kStateFieldName + "' is empty");
            }
            fromState = deserializeFields(r.data, static_cast<size_t>(r.length));
            haveState = true;
            continue;
        }
        int32_t const i = fieldIndex(r.name);
        if (i < 0)
        {
            std::string known;
            for (int32_t k = 0; k < c::kNbFields; ++k)
            {
                known += (k ? ", " : "") + std::string(c::kFields[k].name);
            }
            fail("unknown field '" + r.name + "' (the plugin's fields are " + known + ")");
        }
        if (seen[i])
        {
            fail("field '" + r.name + "' given twice");
        }
        values[i] = readInteger(r);
        checkFieldValue(i, values[i]);
        seen[i] = true;
    }
    int32_t nbSeen = 0;
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        nbSeen += seen[i] ? 1 : 0;
    }
    if (haveState && nbSeen == 0)
    {
        return fromState;
    }
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        if (!seen[i])
        {
            fail("missing field '" + std::string(c::kFields[i].name) + "' (allowed " + allowedText(c::kFields[i])
                + ")");
        }
    }
    Fields f;
    f.inFeatures = static_cast<int32_t>(values[c::kField_in_features]);
    f.outFeatures = static_cast<int32_t>(values[c::kField_out_features]);
    f.actBits = static_cast<int32_t>(values[c::kField_act_bits]);
    f.weightBits = static_cast<int32_t>(values[c::kField_weight_bits]);
    if (haveState && !(fromState == f))
    {
        fail(std::string("field '") + kStateFieldName + "' disagrees with the plain fields");
    }
    return f;
}

std::vector<std::pair<char const*, int32_t>> fieldValues(Fields const& f)
{
    std::vector<std::pair<char const*, int32_t>> out(c::kNbFields);
    for (int32_t i = 0; i < c::kNbFields; ++i)
    {
        out[i].first = c::kFields[i].name;
    }
    out[c::kField_in_features].second = f.inFeatures;
    out[c::kField_out_features].second = f.outFeatures;
    out[c::kField_act_bits].second = f.actBits;
    out[c::kField_weight_bits].second = f.weightBits;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

std::vector<uint8_t> serializeFields(Fields const& f)
{
    std::vector<uint8_t> out(kMagic, kMagic + 4);
    putU32(out, kFormat);
    putString(out, c::kVersion);
    putString(out, c::kOpType);
    auto const values = fieldValues(f);
    putU32(out, static_cast<uint32_t>(values.size()));
    for (auto const& [name, value] : values)
    {
        putString(out, name);
        putU32(out, static_cast<uint32_t>(value));
    }
    putU32(out, fnv1a(out.data(), out.size()));
    return out;
}

Fields deserializeFields(void const* data, size_t size)
{
    if (data == nullptr)
    {
        fail("serialized state: null buffer");
    }
    auto const* p = static_cast<uint8_t const*>(data);
    if (size < 8 || std::memcmp(p, kMagic, 4) != 0)
    {
        fail("serialized state: not a " + std::string(c::kOpType) + " state (bad magic or " + std::to_string(size)
            + " bytes)");
    }
    Reader rd(p + 4, size - 4);
    uint32_t const format = rd.u32("format");
    if (format != kFormat)
    {
        fail("serialized state: format " + std::to_string(format) + ", this library reads " + std::to_string(kFormat));
    }
    std::string const version = rd.str("contract version");
    if (version != c::kVersion)
    {
        fail("serialized state was written by contract version '" + version + "', this library implements version '"
            + c::kVersion + "': rebuild the engine with this plugin library");
    }
    std::string const op = rd.str("op type");
    if (op != c::kOpType)
    {
        fail("serialized state belongs to op '" + op + "'");
    }
    uint32_t const n = rd.u32("field count");
    if (n > 64)
    {
        fail("serialized state: implausible field count " + std::to_string(n));
    }
    std::vector<int32_t> vals(n);
    std::vector<std::string> names(n);
    for (uint32_t i = 0; i < n; ++i)
    {
        names[i] = rd.str("field name");
        vals[i] = static_cast<int32_t>(rd.u32("field value"));
    }
    size_t const body = 4 + rd.pos();
    uint32_t const sum = rd.u32("checksum");
    if (sum != fnv1a(p, body))
    {
        fail("serialized state: checksum mismatch (corrupted engine or plugin state)");
    }
    if (4 + rd.pos() != size)
    {
        fail("serialized state: " + std::to_string(size - 4 - rd.pos()) + " trailing bytes");
    }
    std::vector<RawField> raw(n);
    for (uint32_t i = 0; i < n; ++i)
    {
        raw[i] = RawField{names[i], FieldType::kINT32, &vals[i], 1};
    }
    return parseFields(raw, /*allowState=*/false);
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

std::string shapeToString(Shape const& s)
{
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i)
    {
        out += (i ? ", " : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
    }
    return out + "]";
}

void checkInputShapes(Fields const& f, std::vector<Shape> const& in)
{
    if (static_cast<int32_t>(in.size()) != c::kNbInputs)
    {
        fail("expected " + std::to_string(c::kNbInputs) + " inputs, got " + std::to_string(in.size()));
    }
    Shape const& x = in[c::kInput_x];
    int32_t const rank = static_cast<int32_t>(x.size());
    if (rank < c::kMinRank || rank > c::kMaxRank)
    {
        fail("input 'x' must have rank " + std::to_string(c::kMinRank) + ".." + std::to_string(c::kMaxRank) + ", got "
            + shapeToString(x));
    }
    if (!agrees(dim(x, -1), f.inFeatures))
    {
        fail("input 'x' last dim must be in_features = " + std::to_string(f.inFeatures) + ", got " + shapeToString(x));
    }
    int64_t const B = x[0];
    checkVector(in[c::kInput_clip_lo], c::kInput_clip_lo, B, "B");
    checkVector(in[c::kInput_clip_hi], c::kInput_clip_hi, B, "B");

    Shape const& qw = in[c::kInput_qweight];
    int64_t const rowBytesMin = (static_cast<int64_t>(f.inFeatures) + c::kCodesPerByte - 1) / c::kCodesPerByte;
    if (qw.size() != 2 || !agrees(qw[0], f.outFeatures))
    {
        fail("input 'qweight' must be [N, LDW] with N = " + std::to_string(f.outFeatures) + ", got " + shapeToString(qw));
    }
    if (qw[1] >= 0)
    {
        int64_t const rowBytes = 4 * qw[1]; // int32 elements of packed bytes
        if (rowBytes < rowBytesMin || rowBytes % c::kRowAlignBytes != 0)
        {
            fail("input 'qweight' [N, LDW] = " + shapeToString(qw) + ": a row of 4*LDW = " + std::to_string(rowBytes)
                + " bytes must hold ceil(K/2) = " + std::to_string(rowBytesMin) + " bytes and be a multiple of "
                + std::to_string(c::kRowAlignBytes));
        }
    }
    checkVector(in[c::kInput_w_scale], c::kInput_w_scale, f.outFeatures, "N");
    checkVector(in[c::kInput_w_zero], c::kInput_w_zero, f.outFeatures, "N");
    checkVector(in[c::kInput_w_sum], c::kInput_w_sum, f.outFeatures, "N");
    checkVector(in[c::kInput_bias], c::kInput_bias, f.outFeatures, "N");
}

Shape outputShape(Fields const& f, Shape const& x)
{
    if (x.empty())
    {
        fail("input 'x' has no dims");
    }
    Shape y = x;
    y.back() = f.outFeatures;
    return y;
}

int64_t tokenCount(Shape const& x)
{
    int64_t m = 1;
    for (size_t i = 0; i + 1 < x.size(); ++i)
    {
        if (x[i] < 0)
        {
            fail("input 'x' has an unknown dim where a known one is needed: " + shapeToString(x));
        }
        m = checkedMul(m, x[i], "token count");
    }
    return m;
}

// ---------------------------------------------------------------------------------------------
// Types and formats
// ---------------------------------------------------------------------------------------------

char const* dataTypeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT32: return "int32";
    default: return "another type";
    }
}

bool supportsCombination(int32_t pos, IoDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    if (inOut == nullptr || nbInputs != c::kNbInputs || nbOutputs != c::kNbOutputs || pos < 0
        || pos >= nbInputs + nbOutputs || !inOut[pos].linear)
    {
        return false;
    }
    if (pos < nbInputs)
    {
        return (dtypeBit(inOut[pos].type) & c::kInputs[pos].dtypes) != 0;
    }
    // The output: x's type (position 0 is fixed when TensorRT asks about a later position).
    return inOut[pos].type == inOut[c::kInput_x].type
        && (dtypeBit(inOut[pos].type) & c::kInputs[c::kInput_x].dtypes) != 0;
}

DataType outputType(DataType const* inputTypes, int32_t nbInputs)
{
    if (inputTypes == nullptr || nbInputs != c::kNbInputs)
    {
        fail("expected " + std::to_string(c::kNbInputs) + " input types, got " + std::to_string(nbInputs));
    }
    DataType const t = inputTypes[c::kInput_x];
    if ((dtypeBit(t) & c::kInputs[c::kInput_x].dtypes) == 0)
    {
        fail(std::string("input 'x' must be float32, float16 or bfloat16, got ") + dataTypeName(t));
    }
    return t;
}

int qvgenDtype(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return QVGEN_DTYPE_F32;
    case DataType::kHALF: return QVGEN_DTYPE_F16;
    case DataType::kBF16: return QVGEN_DTYPE_BF16;
    default: fail(std::string("no kernel for activations of type ") + dataTypeName(t));
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace and launch plan
// ---------------------------------------------------------------------------------------------

WorkspaceLayout workspaceLayout(int64_t maxTokens, int64_t inFeatures)
{
    if (maxTokens < 0 || inFeatures < 1)
    {
        fail("workspace for M = " + std::to_string(maxTokens) + ", K = " + std::to_string(inFeatures));
    }
    WorkspaceLayout w;
    int64_t const rowBytes = (inFeatures + c::kCodesPerByte - 1) / c::kCodesPerByte;
    w.ldq = (rowBytes + c::kRowAlignBytes - 1) / c::kRowAlignBytes * c::kRowAlignBytes;
    size_t const qxBytes = static_cast<size_t>(checkedMul(maxTokens, w.ldq, "workspace qx bytes"));
    size_t const vecBytes = static_cast<size_t>(checkedMul(maxTokens, 4, "workspace vector bytes"));
    w.qxOffset = 0;
    w.scaleOffset = roundUp(w.qxOffset + qxBytes, kWorkspaceAlign);
    w.zeroOffset = roundUp(w.scaleOffset + vecBytes, kWorkspaceAlign);
    w.codeSumOffset = roundUp(w.zeroOffset + vecBytes, kWorkspaceAlign);
    size_t const end = roundUp(w.codeSumOffset + vecBytes, kWorkspaceAlign);
    w.total = end + (kWorkspaceAlign - 1); // slack to realign any base pointer
    return w;
}

size_t workspaceSize(Fields const& f, Shape const& maxX)
{
    return workspaceLayout(tokenCount(maxX), f.inFeatures).total;
}

LaunchPlan makeLaunchPlan(Fields const& f, std::vector<Shape> const& inputs, DataType xType, DataType yType,
    size_t workspaceBytes)
{
    checkInputShapes(f, inputs);
    for (size_t i = 0; i < inputs.size(); ++i)
    {
        for (int64_t d : inputs[i])
        {
            if (d < 0)
            {
                fail(std::string("input '") + c::kInputs[i].name + "' has an unknown dim at run time: "
                    + shapeToString(inputs[i]));
            }
        }
    }
    if (yType != xType)
    {
        fail(std::string("output type ") + dataTypeName(yType) + " differs from x's " + dataTypeName(xType));
    }
    Shape const& x = inputs[c::kInput_x];
    LaunchPlan p;
    p.M = tokenCount(x);
    p.K = f.inFeatures;
    p.N = f.outFeatures;
    p.ldx = p.K;
    p.ldy = p.N;
    p.ldqw = 4 * inputs[c::kInput_qweight][1];
    p.xDtype = qvgenDtype(xType);
    p.actBits = f.actBits;
    int64_t const B = x[0];
    p.T = B > 0 ? p.M / B : 0;
    p.ws = workspaceLayout(p.M, p.K);
    if (p.M > 0 && p.ws.total > workspaceBytes)
    {
        fail("workspace of " + std::to_string(workspaceBytes) + " bytes is smaller than the " + std::to_string(p.ws.total)
            + " needed for x " + shapeToString(x));
    }
    return p;
}

uintptr_t alignWorkspace(uintptr_t p) noexcept
{
    return (p + (kWorkspaceAlign - 1)) & ~static_cast<uintptr_t>(kWorkspaceAlign - 1);
}

} // namespace trt
} // namespace qvgen
