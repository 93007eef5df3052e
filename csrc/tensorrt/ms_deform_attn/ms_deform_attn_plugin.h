// RfkpMSDeformAttn (version 1, namespace rfkp): fused multi-scale deformable attention as an IPluginV3.
//
// Inputs (linear format; T is kFLOAT or kHALF, the same for every T tensor):
//   0 value              (B, S, H, D) T
//   1 spatial_shapes     (L, 2) kINT64, (h, w) per level
//   2 level_start_index  (L,) kINT64
//   3 reference          (B, Q, Lr, 2 | 4) T, Lr in {1, L}; points (x, y) or boxes (cx, cy, w, h), normalised
//   4 sampling_offsets   (B, Q, H, L, P, 2) T, raw
//   5 attention_logits   (B, Q, H, L, P) T, raw (softmax over L * P inside the kernel)
// Output:
//   0 output             (B, Q, H * D) T
// Semantics: rfkp::ms_deform_attn_fused_forward (csrc/kernels/ms_deform_attn/ms_deform_attn.h). No fields.
#pragma once

#include <NvInferRuntime.h>

#include "../common/plugin_base.h"

namespace rfkp {
namespace trt {

inline constexpr char kMsDeformAttnName[] = "RfkpMSDeformAttn";

class MsDeformAttnPlugin final : public PluginBase {
 public:
  static constexpr int32_t kNbInputs = 6;
  static constexpr int32_t kNbOutputs = 1;

  const char* getPluginName() const noexcept override { return kMsDeformAttnName; }
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

  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override { return &no_fields_; }

 private:
  nvinfer1::PluginFieldCollection no_fields_{0, nullptr};
};

class MsDeformAttnCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &no_fields_; }
  const char* getPluginName() const noexcept override { return kMsDeformAttnName; }
  const char* getPluginVersion() const noexcept override { return kVersion; }
  const char* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  nvinfer1::PluginFieldCollection no_fields_{0, nullptr};
};

}  // namespace trt
}  // namespace rfkp
