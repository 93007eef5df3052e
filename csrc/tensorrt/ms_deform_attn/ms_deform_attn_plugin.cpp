#include "ms_deform_attn_plugin.h"

#include <string>

#include "../../kernels/ms_deform_attn/ms_deform_attn.h"

namespace rfkp {
namespace trt {

namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

enum Input { kValue = 0, kShapes, kStarts, kReference, kOffsets, kLogits };

// Checks the six input shapes against each other (unknown extents, -1, match anything).
void check_shapes(const Dims* in, const DimsChecker& c) {
  const Dims& value = in[kValue];
  const Dims& shapes = in[kShapes];
  const Dims& starts = in[kStarts];
  const Dims& ref = in[kReference];
  const Dims& off = in[kOffsets];
  const Dims& logits = in[kLogits];
  c.rank(value, 4, "value (B, S, H, D)");
  c.rank(shapes, 2, "spatial_shapes (L, 2)");
  c.rank(starts, 1, "level_start_index (L,)");
  c.rank(ref, 4, "reference (B, Q, Lr, 2|4)");
  c.rank(off, 6, "sampling_offsets (B, Q, H, L, P, 2)");
  c.rank(logits, 5, "attention_logits (B, Q, H, L, P)");
  const int64_t levels = shapes.d[0];
  c.is(shapes.d[1], 2, "spatial_shapes.shape[1]");
  c.at_least(levels, 1, "levels L");
  c.equal(starts.d[0], levels, "level_start_index length and spatial_shapes length L");
  c.equal(off.d[3], levels, "sampling_offsets levels and L");
  c.equal(logits.d[3], levels, "attention_logits levels and L");
  c.equal(ref.d[0], value.d[0], "batch B of reference and value");
  c.equal(off.d[0], value.d[0], "batch B of sampling_offsets and value");
  c.equal(logits.d[0], value.d[0], "batch B of attention_logits and value");
  c.equal(off.d[1], ref.d[1], "queries Q of sampling_offsets and reference");
  c.equal(logits.d[1], ref.d[1], "queries Q of attention_logits and reference");
  c.equal(off.d[2], value.d[2], "heads H of sampling_offsets and value");
  c.equal(logits.d[2], value.d[2], "heads H of attention_logits and value");
  c.at_least(off.d[4], 1, "points P");
  c.equal(logits.d[4], off.d[4], "points P of attention_logits and sampling_offsets");
  c.is(off.d[5], 2, "sampling_offsets.shape[5]");
  c.one_of(ref.d[2], 1, levels, "reference levels Lr");
  c.one_of(ref.d[3], 2, 4, "reference.shape[3]");
}

}  // namespace

nvinfer1::IPluginV3* MsDeformAttnPlugin::clone() noexcept {
  try {
    return new MsDeformAttnPlugin(*this);
  } catch (...) {
    log_error("RfkpMSDeformAttn::clone", "out of memory");
    return nullptr;
  }
}

int32_t MsDeformAttnPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                               int32_t nbInputs) const noexcept {
  return guarded("RfkpMSDeformAttn::getOutputDataTypes", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
      throw PluginError("expected 6 inputs and 1 output, got " + std::to_string(nbInputs) + " and " +
                        std::to_string(nbOutputs));
    }
    if (!is_float_type(inputTypes[kValue])) {
      throw PluginError(std::string("value must be kFLOAT or kHALF, got ") + type_name(inputTypes[kValue]));
    }
    outputTypes[0] = inputTypes[kValue];
    return 0;
  });
}

int32_t MsDeformAttnPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                                            const nvinfer1::DimsExprs*, int32_t, nvinfer1::DimsExprs* outputs,
                                            int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept {
  return guarded("RfkpMSDeformAttn::getOutputShapes", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
      throw PluginError("expected 6 inputs and 1 output");
    }
    check_rank(inputs[kValue], 4, "value (B, S, H, D)");
    check_rank(inputs[kShapes], 2, "spatial_shapes (L, 2)");
    check_rank(inputs[kStarts], 1, "level_start_index (L,)");
    check_rank(inputs[kReference], 4, "reference (B, Q, Lr, 2|4)");
    check_rank(inputs[kOffsets], 6, "sampling_offsets (B, Q, H, L, P, 2)");
    check_rank(inputs[kLogits], 5, "attention_logits (B, Q, H, L, P)");
    const nvinfer1::DimsExprs& value = inputs[kValue];
    const nvinfer1::IDimensionExpr* channels =
        exprBuilder.operation(nvinfer1::DimensionOperation::kPROD, *value.d[2], *value.d[3]);
    if (channels == nullptr) throw PluginError("the expression builder returned no H * D expression");
    outputs[0].nbDims = 3;
    outputs[0].d[0] = value.d[0];
    outputs[0].d[1] = inputs[kOffsets].d[1];
    outputs[0].d[2] = channels;
    return 0;
  });
}

bool MsDeformAttnPlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs) return false;
  const nvinfer1::PluginTensorDesc& desc = inOut[pos].desc;
  if (!is_linear(desc)) return false;
  switch (pos) {
    case kValue: return is_float_type(desc.type);
    case kShapes:
    case kStarts: return desc.type == DataType::kINT64;
    default: return desc.type == inOut[kValue].desc.type;
  }
}

int32_t MsDeformAttnPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                            const nvinfer1::DynamicPluginTensorDesc*, int32_t nbOutputs) noexcept {
  return guarded("RfkpMSDeformAttn::configurePlugin", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) throw PluginError("expected 6 inputs and 1 output");
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = in[i].desc.dims;
    check_shapes(dims, DimsChecker());
    return 0;
  });
}

int32_t MsDeformAttnPlugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc,
                                    const nvinfer1::PluginTensorDesc* outputDesc, const void* const* inputs,
                                    void* const* outputs, void*, cudaStream_t stream) noexcept {
  return guarded("RfkpMSDeformAttn::enqueue", [&]() -> int32_t {
    const DimsChecker c;
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = inputDesc[i].dims;
    check_shapes(dims, c);
    const DataType type = inputDesc[kValue].type;
    for (int32_t i : {kReference, kOffsets, kLogits}) {
      if (inputDesc[i].type != type) throw PluginError("float inputs must share the element type of value");
    }
    if (outputDesc[0].type != type) throw PluginError("output must have the element type of value");
    if (inputDesc[kShapes].type != DataType::kINT64 || inputDesc[kStarts].type != DataType::kINT64) {
      throw PluginError("spatial_shapes and level_start_index must be kINT64");
    }
    const Dims& value = dims[kValue];
    const Dims& off = dims[kOffsets];
    const rfkp::MsdaDims d{c.to_int(value.d[0], "B"), c.to_int(value.d[1], "S"), c.to_int(value.d[2], "H"),
                           c.to_int(value.d[3], "D"), c.to_int(off.d[3], "L"),   c.to_int(off.d[1], "Q"),
                           c.to_int(off.d[4], "P")};
    const int64_t expected = static_cast<int64_t>(d.batch) * d.queries * d.heads * d.channels;
    if (volume(outputDesc[0].dims) != expected) throw PluginError("output is not (B, Q, H * D)");
    const cudaError_t status = rfkp::ms_deform_attn_fused_forward(
        kernel_dtype(type), inputs[kValue], static_cast<const int64_t*>(inputs[kShapes]),
        static_cast<const int64_t*>(inputs[kStarts]), inputs[kReference], static_cast<int>(dims[kReference].d[2]),
        static_cast<int>(dims[kReference].d[3]), inputs[kOffsets], inputs[kLogits], outputs[0], d, stream);
    if (status != cudaSuccess) {
      log_error("RfkpMSDeformAttn::enqueue", std::string("kernel launch failed: ") + cudaGetErrorString(status));
      return static_cast<int32_t>(status);
    }
    return 0;
  });
}

nvinfer1::IPluginV3* MsDeformAttnCreator::createPlugin(const char*, const nvinfer1::PluginFieldCollection* fc,
                                                       nvinfer1::TensorRTPhase) noexcept {
  try {
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      const char* name = fc->fields[i].name;
      if (!is_lookup_field(name)) {
        throw PluginError(std::string("takes no fields, got '") + (name != nullptr ? name : "(null)") + "'");
      }
    }
    return new MsDeformAttnPlugin();
  } catch (const std::exception& e) {
    log_error("RfkpMSDeformAttn::createPlugin", e.what());
  } catch (...) {
    log_error("RfkpMSDeformAttn::createPlugin", "unknown exception");
  }
  return nullptr;
}

}  // namespace trt
}  // namespace rfkp
