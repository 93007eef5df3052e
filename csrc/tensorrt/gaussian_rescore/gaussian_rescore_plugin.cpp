#include "gaussian_rescore_plugin.h"

#include <cmath>
#include <cstring>
#include <string>

#include "../../kernels/gaussian_rescore/gaussian_rescore.h"
#include "../common/mask_cast.h"

namespace rfkp {
namespace trt {

namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

enum Input { kCholesky = 0, kFindable, kActive, kScore, kBoxWh, kImageWh };

constexpr size_t kWorkspaceAlignment = 256;

bool is_mask_type(DataType type) {
  return type == DataType::kUINT8 || type == DataType::kBOOL || type == DataType::kINT32;
}

// Checks the six input shapes against each other (unknown extents, -1, match anything).
void check_shapes(const Dims* in, const DimsChecker& c) {
  const Dims& chol = in[kCholesky];
  c.rank(chol, 3, "cholesky (N, K, 3)");
  c.rank(in[kFindable], 2, "findable_logit (N, K)");
  c.rank(in[kActive], 2, "active (N, K)");
  c.rank(in[kScore], 1, "score (N,)");
  c.rank(in[kBoxWh], 2, "box_wh (N, 2)");
  c.rank(in[kImageWh], 2, "image_wh (N, 2)");
  c.is(chol.d[2], 3, "cholesky.shape[2]");
  c.is(in[kBoxWh].d[1], 2, "box_wh.shape[1]");
  c.is(in[kImageWh].d[1], 2, "image_wh.shape[1]");
  for (int i : {kFindable, kActive, kScore, kBoxWh, kImageWh}) {
    c.equal(in[i].d[0], chol.d[0], "detections N of an input and cholesky");
  }
  c.equal(in[kFindable].d[1], chol.d[1], "keypoints K of findable_logit and cholesky");
  c.equal(in[kActive].d[1], chol.d[1], "keypoints K of active and cholesky");
}

}  // namespace

nvinfer1::IPluginV3* GaussianRescorePlugin::clone() noexcept {
  try {
    return new GaussianRescorePlugin(alpha_);
  } catch (...) {
    log_error("RfkpGaussianRescore::clone", "out of memory");
    return nullptr;
  }
}

int32_t GaussianRescorePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                  const DataType* inputTypes, int32_t nbInputs) const noexcept {
  return guarded("RfkpGaussianRescore::getOutputDataTypes", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) {
      throw PluginError("expected 6 inputs and 3 outputs, got " + std::to_string(nbInputs) + " and " +
                        std::to_string(nbOutputs));
    }
    if (!is_float_type(inputTypes[kCholesky])) {
      throw PluginError(std::string("cholesky must be kFLOAT or kHALF, got ") + type_name(inputTypes[kCholesky]));
    }
    for (int32_t i = 0; i < kNbOutputs; ++i) outputTypes[i] = inputTypes[kCholesky];
    return 0;
  });
}

int32_t GaussianRescorePlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                                               const nvinfer1::DimsExprs*, int32_t, nvinfer1::DimsExprs* outputs,
                                               int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept {
  return guarded("RfkpGaussianRescore::getOutputShapes", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) throw PluginError("expected 6 inputs and 3 outputs");
    check_rank(inputs[kCholesky], 3, "cholesky (N, K, 3)");
    check_rank(inputs[kFindable], 2, "findable_logit (N, K)");
    check_rank(inputs[kActive], 2, "active (N, K)");
    check_rank(inputs[kScore], 1, "score (N,)");
    check_rank(inputs[kBoxWh], 2, "box_wh (N, 2)");
    check_rank(inputs[kImageWh], 2, "image_wh (N, 2)");
    const nvinfer1::IDimensionExpr* num = inputs[kCholesky].d[0];
    const nvinfer1::IDimensionExpr* two = exprBuilder.constant(2);
    if (two == nullptr) throw PluginError("the expression builder returned no constant");
    outputs[0].nbDims = 1;
    outputs[0].d[0] = num;
    outputs[1].nbDims = 1;
    outputs[1].d[0] = num;
    outputs[2].nbDims = 4;
    outputs[2].d[0] = num;
    outputs[2].d[1] = inputs[kCholesky].d[1];
    outputs[2].d[2] = two;
    outputs[2].d[3] = two;
    return 0;
  });
}

bool GaussianRescorePlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut,
                                                      int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos >= kNbInputs + kNbOutputs) return false;
  const nvinfer1::PluginTensorDesc& desc = inOut[pos].desc;
  if (!is_linear(desc)) return false;
  switch (pos) {
    case kCholesky: return is_float_type(desc.type);
    case kActive: return is_mask_type(desc.type);
    default: return desc.type == inOut[kCholesky].desc.type;
  }
}

int32_t GaussianRescorePlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                               const nvinfer1::DynamicPluginTensorDesc*, int32_t nbOutputs) noexcept {
  return guarded("RfkpGaussianRescore::configurePlugin", [&]() -> int32_t {
    if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) throw PluginError("expected 6 inputs and 3 outputs");
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = in[i].desc.dims;
    check_shapes(dims, DimsChecker());
    return 0;
  });
}

size_t GaussianRescorePlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                               const nvinfer1::DynamicPluginTensorDesc*, int32_t) const noexcept {
  // An int32 mask is narrowed to one byte per slot, for the largest (N, K) of the profile.
  if (nbInputs != kNbInputs || inputs[kActive].desc.type != DataType::kINT32) return 0;
  const int64_t slots = volume(inputs[kActive].max);
  if (slots <= 0) return 0;
  return (static_cast<size_t>(slots) + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

int32_t GaussianRescorePlugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc,
                                       const nvinfer1::PluginTensorDesc* outputDesc, const void* const* inputs,
                                       void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  return guarded("RfkpGaussianRescore::enqueue", [&]() -> int32_t {
    const DimsChecker c;
    Dims dims[kNbInputs];
    for (int32_t i = 0; i < kNbInputs; ++i) dims[i] = inputDesc[i].dims;
    check_shapes(dims, c);
    const DataType type = inputDesc[kCholesky].type;
    for (int32_t i : {kFindable, kScore, kBoxWh, kImageWh}) {
      if (inputDesc[i].type != type) throw PluginError("float inputs must share the element type of cholesky");
    }
    for (int32_t i = 0; i < kNbOutputs; ++i) {
      if (outputDesc[i].type != type) throw PluginError("outputs must have the element type of cholesky");
    }
    const int num = c.to_int(dims[kCholesky].d[0], "N");
    const int keypoints = c.to_int(dims[kCholesky].d[1], "K");
    const int64_t slots = static_cast<int64_t>(num) * keypoints;
    if (volume(outputDesc[0].dims) != num || volume(outputDesc[2].dims) != 4 * slots) {
      throw PluginError("outputs are not (N,), (N,) and (N, K, 2, 2)");
    }
    const DataType mask_type = inputDesc[kActive].type;
    if (!is_mask_type(mask_type)) throw PluginError(std::string("active cannot be ") + type_name(mask_type));
    const uint8_t* active = static_cast<const uint8_t*>(inputs[kActive]);
    if (mask_type == DataType::kINT32 && slots > 0) {
      if (workspace == nullptr) throw PluginError("an int32 active mask needs the workspace");
      uint8_t* narrowed = static_cast<uint8_t*>(workspace);
      const cudaError_t status =
          int32_mask_to_uint8(static_cast<const int32_t*>(inputs[kActive]), narrowed, slots, stream);
      if (status != cudaSuccess) {
        log_error("RfkpGaussianRescore::enqueue", std::string("mask conversion failed: ") + cudaGetErrorString(status));
        return static_cast<int32_t>(status);
      }
      active = narrowed;
    }
    const cudaError_t status = rfkp::gaussian_rescore(
        kernel_dtype(type), inputs[kCholesky], inputs[kFindable], active, inputs[kScore], inputs[kBoxWh],
        inputs[kImageWh], static_cast<double>(alpha_), num, keypoints, outputs[0], outputs[1], outputs[2], stream);
    if (status != cudaSuccess) {
      log_error("RfkpGaussianRescore::enqueue", std::string("kernel launch failed: ") + cudaGetErrorString(status));
      return static_cast<int32_t>(status);
    }
    return 0;
  });
}

const nvinfer1::PluginFieldCollection* GaussianRescorePlugin::getFieldsToSerialize() noexcept {
  field_ = nvinfer1::PluginField("alpha", &alpha_, nvinfer1::PluginFieldType::kFLOAT32, 1);
  fields_.nbFields = 1;
  fields_.fields = &field_;
  return &fields_;
}

GaussianRescoreCreator::GaussianRescoreCreator()
    : field_("alpha", nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1), fields_{1, &field_} {}

nvinfer1::IPluginV3* GaussianRescoreCreator::createPlugin(const char*, const nvinfer1::PluginFieldCollection* fc,
                                                          nvinfer1::TensorRTPhase) noexcept {
  try {
    float alpha = kDefaultAlpha;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      const nvinfer1::PluginField& field = fc->fields[i];
      if (field.name != nullptr && std::strcmp(field.name, "alpha") == 0) {
        alpha = read_float32_scalar(field);
        if (!std::isfinite(alpha)) throw PluginError("field 'alpha' must be finite");
      } else if (!is_lookup_field(field.name)) {
        throw PluginError(std::string("unknown field '") + (field.name != nullptr ? field.name : "(null)") +
                          "' (the only field is 'alpha')");
      }
    }
    return new GaussianRescorePlugin(alpha);
  } catch (const std::exception& e) {
    log_error("RfkpGaussianRescore::createPlugin", e.what());
  } catch (...) {
    log_error("RfkpGaussianRescore::createPlugin", "unknown exception");
  }
  return nullptr;
}

}  // namespace trt
}  // namespace rfkp
