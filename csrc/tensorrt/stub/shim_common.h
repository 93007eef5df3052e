// librfkp_trt_shim.so: a C API (for ctypes) that drives IPluginV3 plugins the way TensorRT does, against the
// stub libnvinfer. It lists the creators in the registry or behind a library's getCreators(), creates plugins
// from fields, and calls their build methods (outputs, types, format combinations, symbolic shapes with the
// stub expression builder, workspace), clone, attachToContext, the field serialisation round trip and enqueue.
//
// Tensors cross the boundary as RfkpShimTensor: a TensorRT DataType and TensorFormat code, a rank and up to 8
// extents (-k stands for the symbol "s<k>" in output-shape queries). Plugins are opaque IPluginV3 pointers
// owned by the caller (rfkp_shim_destroy). Calls that fail return null / a negative value and leave a message
// in rfkp_shim_last_error(), including what the plugin logged meanwhile. It is test code: out-of-memory
// aside, no exception leaves it (the plugin methods it calls are noexcept).
//
// shim_common.h holds what the entry points share: the tensor struct, the stub's introspection functions,
// error and result buffers, capability lookup and descriptor conversion.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

extern "C" {
int32_t rfkp_stub_log_count(void);
const char* rfkp_stub_log_message(int32_t i);
int32_t rfkp_stub_log_severity(int32_t i);
int32_t rfkp_stub_registration_count(void);
const char* rfkp_stub_registration_namespace(int32_t i);
nvinfer1::IPluginCreatorInterface* rfkp_stub_registration_creator(int32_t i);

typedef struct {
  int32_t type;    // nvinfer1::DataType
  int32_t format;  // nvinfer1::TensorFormat
  int32_t rank;
  int32_t reserved;
  int64_t dims[8];
} RfkpShimTensor;

const char* rfkp_shim_last_error(void);
}

namespace rfkp {
namespace trt {
namespace shim {

// Starts an entry point: clears the error and marks the stub log.
void begin();
// Records `message` plus the errors the plugin logged since begin().
void fail(const std::string& message);
// Keeps `json` in a per-thread buffer and returns it.
const char* result(const std::string& json);
std::string quoted(const std::string& s);
const char* last_error();

// A plugin's capability interfaces (null when absent or of an unexpected kind).
nvinfer1::IPluginV3OneCore* core(void* plugin);
nvinfer1::IPluginV3OneBuild* build(void* plugin);
nvinfer1::IPluginV3OneRuntime* runtime(void* plugin);
nvinfer1::IPluginCreatorV3One* as_v3_creator(nvinfer1::IPluginCreatorInterface* creator);

nvinfer1::PluginTensorDesc to_desc(const RfkpShimTensor& t);
// Descriptors with min = opt = max = the given extents.
std::vector<nvinfer1::DynamicPluginTensorDesc> to_dynamic(const RfkpShimTensor* io, int32_t n);
// [{"name", "type", "length"(, "values" for kFLOAT32)}] of a field collection.
std::string fields_json(const nvinfer1::PluginFieldCollection* fc, bool with_values);

}  // namespace shim
}  // namespace trt
}  // namespace rfkp
