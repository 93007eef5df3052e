// How TensorRT finds the rfkp plugins in librfkp_trt_plugins.so. Two ways, both supported:
//
// 1. Static registration (RFKP_TRT_STATIC_REGISTRATION, on by default): loading the library (LD_PRELOAD,
//    dlopen, Triton's `--backend-config=tensorrt,plugins=...`) registers both creators with libnvinfer's
//    global registry under the namespace "rfkp". This is what REGISTER_TENSORRT_PLUGIN does, except that the
//    macro registers under the empty namespace, and the creators' own namespace is "rfkp".
// 2. Plugin-library entry points: IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, engines that
//    serialise their plugin libraries) calls setLoggerFinder() and getCreators(). Build with
//    -DRFKP_TRT_STATIC_REGISTRATION=OFF for this use, since loadLibrary refuses creators already registered.
#include <NvInferRuntime.h>

#include "../gaussian_rescore/gaussian_rescore_plugin.h"
#include "../ms_deform_attn/ms_deform_attn_plugin.h"
#include "plugin_common.h"

#ifndef RFKP_TRT_STATIC_REGISTRATION
#define RFKP_TRT_STATIC_REGISTRATION 1
#endif

namespace rfkp {
namespace trt {
namespace {

nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) {
  static MsDeformAttnCreator ms_deform_attn;
  static GaussianRescoreCreator gaussian_rescore;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&ms_deform_attn, &gaussian_rescore};
  count = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

#if RFKP_TRT_STATIC_REGISTRATION
struct StaticRegistration {
  StaticRegistration() {
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) return;
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = all_creators(count);
    for (int32_t i = 0; i < count; ++i) {
      if (!registry->registerCreator(*creators[i], kNamespace)) {
        log_message(nvinfer1::ILogger::Severity::kWARNING,
                    "rfkp plugins: a creator was not registered (already registered under namespace rfkp?)");
      }
    }
  }
};

const StaticRegistration g_static_registration;
#endif

}  // namespace
}  // namespace trt
}  // namespace rfkp

extern "C" RFKP_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  rfkp::trt::set_logger_finder(finder);
}

extern "C" RFKP_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept {
  return rfkp::trt::all_creators(nbCreators);
}
