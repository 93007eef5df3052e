// Shim entry points for creators and plugin objects: listing, creation, clone, attachToContext, serialisation.
#include <dlfcn.h>

#include <string>
#include <vector>

#include "shim_common.h"

using rfkp::trt::shim::begin;
using rfkp::trt::shim::fail;
using rfkp::trt::shim::result;
using rfkp::trt::shim::quoted;
using rfkp::trt::shim::core;
using rfkp::trt::shim::build;
using rfkp::trt::shim::runtime;
using rfkp::trt::shim::as_v3_creator;
using rfkp::trt::shim::fields_json;
using nvinfer1::IPluginV3;

namespace {

std::string creator_json(nvinfer1::IPluginCreatorInterface* creator, const char* registered_namespace) {
  const nvinfer1::InterfaceInfo info = creator->getInterfaceInfo();
  std::string out = "{\"interface\": " + quoted(info.kind) + ", \"interface_version\": [" +
                    std::to_string(info.major) + ", " + std::to_string(info.minor) + "]";
  if (registered_namespace != nullptr) out += ", \"registered_namespace\": " + quoted(registered_namespace);
  if (nvinfer1::IPluginCreatorV3One* v3 = as_v3_creator(creator)) {
    out += ", \"name\": " + quoted(v3->getPluginName()) + ", \"version\": " + quoted(v3->getPluginVersion()) +
           ", \"namespace\": " + quoted(v3->getPluginNamespace()) +
           ", \"fields\": " + fields_json(v3->getFieldNames(), false);
  }
  return out + "}";
}

}  // namespace

extern "C" {

const char* rfkp_shim_registry_json(void) {
  begin();
  try {
    std::string out = "[";
    const int32_t count = rfkp_stub_registration_count();
    for (int32_t i = 0; i < count; ++i) {
      out += std::string(i ? ", " : "") +
             creator_json(rfkp_stub_registration_creator(i), rfkp_stub_registration_namespace(i));
    }
    return result(out + "]");
  } catch (...) {
    fail("rfkp_shim_registry_json: exception");
    return nullptr;
  }
}
const char* rfkp_shim_entry_point_json(const char* library_path) {
  begin();
  try {
    void* handle = dlopen(library_path, RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr) {
      fail(std::string("library not loaded: ") + (library_path != nullptr ? library_path : "(null)"));
      return nullptr;
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
    const bool has_finder = dlsym(handle, "setLoggerFinder") != nullptr;
    dlclose(handle);  // drops the reference RTLD_NOLOAD took; the library stays loaded
    if (get_creators == nullptr || !has_finder) {
      fail("the library does not export getCreators and setLoggerFinder");
      return nullptr;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = get_creators(count);
    std::string out = "[";
    for (int32_t i = 0; i < count; ++i) out += std::string(i ? ", " : "") + creator_json(creators[i], nullptr);
    return result(out + "]");
  } catch (...) {
    fail("rfkp_shim_entry_point_json: exception");
    return nullptr;
  }
}

void* rfkp_shim_create(const char* name, const char* version, const char* plugin_namespace, int32_t n_fields,
                       const char* const* field_names, const int32_t* field_types, const void* const* field_data,
                       const int32_t* field_lengths, int32_t phase) {
  begin();
  try {
    nvinfer1::IPluginCreatorV3One* creator =
        as_v3_creator(getPluginRegistry()->getCreator(name, version, plugin_namespace));
    if (creator == nullptr) {
      fail(std::string("no IPluginCreatorV3One registered as ") + name + " v" + version + " in " + plugin_namespace);
      return nullptr;
    }
    std::vector<nvinfer1::PluginField> fields;
    for (int32_t i = 0; i < n_fields; ++i) {
      fields.emplace_back(field_names[i], field_data[i], static_cast<nvinfer1::PluginFieldType>(field_types[i]),
                          field_lengths[i]);
    }
    const nvinfer1::PluginFieldCollection fc{n_fields, fields.empty() ? nullptr : fields.data()};
    IPluginV3* plugin = creator->createPlugin(name, &fc, static_cast<nvinfer1::TensorRTPhase>(phase));
    if (plugin == nullptr) fail(std::string("createPlugin returned null for ") + name);
    return plugin;
  } catch (...) {
    fail("rfkp_shim_create: exception");
    return nullptr;
  }
}

void rfkp_shim_destroy(void* plugin) { delete static_cast<IPluginV3*>(plugin); }

const char* rfkp_shim_describe_json(void* plugin) {
  begin();
  nvinfer1::IPluginV3OneCore* c = core(plugin);
  if (c == nullptr) {
    fail("the plugin has no PLUGIN_V3ONE_CORE capability");
    return nullptr;
  }
  const nvinfer1::InterfaceInfo info = static_cast<IPluginV3*>(plugin)->getInterfaceInfo();
  return result("{\"name\": " + quoted(c->getPluginName()) + ", \"version\": " + quoted(c->getPluginVersion()) +
                ", \"namespace\": " + quoted(c->getPluginNamespace()) + ", \"interface\": " + quoted(info.kind) +
                ", \"build\": " + (build(plugin) ? "true" : "false") +
                ", \"runtime\": " + (runtime(plugin) ? "true" : "false") + "}");
}

void* rfkp_shim_clone(void* plugin) {
  begin();
  IPluginV3* copy = plugin != nullptr ? static_cast<IPluginV3*>(plugin)->clone() : nullptr;
  if (copy == nullptr) fail("clone returned null");
  return copy;
}

void* rfkp_shim_attach_to_context(void* plugin) {
  begin();
  nvinfer1::IPluginV3OneRuntime* r = runtime(plugin);
  IPluginV3* attached = r != nullptr ? r->attachToContext(nullptr) : nullptr;
  if (attached == nullptr) fail("attachToContext returned null");
  return attached;
}
const char* rfkp_shim_serialized_fields_json(void* plugin) {
  begin();
  try {
    nvinfer1::IPluginV3OneRuntime* r = runtime(plugin);
    const nvinfer1::PluginFieldCollection* fc = r != nullptr ? r->getFieldsToSerialize() : nullptr;
    if (fc == nullptr) {
      fail("getFieldsToSerialize returned null");
      return nullptr;
    }
    return result(fields_json(fc, true));
  } catch (...) {
    fail("rfkp_shim_serialized_fields_json: exception");
    return nullptr;
  }
}

void* rfkp_shim_deserialize(void* plugin) {
  begin();
  nvinfer1::IPluginV3OneCore* c = core(plugin);
  nvinfer1::IPluginV3OneRuntime* r = runtime(plugin);
  if (c == nullptr || r == nullptr) {
    fail("the plugin lacks the core or runtime capability");
    return nullptr;
  }
  nvinfer1::IPluginCreatorV3One* creator = as_v3_creator(
      getPluginRegistry()->getCreator(c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace()));
  if (creator == nullptr) {
    fail("no creator registered under the plugin's own name, version and namespace");
    return nullptr;
  }
  const nvinfer1::PluginFieldCollection* fc = r->getFieldsToSerialize();
  IPluginV3* restored = creator->createPlugin(c->getPluginName(), fc, nvinfer1::TensorRTPhase::kRUNTIME);
  if (restored == nullptr) fail("createPlugin(kRUNTIME) returned null");
  return restored;
}

}  // extern "C"
