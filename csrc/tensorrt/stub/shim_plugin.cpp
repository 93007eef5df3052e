// Shim entry points for a plugin's build-phase methods and enqueue.
#include <string>
#include <vector>

#include "expr_builder.h"
#include "shim_common.h"

using rfkp::trt::shim::begin;
using rfkp::trt::shim::fail;
using rfkp::trt::shim::result;
using rfkp::trt::shim::quoted;
using rfkp::trt::shim::build;
using rfkp::trt::shim::runtime;
using rfkp::trt::shim::to_desc;
using rfkp::trt::shim::to_dynamic;

extern "C" {

int32_t rfkp_shim_nb_outputs(void* plugin) {
  begin();
  nvinfer1::IPluginV3OneBuild* b = build(plugin);
  if (b == nullptr) fail("the plugin has no build capability");
  return b != nullptr ? b->getNbOutputs() : -1;
}

int32_t rfkp_shim_output_types(void* plugin, const int32_t* in_types, int32_t n_in, int32_t* out_types,
                               int32_t n_out) {
  begin();
  nvinfer1::IPluginV3OneBuild* b = build(plugin);
  if (b == nullptr) {
    fail("the plugin has no build capability");
    return -1;
  }
  const int32_t status = b->getOutputDataTypes(reinterpret_cast<nvinfer1::DataType*>(out_types), n_out,
                                               reinterpret_cast<const nvinfer1::DataType*>(in_types), n_in);
  if (status != 0) fail("getOutputDataTypes failed with " + std::to_string(status));
  return status;
}

int32_t rfkp_shim_supports(void* plugin, int32_t pos, const RfkpShimTensor* io, int32_t n_in, int32_t n_out) {
  begin();
  nvinfer1::IPluginV3OneBuild* b = build(plugin);
  if (b == nullptr) {
    fail("the plugin has no build capability");
    return -1;
  }
  std::vector<nvinfer1::DynamicPluginTensorDesc> descs = to_dynamic(io, n_in + n_out);
  return b->supportsFormatCombination(pos, descs.data(), n_in, n_out) ? 1 : 0;
}
const char* rfkp_shim_output_shapes_json(void* plugin, const RfkpShimTensor* inputs, int32_t n_in, int32_t n_out) {
  begin();
  try {
    nvinfer1::IPluginV3OneBuild* b = build(plugin);
    if (b == nullptr) {
      fail("the plugin has no build capability");
      return nullptr;
    }
    rfkp::trt::stub::ExprBuilder builder;
    std::vector<nvinfer1::DimsExprs> in(static_cast<size_t>(n_in)), out(static_cast<size_t>(n_out));
    for (int32_t i = 0; i < n_in; ++i) {
      in[i].nbDims = inputs[i].rank;
      for (int32_t k = 0; k < inputs[i].rank; ++k) in[i].d[k] = builder.extent(inputs[i].dims[k]);
    }
    for (nvinfer1::DimsExprs& o : out) o = nvinfer1::DimsExprs{};
    const int32_t status = b->getOutputShapes(in.data(), n_in, nullptr, 0, out.data(), n_out, builder);
    if (status != 0) {
      fail("getOutputShapes failed with " + std::to_string(status));
      return nullptr;
    }
    std::string json = "[";
    for (int32_t i = 0; i < n_out; ++i) {
      json += std::string(i ? ", " : "") + "[";
      for (int32_t k = 0; k < out[i].nbDims; ++k) {
        json += std::string(k ? ", " : "") + quoted(rfkp::trt::stub::ExprBuilder::text(out[i].d[k]));
      }
      json += "]";
    }
    return result(json + "]");
  } catch (...) {
    fail("rfkp_shim_output_shapes_json: exception");
    return nullptr;
  }
}

int32_t rfkp_shim_configure(void* plugin, const RfkpShimTensor* io, int32_t n_in, int32_t n_out) {
  begin();
  nvinfer1::IPluginV3OneBuild* b = build(plugin);
  if (b == nullptr) {
    fail("the plugin has no build capability");
    return -1;
  }
  std::vector<nvinfer1::DynamicPluginTensorDesc> descs = to_dynamic(io, n_in + n_out);
  const int32_t status = b->configurePlugin(descs.data(), n_in, descs.data() + n_in, n_out);
  if (status != 0) fail("configurePlugin failed with " + std::to_string(status));
  return status;
}

int64_t rfkp_shim_workspace_size(void* plugin, const RfkpShimTensor* io, int32_t n_in, int32_t n_out) {
  begin();
  nvinfer1::IPluginV3OneBuild* b = build(plugin);
  if (b == nullptr) {
    fail("the plugin has no build capability");
    return -1;
  }
  std::vector<nvinfer1::DynamicPluginTensorDesc> descs = to_dynamic(io, n_in + n_out);
  return static_cast<int64_t>(b->getWorkspaceSize(descs.data(), n_in, descs.data() + n_in, n_out));
}

int32_t rfkp_shim_enqueue(void* plugin, const RfkpShimTensor* io, int32_t n_in, int32_t n_out,
                          const void* const* inputs, void* const* outputs, void* workspace, void* stream) {
  begin();
  nvinfer1::IPluginV3OneRuntime* r = runtime(plugin);
  if (r == nullptr) {
    fail("the plugin has no runtime capability");
    return -1;
  }
  std::vector<nvinfer1::PluginTensorDesc> descs;
  for (int32_t i = 0; i < n_in + n_out; ++i) descs.push_back(to_desc(io[i]));
  int32_t status = r->onShapeChange(descs.data(), n_in, descs.data() + n_in, n_out);
  if (status == 0) {
    status = r->enqueue(descs.data(), descs.data() + n_in, inputs, outputs, workspace,
                        static_cast<cudaStream_t>(stream));
  }
  if (status != 0) fail("enqueue failed with " + std::to_string(status));
  return status;
}

}  // extern "C"
