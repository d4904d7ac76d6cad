/*
 * QvgenW4A4Linear: TensorRT IPluginV3 of the W4A4 linear (per-token dynamic activation
 * quantization + INT4 GEMM with the zero-point epilogue), calling the kernels' C API
 * (qvgen/w4a4_cuda.h). Thin glue: every decision (fields, shapes, types, workspace, serialized
 * state) is made by the TensorRT-free core (plugin_core.h), which ctest covers.
 *
 * Every TensorRT entry point is noexcept: it validates, catches every exception, reports it
 * through the error recorder attached by TensorRT (IErrorRecorder::reportError) or else the
 * TensorRT logger (or stderr), and returns an error status / nullptr. Nothing aborts.
 */
#ifndef QVGEN_TRT_W4A4_LINEAR_PLUGIN_H
#define QVGEN_TRT_W4A4_LINEAR_PLUGIN_H

#include <cstdint>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "plugin_core.h"

namespace qvgen
{
namespace trt
{

class W4A4LinearPlugin : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit W4A4LinearPlugin(Fields const& fields);
    W4A4LinearPlugin(W4A4LinearPlugin const&) = default;
    W4A4LinearPlugin& operator=(W4A4LinearPlugin const&) = delete;
    ~W4A4LinearPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    Fields const& fields() const noexcept
    {
        return mFields;
    }

private:
    //! Runs `body` (returning R); on an exception reports it (naming `where`) and returns `onError`.
    template <typename R, typename F>
    R guarded(char const* where, R onError, F&& body) const noexcept;

    Fields mFields;
    nvinfer1::IErrorRecorder* mRecorder{nullptr}; //!< owned by the execution context (attachToContext)

    // Storage behind getFieldsToSerialize(): the plain fields (readable in the engine) and the
    // self-checking state the runtime phase verifies (contract version, checksum).
    std::vector<int32_t> mSerialValues;
    std::vector<uint8_t> mSerialState;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class W4A4LinearPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    W4A4LinearPluginCreator();
    ~W4A4LinearPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    //! The contract's fields (all int32, length 1): the ONNX parser passes exactly these attributes.
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    //! kBUILD: from the node's fields; kRUNTIME: from getFieldsToSerialize()'s fields (state checked).
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace trt
} // namespace qvgen

#endif // QVGEN_TRT_W4A4_LINEAR_PLUGIN_H
