/*
 * TensorRT-free core of the QvgenW4A4Linear plugin: everything the plugin decides that needs no
 * TensorRT or CUDA type. Field parsing and validation, the shape rule, the type/format rule, the
 * workspace layout, the launch plan of enqueue and the serialized state. The IPluginV3 glue
 * (w4a4_linear_plugin.cpp) converts TensorRT structs to these plain ones and back; this file is
 * tested by plugin_core_test.cpp (ctest) on machines without TensorRT or a GPU.
 *
 * Names, version, namespace, field names and limits come from the generated contract header
 * (qvgen/trt_plugin_contract.h, from qvgen_export/targets/trt_plugin.json).
 *
 * Errors are thrown as qvgen::trt::PluginError (a std::runtime_error) with a message naming the
 * offending field/input and value; the plugin boundary catches them.
 */
#ifndef QVGEN_TRT_W4A4_LINEAR_PLUGIN_CORE_H
#define QVGEN_TRT_W4A4_LINEAR_PLUGIN_CORE_H

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "qvgen/trt_plugin_contract.h"

namespace qvgen
{
namespace trt
{

class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------

//! Element type of a field value as the caller received it (a mirror of the TensorRT
//! PluginFieldType values the plugin may meet; anything else is kOTHER and rejected).
enum class FieldType
{
    kINT8,
    kINT16,
    kINT32,
    kINT64,
    kFLOAT32,
    kCHAR,
    kOTHER
};

//! One name -> value entry (a PluginField without TensorRT): `data` points at `length`
//! elements of `type`; it is only read during parseFields().
struct RawField
{
    std::string name;
    FieldType type{FieldType::kOTHER};
    void const* data{nullptr};
    int32_t length{0};
};

//! The validated fields (values within the contract's limits).
struct Fields
{
    int32_t inFeatures{0};  //!< K
    int32_t outFeatures{0}; //!< N
    int32_t actBits{0};
    int32_t weightBits{0};

    bool operator==(Fields const& o) const noexcept
    {
        return inFeatures == o.inFeatures && outFeatures == o.outFeatures && actBits == o.actBits
            && weightBits == o.weightBits;
    }
};

//! Name of the extra field that carries the serialized state (serializeFields) in the fields
//! TensorRT stores in an engine. Not a contract field: only the runtime phase accepts it.
inline constexpr char kStateFieldName[] = "qvgen_state";

//! Checks one value against the contract's limits for field `index`; throws naming both.
void checkFieldValue(int32_t index, int64_t value);

//! Builds Fields from a name -> value list. Rejects a missing, unknown, duplicated, wrongly typed
//! (only integer types, length 1) or out-of-range field. With `allowState`, a kStateFieldName
//! entry (kINT8/kCHAR bytes) is accepted and must deserialize to the same fields as the plain ones
//! (when those are present too); with it alone, the fields come from the state.
Fields parseFields(std::vector<RawField> const& raw, bool allowState = false);

//! The fields as name -> int32 value, in the contract's order (for getFieldsToSerialize).
std::vector<std::pair<char const*, int32_t>> fieldValues(Fields const& f);

// ---------------------------------------------------------------------------------------------
// Serialization: a self-checking byte image of the fields
//   "QVW4" | u32 format (1) | u32 len + contract version | u32 len + op_type | u32 nbFields |
//   nbFields x (u32 len + name | i32 value) | u32 FNV-1a of everything before
// Little endian. Deserializing checks magic, format, contract version, op type, every field and
// the checksum, so an engine built by another contract version is refused with one message.
// ---------------------------------------------------------------------------------------------
std::vector<uint8_t> serializeFields(Fields const& f);
Fields deserializeFields(void const* data, size_t size);

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

//! A tensor shape; -1 is an unknown (dynamic) extent, checks involving it are skipped.
using Shape = std::vector<int64_t>;

//! Validates the input shapes (kNbInputs of them) against the fields and the contract:
//!   x [B, S..., K] of rank kMinRank..kMaxRank with K == in_features; clip_lo, clip_hi [B];
//!   qweight [N, LDW] with 4*LDW >= ceil(K/2) and (4*LDW) % row_align == 0; w_scale, w_zero,
//!   w_sum, bias [N]. Throws naming the input and the dims.
void checkInputShapes(Fields const& f, std::vector<Shape> const& inputs);

//! The output shape: x's dims with the last replaced by N (checkInputShapes first).
Shape outputShape(Fields const& f, Shape const& x);

//! Tokens M = product of all x dims but the last (all known and >= 0; throws on overflow).
int64_t tokenCount(Shape const& x);

// ---------------------------------------------------------------------------------------------
// Types and formats
// ---------------------------------------------------------------------------------------------

//! The tensor element types the plugin may be offered (mirror of the relevant
//! nvinfer1::DataType values; kOTHER for every other).
enum class DataType
{
    kFLOAT,
    kHALF,
    kBF16,
    kINT32,
    kOTHER
};

struct IoDesc
{
    DataType type{DataType::kOTHER};
    bool linear{false}; //!< TensorFormat::kLINEAR
};

//! supportsFormatCombination: position `pos` of inOut (inputs then the output) is acceptable given
//! positions 0..pos-1 (TensorRT's contract: only those are fixed when it asks). Linear formats
//! only; inputs take the contract's dtypes; the output has x's type.
bool supportsCombination(int32_t pos, IoDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);

//! getOutputDataTypes: the output type (x's) or throws if x's type is not one of the contract's.
DataType outputType(DataType const* inputTypes, int32_t nbInputs);

//! The qvgen_dtype (qvgen/w4a4_types.h) of an activation/output type; throws for others.
int qvgenDtype(DataType t);

char const* dataTypeName(DataType t);

// ---------------------------------------------------------------------------------------------
// Workspace and launch plan
// ---------------------------------------------------------------------------------------------

//! Alignment of every workspace region (and of the base the plugin realigns to).
inline constexpr size_t kWorkspaceAlign = 256;

//! Workspace of the activation quantizer for M tokens of K features: qx [M, ldq] uint8 with
//! ldq = ceil(K/2) rounded up to the row alignment, scale [M] f32, zero [M] i32, codeSum [M] i32,
//! each region at a multiple of kWorkspaceAlign from the (realigned) base. `total` includes
//! kWorkspaceAlign - 1 bytes of slack so that any base pointer can be realigned.
struct WorkspaceLayout
{
    int64_t ldq{0};
    size_t qxOffset{0};
    size_t scaleOffset{0};
    size_t zeroOffset{0};
    size_t codeSumOffset{0};
    size_t total{0};
};

WorkspaceLayout workspaceLayout(int64_t maxTokens, int64_t inFeatures);

//! Bytes of workspace for the largest x of a profile (getWorkspaceSize).
size_t workspaceSize(Fields const& f, Shape const& maxX);

//! Everything enqueue passes to the kernels' C API for one call.
struct LaunchPlan
{
    int64_t M{0};   //!< tokens
    int64_t K{0};   //!< in_features
    int64_t N{0};   //!< out_features
    int64_t T{0};   //!< tokens per sample (M / B)
    int64_t ldx{0}; //!< elements
    int64_t ldqw{0}; //!< bytes of a packed weight row (4 * LDW)
    int64_t ldy{0}; //!< elements
    int xDtype{0};  //!< qvgen_dtype of x and y
    int actBits{0};
    WorkspaceLayout ws;
    bool empty() const noexcept { return M == 0; }
};

//! The plan for concrete shapes (onShapeChange/enqueue): validates them and that
//! `workspaceBytes` is enough. With M == 0 the plan is empty (nothing to launch).
LaunchPlan makeLaunchPlan(Fields const& f, std::vector<Shape> const& inputs, DataType xType,
    DataType yType, size_t workspaceBytes);

//! Rounds `p` up to kWorkspaceAlign (as an address).
uintptr_t alignWorkspace(uintptr_t p) noexcept;

std::string shapeToString(Shape const& s);

} // namespace trt
} // namespace qvgen

#endif // QVGEN_TRT_W4A4_LINEAR_PLUGIN_CORE_H
