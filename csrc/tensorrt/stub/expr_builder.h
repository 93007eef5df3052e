// A minimal IExprBuilder for testing getOutputShapes without TensorRT.
//
// Expressions are constants, named symbols (a dynamic extent such as the batch) or an operation on two
// expressions. Operations on two constants fold to a constant, as TensorRT's builder does; anything else is
// kept as text, e.g. "(s1 * 4)", so a test can read the shape a plugin derived symbolically.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>

namespace rfkp {
namespace trt {
namespace stub {

class Expr;

class ExprBuilder final : public nvinfer1::IExprBuilder {
 public:
  ExprBuilder();
  ~ExprBuilder() noexcept override;

  // A constant extent (value >= 0) or the symbol "s<k>" for the value -k (k >= 1).
  const nvinfer1::IDimensionExpr* extent(int64_t value);

  // The text of an expression made by this builder ("?" for a null pointer).
  static std::string text(const nvinfer1::IDimensionExpr* expr);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stub
}  // namespace trt
}  // namespace rfkp
