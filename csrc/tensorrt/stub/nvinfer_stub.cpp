// A stand-in libnvinfer for machines without TensorRT: only the symbols the plugin library links against
// (getPluginRegistry, getLogger) plus the library version getters, with a registry and a logger that record
// what they are given. It is a test double: it builds no engines and runs nothing.
//
// Introspection for tests (extern "C", not part of TensorRT): rfkp_stub_registration_* lists what was
// registered and under which namespace argument, rfkp_stub_log_* the messages logged through getLogger().
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace {

using nvinfer1::IPluginCreatorInterface;

// Name and version of a creator of a known interface kind; false for kinds the stub does not know.
bool creator_identity(const IPluginCreatorInterface& creator, std::string& name, std::string& version) {
  if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) return false;
  const auto& v3 = static_cast<const nvinfer1::IPluginCreatorV3One&>(creator);
  name = v3.getPluginName();
  version = v3.getPluginVersion();
  return true;
}

class RecordingLogger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      messages_.emplace_back(msg != nullptr ? msg : "");
      severities_.push_back(static_cast<int32_t>(severity));
    } catch (...) {
    }
  }
  int32_t count() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int32_t>(messages_.size());
  }
  const char* message(int32_t i) {
    std::lock_guard<std::mutex> lock(mutex_);
    return i >= 0 && i < static_cast<int32_t>(messages_.size()) ? messages_[i].c_str() : nullptr;
  }
  int32_t severity(int32_t i) {
    std::lock_guard<std::mutex> lock(mutex_);
    return i >= 0 && i < static_cast<int32_t>(severities_.size()) ? severities_[i] : -1;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    messages_.clear();
    severities_.clear();
  }

 private:
  std::mutex mutex_;
  std::deque<std::string> messages_;  // a deque keeps c_str() pointers valid while it grows
  std::deque<int32_t> severities_;
};

struct Registration {
  IPluginCreatorInterface* creator;
  std::string name;
  std::string version;
  std::string plugin_namespace;  // the argument of registerCreator
};

class RecordingRegistry final : public nvinfer1::IPluginRegistry {
 public:
  bool registerCreator(IPluginCreatorInterface& creator, const char* const pluginNamespace) noexcept override {
    try {
      Registration r{&creator, "", "", pluginNamespace != nullptr ? pluginNamespace : ""};
      if (!creator_identity(creator, r.name, r.version)) return false;
      std::lock_guard<std::mutex> lock(mutex_);
      for (const Registration& old : entries_) {
        if (old.name == r.name && old.version == r.version && old.plugin_namespace == r.plugin_namespace) return false;
      }
      entries_.push_back(r);
      list_.push_back(&creator);
      return true;
    } catch (...) {
      return false;
    }
  }
  IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override {
    *numCreators = static_cast<int32_t>(list_.size());
    return list_.empty() ? nullptr : list_.data();
  }
  IPluginCreatorInterface* getCreator(const char* const name, const char* const version,
                                      const char* const pluginNamespace) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string ns = pluginNamespace != nullptr ? pluginNamespace : "";
    for (const Registration& r : entries_) {
      if (r.name == name && r.version == version && r.plugin_namespace == ns) return r.creator;
    }
    return nullptr;
  }
  bool deregisterCreator(const IPluginCreatorInterface& creator) noexcept override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].creator == &creator) {
        entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
        list_.erase(list_.begin() + static_cast<std::ptrdiff_t>(i));
        return true;
      }
    }
    return false;
  }
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override {
    return getAllCreators(numCreators);
  }

  // Not modelled by the stub.
  bool registerCreator(nvinfer1::IPluginCreator&, const char* const) noexcept override { return false; }
  nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override {
    *numCreators = 0;
    return nullptr;
  }
  nvinfer1::IPluginCreator* getPluginCreator(const char* const, const char* const,
                                             const char* const) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(const nvinfer1::IPluginCreator&) noexcept override { return false; }
  void setErrorRecorder(nvinfer1::IErrorRecorder* const recorder) noexcept override { recorder_ = recorder; }
  nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return recorder_; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(const char*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  nvinfer1::IPluginResource* acquirePluginResource(const char*, nvinfer1::IPluginResource*) noexcept override {
    return nullptr;
  }
  int32_t releasePluginResource(const char*) noexcept override { return -1; }

  std::vector<Registration> snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Registration> entries_;
  std::vector<IPluginCreatorInterface*> list_;
  nvinfer1::IErrorRecorder* recorder_ = nullptr;
};

RecordingLogger& logger() {
  static RecordingLogger instance;
  return instance;
}

RecordingRegistry& registry() {
  static RecordingRegistry instance;
  return instance;
}

}  // namespace

extern "C" TENSORRTAPI nvinfer1::IPluginRegistry* getPluginRegistry() noexcept { return &registry(); }
extern "C" TENSORRTAPI nvinfer1::ILogger* getLogger() noexcept { return &logger(); }
extern "C" TENSORRTAPI int32_t getInferLibMajorVersion() noexcept { return NV_TENSORRT_MAJOR; }
extern "C" TENSORRTAPI int32_t getInferLibMinorVersion() noexcept { return NV_TENSORRT_MINOR; }
extern "C" TENSORRTAPI int32_t getInferLibPatchVersion() noexcept { return NV_TENSORRT_PATCH; }
extern "C" TENSORRTAPI int32_t getInferLibBuildVersion() noexcept { return NV_TENSORRT_BUILD; }

extern "C" TENSORRTAPI int32_t rfkp_stub_registration_count(void) {
  return static_cast<int32_t>(registry().snapshot().size());
}

extern "C" TENSORRTAPI const char* rfkp_stub_registration_namespace(int32_t i) {
  static thread_local std::string result;
  const std::vector<Registration> entries = registry().snapshot();
  if (i < 0 || i >= static_cast<int32_t>(entries.size())) return nullptr;
  result = entries[i].plugin_namespace;
  return result.c_str();
}

extern "C" TENSORRTAPI IPluginCreatorInterface* rfkp_stub_registration_creator(int32_t i) {
  const std::vector<Registration> entries = registry().snapshot();
  return i >= 0 && i < static_cast<int32_t>(entries.size()) ? entries[i].creator : nullptr;
}

extern "C" TENSORRTAPI int32_t rfkp_stub_log_count(void) { return logger().count(); }
extern "C" TENSORRTAPI const char* rfkp_stub_log_message(int32_t i) { return logger().message(i); }
extern "C" TENSORRTAPI int32_t rfkp_stub_log_severity(int32_t i) { return logger().severity(i); }
extern "C" TENSORRTAPI void rfkp_stub_clear_log(void) { logger().clear(); }
