#include "shim_common.h"

#include <cstdio>
#include <cstring>

namespace rfkp {
namespace trt {
namespace shim {

namespace {

using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;

thread_local std::string g_error;
thread_local std::string g_result;
thread_local int32_t g_log_mark = 0;

template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type, const char* kind) {
  if (plugin == nullptr) return nullptr;
  nvinfer1::IPluginCapability* c = plugin->getCapabilityInterface(type);
  if (c == nullptr || std::strcmp(c->getInterfaceInfo().kind, kind) != 0) return nullptr;
  return static_cast<T*>(c);
}

nvinfer1::Dims to_dims(const RfkpShimTensor& t) {
  nvinfer1::Dims d{};
  d.nbDims = t.rank;
  for (int32_t i = 0; i < t.rank && i < nvinfer1::Dims::MAX_DIMS; ++i) d.d[i] = t.dims[i];
  return d;
}

}  // namespace

void begin() {
  g_error.clear();
  g_log_mark = rfkp_stub_log_count();
}

void fail(const std::string& message) {
  g_error = message;
  const int32_t count = rfkp_stub_log_count();
  for (int32_t i = g_log_mark; i < count; ++i) {
    if (rfkp_stub_log_severity(i) <= static_cast<int32_t>(nvinfer1::ILogger::Severity::kERROR)) {
      g_error += std::string(" | ") + rfkp_stub_log_message(i);
    }
  }
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

const char* result(const std::string& json) {
  g_result = json;
  return g_result.c_str();
}

nvinfer1::IPluginV3OneCore* core(void* p) {
  return capability<nvinfer1::IPluginV3OneCore>(static_cast<IPluginV3*>(p), PluginCapabilityType::kCORE,
                                                "PLUGIN_V3ONE_CORE");
}
nvinfer1::IPluginV3OneBuild* build(void* p) {
  return capability<nvinfer1::IPluginV3OneBuild>(static_cast<IPluginV3*>(p), PluginCapabilityType::kBUILD,
                                                 "PLUGIN_V3ONE_BUILD");
}
nvinfer1::IPluginV3OneRuntime* runtime(void* p) {
  return capability<nvinfer1::IPluginV3OneRuntime>(static_cast<IPluginV3*>(p), PluginCapabilityType::kRUNTIME,
                                                   "PLUGIN_V3ONE_RUNTIME");
}

nvinfer1::IPluginCreatorV3One* as_v3_creator(nvinfer1::IPluginCreatorInterface* creator) {
  if (creator == nullptr || std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) {
    return nullptr;
  }
  return static_cast<nvinfer1::IPluginCreatorV3One*>(creator);
}

nvinfer1::PluginTensorDesc to_desc(const RfkpShimTensor& t) {
  nvinfer1::PluginTensorDesc desc{};
  desc.dims = to_dims(t);
  desc.type = static_cast<nvinfer1::DataType>(t.type);
  desc.format = static_cast<nvinfer1::TensorFormat>(t.format);
  desc.scale = -1.0F;
  return desc;
}

std::vector<nvinfer1::DynamicPluginTensorDesc> to_dynamic(const RfkpShimTensor* io, int32_t n) {
  std::vector<nvinfer1::DynamicPluginTensorDesc> out(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    out[i].desc = to_desc(io[i]);
    out[i].min = out[i].opt = out[i].max = out[i].desc.dims;
  }
  return out;
}

std::string fields_json(const nvinfer1::PluginFieldCollection* fc, bool with_values) {
  std::string out = "[";
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    const nvinfer1::PluginField& f = fc->fields[i];
    out += std::string(i ? ", " : "") + "{\"name\": " + quoted(f.name != nullptr ? f.name : "") +
           ", \"type\": " + std::to_string(static_cast<int32_t>(f.type)) + ", \"length\": " + std::to_string(f.length);
    if (with_values && f.data != nullptr && f.type == nvinfer1::PluginFieldType::kFLOAT32) {
      out += ", \"values\": [";
      for (int32_t k = 0; k < f.length; ++k) {
        float v;
        std::memcpy(&v, static_cast<const char*>(f.data) + k * sizeof(float), sizeof(float));
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
        out += std::string(k ? ", " : "") + buf;
      }
      out += "]";
    }
    out += "}";
  }
  return out + "]";
}

const char* last_error() { return g_error.c_str(); }

}  // namespace shim
}  // namespace trt
}  // namespace rfkp

extern "C" const char* rfkp_shim_last_error(void) { return rfkp::trt::shim::last_error(); }
