// RfkpGaussianRescore (version 1, namespace rfkp): Gaussian rescoring of N detections as an IPluginV3.
//
// Field: alpha (kFLOAT32, length 1, default 0.2), the strength of the uncertainty penalty.
// Inputs (linear format; T is kFLOAT or kHALF, the same for every T tensor):
//   0 cholesky        (N, K, 3) T, (log_l11, l21, log_l22) per keypoint
//   1 findable_logit  (N, K) T
//   2 active          (N, K) kUINT8 or kBOOL (0 / 1), or kINT32 (nonzero = active; converted in the workspace)
//   3 score           (N,) T in [0, 1]
//   4 box_wh          (N, 2) T, normalised box size
//   5 image_wh        (N, 2) T, image size in pixels
// Outputs: 0 score' (N,) T, 1 log_mean_trace (N,) T, 2 covariance (N, K, 2, 2) T (pixels^2, NaN when inactive).
// Semantics: rfkp::gaussian_rescore (csrc/kernels/gaussian_rescore/gaussian_rescore.h).
#pragma once

#include <NvInferRuntime.h>

#include "../common/plugin_base.h"

namespace rfkp {
namespace trt {

inline constexpr char kGaussianRescoreName[] = "RfkpGaussianRescore";
inline constexpr float kDefaultAlpha = 0.2f;

class GaussianRescorePlugin final : public PluginBase {
 public:
  static constexpr int32_t kNbInputs = 6;
  static constexpr int32_t kNbOutputs = 3;

  explicit GaussianRescorePlugin(float alpha) : alpha_(alpha) {}

  const char* getPluginName() const noexcept override { return kGaussianRescoreName; }
  nvinfer1::IPluginV3* clone() noexcept override;

  int32_t getNbOutputs() const noexcept override { return kNbOutputs; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, const nvinfer1::DataType* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nbOutputs) const noexcept override;

  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  float alpha_;
  nvinfer1::PluginField field_{};
  nvinfer1::PluginFieldCollection fields_{};
};

class GaussianRescoreCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  GaussianRescoreCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fields_; }
  const char* getPluginName() const noexcept override { return kGaussianRescoreName; }
  const char* getPluginVersion() const noexcept override { return kVersion; }
  const char* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  nvinfer1::PluginField field_{};
  nvinfer1::PluginFieldCollection fields_{};
};

}  // namespace trt
}  // namespace rfkp
