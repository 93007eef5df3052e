#include "expr_builder.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace rfkp {
namespace trt {
namespace stub {

namespace {

using nvinfer1::DimensionOperation;

class ExprValue final : public nvinfer1::apiv::VDimensionExpr {
 public:
  ExprValue(bool constant, int64_t value, std::string text)
      : constant_(constant), value_(value), text_(std::move(text)) {}
  bool isConstant() const override { return constant_; }
  int64_t getConstantValue() const override {
    return constant_ ? value_ : std::numeric_limits<int64_t>::min();
  }
  bool isSizeTensor() const override { return false; }
  const std::string& text() const { return text_; }

 private:
  bool constant_;
  int64_t value_;
  std::string text_;
};

// Folds `op` on two constants; false when it is undefined (division by zero, unknown operation).
bool fold(DimensionOperation op, int64_t a, int64_t b, int64_t& out) {
  switch (op) {
    case DimensionOperation::kSUM: out = a + b; return true;
    case DimensionOperation::kPROD: out = a * b; return true;
    case DimensionOperation::kMAX: out = std::max(a, b); return true;
    case DimensionOperation::kMIN: out = std::min(a, b); return true;
    case DimensionOperation::kSUB: out = a - b; return true;
    case DimensionOperation::kEQUAL: out = a == b; return true;
    case DimensionOperation::kLESS: out = a < b; return true;
    case DimensionOperation::kFLOOR_DIV:
      if (b == 0) return false;
      out = a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
      return true;
    case DimensionOperation::kCEIL_DIV:
      if (b == 0) return false;
      out = a / b + ((a % b != 0) && ((a < 0) == (b < 0)));
      return true;
  }
  return false;
}

std::string render(DimensionOperation op, const std::string& a, const std::string& b) {
  switch (op) {
    case DimensionOperation::kSUM: return "(" + a + " + " + b + ")";
    case DimensionOperation::kPROD: return "(" + a + " * " + b + ")";
    case DimensionOperation::kMAX: return "max(" + a + ", " + b + ")";
    case DimensionOperation::kMIN: return "min(" + a + ", " + b + ")";
    case DimensionOperation::kSUB: return "(" + a + " - " + b + ")";
    case DimensionOperation::kEQUAL: return "(" + a + " == " + b + ")";
    case DimensionOperation::kLESS: return "(" + a + " < " + b + ")";
    case DimensionOperation::kFLOOR_DIV: return "floordiv(" + a + ", " + b + ")";
    case DimensionOperation::kCEIL_DIV: return "ceildiv(" + a + ", " + b + ")";
  }
  return "?";
}

}  // namespace

class Expr final : public nvinfer1::IDimensionExpr {
 public:
  Expr(bool constant, int64_t value, std::string text) : value_(constant, value, std::move(text)) {
    mImpl = &value_;
  }
  ~Expr() noexcept override = default;
  const ExprValue& value() const { return value_; }

 private:
  ExprValue value_;
};

class ExprBuilder::Impl final : public nvinfer1::apiv::VExprBuilder {
 public:
  const nvinfer1::IDimensionExpr* make(bool constant, int64_t value, std::string text) {
    exprs_.push_back(std::make_unique<Expr>(constant, value, std::move(text)));
    return exprs_.back().get();
  }
  const nvinfer1::IDimensionExpr* constant(int64_t value) override {
    return make(true, value, std::to_string(value));
  }
  const nvinfer1::IDimensionExpr* operation(DimensionOperation op, const nvinfer1::IDimensionExpr& first,
                                            const nvinfer1::IDimensionExpr& second) override {
    const ExprValue& a = static_cast<const Expr&>(first).value();
    const ExprValue& b = static_cast<const Expr&>(second).value();
    int64_t folded = 0;
    if (a.isConstant() && b.isConstant()) {
      if (!fold(op, a.getConstantValue(), b.getConstantValue(), folded)) return nullptr;
      return constant(folded);
    }
    return make(false, 0, render(op, a.text(), b.text()));
  }
  const nvinfer1::IDimensionExpr* declareSizeTensor(int32_t, const nvinfer1::IDimensionExpr&,
                                                    const nvinfer1::IDimensionExpr&) override {
    return nullptr;  // size tensors are not modelled
  }

 private:
  std::deque<std::unique_ptr<Expr>> exprs_;
};

ExprBuilder::ExprBuilder() : impl_(std::make_unique<Impl>()) { mImpl = impl_.get(); }

ExprBuilder::~ExprBuilder() noexcept = default;

const nvinfer1::IDimensionExpr* ExprBuilder::extent(int64_t value) {
  if (value >= 0) return impl_->constant(value);
  return impl_->make(false, 0, "s" + std::to_string(-value));
}

std::string ExprBuilder::text(const nvinfer1::IDimensionExpr* expr) {
  return expr != nullptr ? static_cast<const Expr*>(expr)->value().text() : "?";
}

}  // namespace stub
}  // namespace trt
}  // namespace rfkp
