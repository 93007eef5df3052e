// Base of the rfkp IPluginV3 plugins: one object exposes the core, build and runtime capabilities.
//
// A derived plugin implements its name, clone, the build methods (output count, types, shapes, format
// combinations), enqueue and getFieldsToSerialize. Every override is noexcept; bodies run inside guarded(),
// which turns an exception into a logged error and a nonzero status.
#pragma once

#include <NvInferRuntime.h>

#include <exception>

#include "plugin_common.h"

namespace rfkp {
namespace trt {

class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  const char* getPluginVersion() const noexcept override { return kVersion; }
  const char* getPluginNamespace() const noexcept override { return kNamespace; }

  // Nothing is chosen at configure time; shapes are checked again at enqueue time.
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc*, int32_t, const nvinfer1::DynamicPluginTensorDesc*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc*, int32_t, const nvinfer1::PluginTensorDesc*,
                        int32_t) noexcept override {
    return 0;
  }

  // The plugins hold no per-context resources: a clone serves every execution context.
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

 protected:
  PluginBase() = default;
  PluginBase(const PluginBase&) = default;

  // Runs `body` (returning int32_t); an exception becomes a logged error from `where` and status -1.
  template <typename Body>
  static int32_t guarded(const char* where, Body&& body) noexcept {
    try {
      return body();
    } catch (const std::exception& e) {
      log_error(where, e.what());
    } catch (...) {
      log_error(where, "unknown exception");
    }
    return -1;
  }
};

}  // namespace trt
}  // namespace rfkp
