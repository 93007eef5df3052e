// Shared helpers of the rfkp TensorRT plugins: identity (namespace, version), logging, data types, dims checks.
//
// Nothing here throws across the library boundary: plugin and creator methods catch every exception and turn
// it into a logged error and a failure status (see PluginBase::guarded).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../kernels/common/dtype.h"

// Marks the library's entry points. The library is built with hidden visibility, and TENSORRTAPI exports
// nothing outside TensorRT's own build.
#define RFKP_TRT_EXPORT __attribute__((visibility("default")))

namespace rfkp {
namespace trt {

// Every rfkp plugin is registered under this namespace with this version.
inline constexpr char kNamespace[] = "rfkp";
inline constexpr char kVersion[] = "1";

// A failed argument check inside a plugin method; caught at the method boundary and logged.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Logger used by the plugins: the one handed over by setLoggerFinder() when TensorRT loaded the library as a
// plugin library, else libnvinfer's global getLogger(). Messages are dropped when neither exists.
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;
void log_message(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept;
void log_error(const char* where, const std::string& message) noexcept;

const char* type_name(nvinfer1::DataType type) noexcept;
const char* field_type_name(nvinfer1::PluginFieldType type) noexcept;

// Floating-point element types the plugins compute in (linear format): float32 and float16.
bool is_float_type(nvinfer1::DataType type) noexcept;
rfkp::DType kernel_dtype(nvinfer1::DataType type);

bool is_linear(const nvinfer1::PluginTensorDesc& desc) noexcept;

// Product of the extents (1 for rank 0); -1 when an extent is unknown.
int64_t volume(const nvinfer1::Dims& dims) noexcept;

// Shape checks on dims that may hold -1 for extents unknown at build time: an unknown extent matches anything.
// A failed check throws PluginError; the plugin method that catches it names the plugin in the log.
class DimsChecker {
 public:
  void rank(const nvinfer1::Dims& dims, int32_t expected, const char* tensor) const;
  void equal(int64_t a, int64_t b, const char* what) const;
  void is(int64_t a, int64_t expected, const char* what) const;
  void one_of(int64_t a, int64_t x, int64_t y, const char* what) const;
  void at_least(int64_t a, int64_t minimum, const char* what) const;
  // Converts a known extent to the launchers' int (throws above INT32_MAX).
  int to_int(int64_t extent, const char* what) const;
};

// Fields an ONNX node may carry for the parser's creator lookup ("plugin_version", "plugin_namespace"); the
// creators accept and ignore them.
bool is_lookup_field(const char* name) noexcept;

// The value of a float32 field of length 1; throws PluginError naming the field, its type and its length.
float read_float32_scalar(const nvinfer1::PluginField& field);

// Rank check of a symbolic input shape (getOutputShapes); throws PluginError.
void check_rank(const nvinfer1::DimsExprs& dims, int32_t expected, const char* tensor);

}  // namespace trt
}  // namespace rfkp
