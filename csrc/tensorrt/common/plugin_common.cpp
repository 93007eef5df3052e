#include "plugin_common.h"

#include <atomic>
#include <climits>
#include <cstring>

// libnvinfer's global logger. Declared weak so that the library still loads with a libnvinfer that does not
// export it; the plugins then log only through the logger finder.
extern "C" nvinfer1::ILogger* getLogger() noexcept __attribute__((weak));

namespace rfkp {
namespace trt {

namespace {

std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};

nvinfer1::ILogger* current_logger() noexcept {
  if (nvinfer1::ILoggerFinder* finder = g_logger_finder.load()) {
    if (nvinfer1::ILogger* logger = finder->findLogger()) return logger;
  }
  return getLogger != nullptr ? getLogger() : nullptr;
}

}  // namespace

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept { g_logger_finder.store(finder); }

void log_message(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept {
  if (nvinfer1::ILogger* logger = current_logger()) logger->log(severity, message.c_str());
}

void log_error(const char* where, const std::string& message) noexcept {
  try {
    log_message(nvinfer1::ILogger::Severity::kERROR, std::string(where) + ": " + message);
  } catch (...) {
    // Out of memory while formatting: nothing sensible left to report.
  }
}

const char* type_name(nvinfer1::DataType type) noexcept {
  using nvinfer1::DataType;
  switch (type) {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kINT8: return "kINT8";
    case DataType::kINT32: return "kINT32";
    case DataType::kBOOL: return "kBOOL";
    case DataType::kUINT8: return "kUINT8";
    case DataType::kFP8: return "kFP8";
    case DataType::kBF16: return "kBF16";
    case DataType::kINT64: return "kINT64";
    case DataType::kINT4: return "kINT4";
    case DataType::kFP4: return "kFP4";
    case DataType::kE8M0: return "kE8M0";
  }
  return "unknown";
}

const char* field_type_name(nvinfer1::PluginFieldType type) noexcept {
  using nvinfer1::PluginFieldType;
  switch (type) {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kUNKNOWN: return "kUNKNOWN";
    case PluginFieldType::kBF16: return "kBF16";
    case PluginFieldType::kINT64: return "kINT64";
    case PluginFieldType::kFP8: return "kFP8";
    case PluginFieldType::kINT4: return "kINT4";
    case PluginFieldType::kFP4: return "kFP4";
  }
  return "unknown";
}

bool is_float_type(nvinfer1::DataType type) noexcept {
  return type == nvinfer1::DataType::kFLOAT || type == nvinfer1::DataType::kHALF;
}

rfkp::DType kernel_dtype(nvinfer1::DataType type) {
  if (type == nvinfer1::DataType::kFLOAT) return rfkp::DType::kFloat32;
  if (type == nvinfer1::DataType::kHALF) return rfkp::DType::kFloat16;
  throw PluginError(std::string("unsupported element type ") + type_name(type) + " (expected kFLOAT or kHALF)");
}

bool is_linear(const nvinfer1::PluginTensorDesc& desc) noexcept {
  return desc.format == nvinfer1::TensorFormat::kLINEAR;
}

int64_t volume(const nvinfer1::Dims& dims) noexcept {
  int64_t n = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < 0) return -1;
    n *= dims.d[i];
  }
  return n;
}

void DimsChecker::rank(const nvinfer1::Dims& dims, int32_t expected, const char* tensor) const {
  if (dims.nbDims != expected) {
    throw PluginError(std::string(tensor) + " must have rank " + std::to_string(expected) +
                      ", got " + std::to_string(dims.nbDims));
  }
}

void DimsChecker::equal(int64_t a, int64_t b, const char* what) const {
  if (a >= 0 && b >= 0 && a != b) {
    throw PluginError(std::string(what) + " disagree (" + std::to_string(a) + " vs " +
                      std::to_string(b) + ")");
  }
}

void DimsChecker::is(int64_t a, int64_t expected, const char* what) const {
  if (a >= 0 && a != expected) {
    throw PluginError(std::string(what) + " must be " + std::to_string(expected) + ", got " +
                      std::to_string(a));
  }
}

void DimsChecker::at_least(int64_t a, int64_t minimum, const char* what) const {
  if (a >= 0 && a < minimum) {
    throw PluginError(std::string(what) + " must be >= " + std::to_string(minimum) + ", got " +
                      std::to_string(a));
  }
}

void DimsChecker::one_of(int64_t a, int64_t x, int64_t y, const char* what) const {
  if (a < 0 || x < 0 || y < 0) return;  // not known yet
  if (a != x && a != y) {
    throw PluginError(std::string(what) + " must be " + std::to_string(x) + " or " +
                      std::to_string(y) + ", got " + std::to_string(a));
  }
}

int DimsChecker::to_int(int64_t extent, const char* what) const {
  if (extent < 0 || extent > INT_MAX) {
    throw PluginError(std::string(what) + " = " + std::to_string(extent) +
                      " is outside [0, INT32_MAX]");
  }
  return static_cast<int>(extent);
}

bool is_lookup_field(const char* name) noexcept {
  return name != nullptr && (std::strcmp(name, "plugin_version") == 0 || std::strcmp(name, "plugin_namespace") == 0);
}

float read_float32_scalar(const nvinfer1::PluginField& field) {
  if (field.type != nvinfer1::PluginFieldType::kFLOAT32 || field.length != 1 || field.data == nullptr) {
    const char* name = field.name != nullptr ? field.name : "(null)";
    throw PluginError(std::string("field '") + name + "' must be kFLOAT32 with length 1, got " +
                      field_type_name(field.type) + " with length " + std::to_string(field.length));
  }
  float value;
  std::memcpy(&value, field.data, sizeof(value));
  return value;
}

void check_rank(const nvinfer1::DimsExprs& dims, int32_t expected, const char* tensor) {
  if (dims.nbDims != expected) {
    throw PluginError(std::string(tensor) + " must have rank " + std::to_string(expected) +
                      ", got " + std::to_string(dims.nbDims));
  }
}

}  // namespace trt
}  // namespace rfkp
