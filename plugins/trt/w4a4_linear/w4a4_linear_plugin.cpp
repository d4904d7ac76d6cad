// QvgenW4A4Linear IPluginV3 (see w4a4_linear_plugin.h). Glue only: conversions between TensorRT
// structs and the core's plain types, the two kernel calls, and error reporting at the boundary.
#include "w4a4_linear_plugin.h"

#include <cstdio>
#include <exception>
#include <limits>
#include <new>

#include "qvgen/trt_plugin_contract.h"
#include "qvgen/w4a4_cuda.h"

namespace qvgen
{
namespace trt
{
namespace
{
namespace c = contract;
using nvinfer1::ErrorCode;

// Reports through `recorder` when there is one (TensorRT then decides what to do with it), else
// through TensorRT's logger, else stderr. Never throws (checkMacrosPlugin's caughtError, in short).
void reportError(nvinfer1::IErrorRecorder* recorder, ErrorCode code, char const* where, char const* what) noexcept
{
    char msg[1024];
    std::snprintf(msg, sizeof msg, "%s::%s v%s %s: %s", c::kNamespace, c::kOpType, c::kVersion, where, what);
    if (recorder != nullptr)
    {
        recorder->reportError(code, msg);
        return;
    }
    if (nvinfer1::ILogger* logger = getLogger())
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, msg);
        return;
    }
    std::fprintf(stderr, "[qvgen] ERROR: %s\n", msg);
}

void reportException(nvinfer1::IErrorRecorder* recorder, char const* where) noexcept
{
    try
    {
        throw;
    }
    catch (PluginError const& e)
    {
        reportError(recorder, ErrorCode::kINVALID_ARGUMENT, where, e.what());
    }
    catch (std::bad_alloc const&)
    {
        reportError(recorder, ErrorCode::kFAILED_ALLOCATION, where, "out of host memory");
    }
    catch (std::exception const& e)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, where, e.what());
    }
    catch (...)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, where, "unknown exception");
    }
}

// The creator has no recorder of its own: the plugin registry's, when the application set one.
nvinfer1::IErrorRecorder* registryRecorder() noexcept
{
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    return registry != nullptr ? registry->getErrorRecorder() : nullptr;
}

DataType toCore(nvinfer1::DataType t) noexcept
{
    switch (t)
    {
    case nvinfer1::DataType::kFLOAT: return DataType::kFLOAT;
    case nvinfer1::DataType::kHALF: return DataType::kHALF;
    case nvinfer1::DataType::kBF16: return DataType::kBF16;
    case nvinfer1::DataType::kINT32: return DataType::kINT32;
    default: return DataType::kOTHER;
    }
}

nvinfer1::DataType toTrt(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return nvinfer1::DataType::kFLOAT;
    case DataType::kHALF: return nvinfer1::DataType::kHALF;
    case DataType::kBF16: return nvinfer1::DataType::kBF16;
    case DataType::kINT32: return nvinfer1::DataType::kINT32;
    default: throw PluginError("no TensorRT type for this core type");
    }
}

FieldType toCore(nvinfer1::PluginFieldType t) noexcept
{
    switch (t)
    {
    case nvinfer1::PluginFieldType::kINT8: return FieldType::kINT8;
    case nvinfer1::PluginFieldType::kINT16: return FieldType::kINT16;
    case nvinfer1::PluginFieldType::kINT32: return FieldType::kINT32;
    case nvinfer1::PluginFieldType::kINT64: return FieldType::kINT64;
    case nvinfer1::PluginFieldType::kFLOAT32: return FieldType::kFLOAT32;
    case nvinfer1::PluginFieldType::kCHAR: return FieldType::kCHAR;
    default: return FieldType::kOTHER;
    }
}

Shape toShape(nvinfer1::Dims const& d)
{
    if (d.nbDims < 0 || d.nbDims > nvinfer1::Dims::MAX_DIMS)
    {
        throw PluginError("invalid Dims (nbDims " + std::to_string(d.nbDims) + ")");
    }
    return Shape(d.d, d.d + d.nbDims);
}

void checkCounts(int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs != c::kNbInputs || nbOutputs != c::kNbOutputs)
    {
        throw PluginError("expected " + std::to_string(c::kNbInputs) + " inputs and " + std::to_string(c::kNbOutputs)
            + " output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
    }
}

template <typename Desc, typename Get>
std::vector<Shape> shapesOf(Desc const* descs, int32_t n, Get get)
{
    if (descs == nullptr)
    {
        throw PluginError("null tensor descriptions");
    }
    std::vector<Shape> shapes;
    shapes.reserve(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i)
    {
        shapes.push_back(toShape(get(descs[i])));
    }
    return shapes;
}

void checkStatus(int status, char const* fn)
{
    if (status != QVGEN_OK)
    {
        char const* detail = qvgen_cuda_last_error();
        throw PluginError(std::string(fn) + " failed (status " + std::to_string(status)
            + "): " + (detail != nullptr ? detail : "no detail"));
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------
// W4A4LinearPlugin
// ---------------------------------------------------------------------------------------------

W4A4LinearPlugin::W4A4LinearPlugin(Fields const& fields)
    : mFields(fields)
{
}

template <typename R, typename F>
R W4A4LinearPlugin::guarded(char const* where, R onError, F&& body) const noexcept
{
    try
    {
        return body();
    }
    catch (...)
    {
        reportException(mRecorder, where);
    }
    return onError;
}

nvinfer1::IPluginCapability* W4A4LinearPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    reportError(mRecorder, ErrorCode::kINVALID_ARGUMENT, "getCapabilityInterface", "unknown capability type");
    return nullptr;
}

nvinfer1::IPluginV3* W4A4LinearPlugin::clone() noexcept
{
    return guarded<nvinfer1::IPluginV3*>("clone", nullptr, [&] {
        auto* p = new W4A4LinearPlugin(mFields);
        p->mRecorder = mRecorder;
        return static_cast<nvinfer1::IPluginV3*>(p);
    });
}

char const* W4A4LinearPlugin::getPluginName() const noexcept
{
    return c::kOpType;
}

char const* W4A4LinearPlugin::getPluginVersion() const noexcept
{
    return c::kVersion;
}

char const* W4A4LinearPlugin::getPluginNamespace() const noexcept
{
    return c::kNamespace;
}

int32_t W4A4LinearPlugin::getNbOutputs() const noexcept
{
    return c::kNbOutputs;
}

int32_t W4A4LinearPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded<int32_t>("configurePlugin", -1, [&] {
        checkCounts(nbInputs, nbOutputs);
        // The build-time dims (-1 where dynamic) and the profile's max dims must both obey the rule.
        checkInputShapes(mFields, shapesOf(in, nbInputs, [](auto const& d) { return d.desc.dims; }));
        checkInputShapes(mFields, shapesOf(in, nbInputs, [](auto const& d) { return d.max; }));
        if (out == nullptr || toCore(out[0].desc.type) != toCore(in[c::kInput_x].desc.type))
        {
            throw PluginError("output type must equal x's type");
        }
        return int32_t{0};
    });
}

int32_t W4A4LinearPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded<int32_t>("getOutputDataTypes", -1, [&] {
        checkCounts(nbInputs, nbOutputs);
        if (outputTypes == nullptr || inputTypes == nullptr)
        {
            throw PluginError("null type array");
        }
        DataType core[c::kNbInputs];
        for (int32_t i = 0; i < c::kNbInputs; ++i)
        {
            core[i] = toCore(inputTypes[i]);
        }
        outputTypes[0] = toTrt(outputType(core, nbInputs));
        return int32_t{0};
    });
}

int32_t W4A4LinearPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    return guarded<int32_t>("getOutputShapes", -1, [&] {
        checkCounts(nbInputs, nbOutputs);
        if (inputs == nullptr || outputs == nullptr)
        {
            throw PluginError("null shape arrays");
        }
        // The core checks what is known now: ranks, and the extents that are build-time constants.
        std::vector<Shape> shapes;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            nvinfer1::DimsExprs const& e = inputs[i];
            if (e.nbDims < 0 || e.nbDims > nvinfer1::Dims::MAX_DIMS)
            {
                throw PluginError("invalid rank of input " + std::to_string(i));
            }
            Shape s(static_cast<size_t>(e.nbDims), -1);
            for (int32_t k = 0; k < e.nbDims; ++k)
            {
                if (e.d[k] != nullptr && e.d[k]->isConstant())
                {
                    s[k] = e.d[k]->getConstantValue();
                }
            }
            shapes.push_back(std::move(s));
        }
        checkInputShapes(mFields, shapes);
        // y = x's dims (same expressions: dynamic token dims pass through), last = constant N.
        nvinfer1::DimsExprs const& x = inputs[c::kInput_x];
        outputs[0].nbDims = x.nbDims;
        for (int32_t k = 0; k + 1 < x.nbDims; ++k)
        {
            outputs[0].d[k] = x.d[k];
        }
        outputs[0].d[x.nbDims - 1] = exprBuilder.constant(mFields.outFeatures);
        if (outputs[0].d[x.nbDims - 1] == nullptr)
        {
            throw PluginError("IExprBuilder::constant returned null");
        }
        return int32_t{0};
    });
}

bool W4A4LinearPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guarded<bool>("supportsFormatCombination", false, [&] {
        if (inOut == nullptr || nbInputs != c::kNbInputs || nbOutputs != c::kNbOutputs || pos < 0
            || pos >= nbInputs + nbOutputs)
        {
            return false;
        }
        IoDesc io[c::kNbInputs + c::kNbOutputs];
        for (int32_t i = 0; i <= pos; ++i) // TensorRT fixes positions 0..pos only
        {
            io[i] = IoDesc{toCore(inOut[i].desc.type), inOut[i].desc.format == nvinfer1::TensorFormat::kLINEAR};
        }
        return supportsCombination(pos, io, nbInputs, nbOutputs);
    });
}

size_t W4A4LinearPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept
{
    // On error: an impossible size, so the build fails visibly rather than running short.
    return guarded<size_t>("getWorkspaceSize", std::numeric_limits<size_t>::max(), [&] {
        checkCounts(nbInputs, nbOutputs);
        if (inputs == nullptr)
        {
            throw PluginError("null input descriptions");
        }
        return workspaceSize(mFields, toShape(inputs[c::kInput_x].max));
    });
}

int32_t W4A4LinearPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded<int32_t>("onShapeChange", -1, [&] {
        checkCounts(nbInputs, nbOutputs);
        if (out == nullptr)
        {
            throw PluginError("null output description");
        }
        // The workspace check is enqueue's; here the shapes and types of the new dims.
        (void) makeLaunchPlan(mFields, shapesOf(in, nbInputs, [](auto const& d) { return d.dims; }),
            toCore(in[c::kInput_x].type), toCore(out[0].type), std::numeric_limits<size_t>::max());
        Shape const y = toShape(out[0].dims);
        if (y != outputShape(mFields, toShape(in[c::kInput_x].dims)))
        {
            throw PluginError("output dims " + shapeToString(y) + " differ from the shape rule");
        }
        return int32_t{0};
    });
}

int32_t W4A4LinearPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    return guarded<int32_t>("enqueue", -1, [&] {
        if (outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            throw PluginError("null enqueue arguments");
        }
        // TensorRT gives at least getWorkspaceSize(profile max dims) bytes and runs dims within the
        // profile; the layout grows with M, so the plan of these dims fits (no size is passed here).
        LaunchPlan const p = makeLaunchPlan(mFields, shapesOf(inputDesc, c::kNbInputs, [](auto const& d) { return d.dims; }),
            toCore(inputDesc[c::kInput_x].type), toCore(outputDesc[0].type), std::numeric_limits<size_t>::max());
        if (p.empty())
        {
            return int32_t{0};
        }
        for (int32_t i = 0; i < c::kNbInputs; ++i)
        {
            if (inputs[i] == nullptr)
            {
                throw PluginError(std::string("input '") + c::kInputs[i].name + "' has a null device pointer");
            }
        }
        if (outputs[0] == nullptr || workspace == nullptr)
        {
            throw PluginError("null output or workspace pointer");
        }
        auto* ws = reinterpret_cast<uint8_t*>(alignWorkspace(reinterpret_cast<uintptr_t>(workspace)));
        auto* qx = ws + p.ws.qxOffset;
        auto* xScale = reinterpret_cast<float*>(ws + p.ws.scaleOffset);
        auto* xZero = reinterpret_cast<int32_t*>(ws + p.ws.zeroOffset);
        auto* xSum = reinterpret_cast<int32_t*>(ws + p.ws.codeSumOffset);
        void* const s = static_cast<void*>(stream);

        checkStatus(qvgen_cuda_act_quant(inputs[c::kInput_x], p.xDtype, p.M, p.K, p.ldx,
                        static_cast<float const*>(inputs[c::kInput_clip_lo]),
                        static_cast<float const*>(inputs[c::kInput_clip_hi]), p.T, p.actBits, qx, p.ws.ldq, xScale,
                        xZero, xSum, s),
            "qvgen_cuda_act_quant");
        // qweight is typed int32 in the graph; its bytes are the packed uint8 codes (4 per element).
        checkStatus(qvgen_cuda_gemm(qx, p.ws.ldq, xScale, xZero, xSum,
                        static_cast<uint8_t const*>(inputs[c::kInput_qweight]), p.ldqw,
                        static_cast<float const*>(inputs[c::kInput_w_scale]),
                        static_cast<float const*>(inputs[c::kInput_w_zero]),
                        static_cast<int32_t const*>(inputs[c::kInput_w_sum]),
                        static_cast<float const*>(inputs[c::kInput_bias]), p.M, p.N, p.K, outputs[0], p.xDtype, p.ldy,
                        QVGEN_PATH_AUTO, s),
            "qvgen_cuda_gemm");
        return int32_t{0};
    });
}

nvinfer1::IPluginV3* W4A4LinearPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    return guarded<nvinfer1::IPluginV3*>("attachToContext", nullptr, [&] {
        auto* p = new W4A4LinearPlugin(mFields);
        p->mRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return static_cast<nvinfer1::IPluginV3*>(p);
    });
}

nvinfer1::PluginFieldCollection const* W4A4LinearPlugin::getFieldsToSerialize() noexcept
{
    return guarded<nvinfer1::PluginFieldCollection const*>("getFieldsToSerialize", nullptr, [&] {
        auto const values = fieldValues(mFields);
        mSerialValues.assign(values.size(), 0);
        mSerialFields.clear();
        for (size_t i = 0; i < values.size(); ++i)
        {
            mSerialValues[i] = values[i].second;
            mSerialFields.emplace_back(values[i].first, &mSerialValues[i], nvinfer1::PluginFieldType::kINT32, 1);
        }
        mSerialState = serializeFields(mFields);
        mSerialFields.emplace_back(kStateFieldName, mSerialState.data(), nvinfer1::PluginFieldType::kINT8,
            static_cast<int32_t>(mSerialState.size()));
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return static_cast<nvinfer1::PluginFieldCollection const*>(&mSerialCollection);
    });
}

// ---------------------------------------------------------------------------------------------
// W4A4LinearPluginCreator
// ---------------------------------------------------------------------------------------------

W4A4LinearPluginCreator::W4A4LinearPluginCreator()
{
    // A constructor cannot report through a return value; on (unlikely) bad_alloc the creator
    // declares no fields and every createPlugin call reports the missing fields instead.
    try
    {
        for (int32_t i = 0; i < c::kNbFields; ++i)
        {
            mFieldNames.emplace_back(c::kFields[i].name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        }
    }
    catch (...)
    {
        mFieldNames.clear();
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* W4A4LinearPluginCreator::getPluginName() const noexcept
{
    return c::kOpType;
}

char const* W4A4LinearPluginCreator::getPluginVersion() const noexcept
{
    return c::kVersion;
}

char const* W4A4LinearPluginCreator::getPluginNamespace() const noexcept
{
    return c::kNamespace;
}

nvinfer1::PluginFieldCollection const* W4A4LinearPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* W4A4LinearPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        if (fc == nullptr || fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            throw PluginError(std::string("layer '") + (name ? name : "") + "': null or invalid field collection");
        }
        std::vector<RawField> raw;
        raw.reserve(static_cast<size_t>(fc->nbFields));
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& f = fc->fields[i];
            raw.push_back(RawField{f.name != nullptr ? f.name : "", toCore(f.type), f.data, f.length});
        }
        // The runtime phase gets getFieldsToSerialize()'s fields back, state included: checking it
        // refuses an engine written by another contract version with one clear message.
        Fields const fields = parseFields(raw, /*allowState=*/phase == nvinfer1::TensorRTPhase::kRUNTIME);
        return new W4A4LinearPlugin(fields);
    }
    catch (...)
    {
        reportException(registryRecorder(), name != nullptr ? name : "createPlugin");
    }
    return nullptr;
}

namespace
{
// Static registration at library load (what REGISTER_TENSORRT_PLUGIN does), but under the
// contract's namespace: the macro registers with namespace "", while the ONNX parser and engine
// deserialization look the creator up by (op_type, plugin_version, plugin_namespace = "qvgen").
// TensorRT's own libnvinfer_plugin likewise passes the creator's namespace to registerCreator.
class StaticRegistrar
{
public:
    StaticRegistrar() noexcept
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(mCreator, c::kNamespace))
        {
            reportError(registry != nullptr ? registry->getErrorRecorder() : nullptr, ErrorCode::kINTERNAL_ERROR,
                "library load", "could not register the plugin creator (already registered?)");
        }
    }

private:
    W4A4LinearPluginCreator mCreator;
};

StaticRegistrar const gStaticRegistrar{};
} // namespace

} // namespace trt
} // namespace qvgen
