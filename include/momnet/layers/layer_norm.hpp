// Layer normalisation with torch.nn.LayerNorm's semantics and state_dict
// names: normalises each input over its trailing dimensions (normalized_shape)
// with the biased variance (ops/layer_norm.hpp), then scales by `weight`
// (ones) and shifts by `bias` (zeros), both of normalized_shape, PyTorch's
// initialisation. elementwise_affine = false gives no parameters at all;
// bias = false keeps the weight only (PyTorch's nn.LayerNorm(bias=False)).
//
// The layer has no mode and no state besides its parameters: it normalises
// with the input's own statistics in training and eval alike, so as a block
// (or inside one) it replays bit for bit.
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/fixed_point.hpp"
#include "momnet/ops/layer_norm.hpp"
#include "momnet/parameter.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct LayerNormOptions {
  double eps = 1e-5;               // added to the variance inside the square root
  bool elementwise_affine = true;  // learnable weight (and bias)
  bool bias = true;                // with elementwise_affine: a learnable bias too
};

template <class T>
class LayerNorm {
 public:
  using Scalar = T;

  // Normalises over the last axis, of size normalized_size.
  explicit LayerNorm(Eigen::Index normalized_size, LayerNormOptions options = {})
      : LayerNorm(last_axis(normalized_size), options) {}
  // Normalises over the last normalized_shape.rank() axes.
  explicit LayerNorm(const Shape& normalized_shape, LayerNormOptions options = {})
      : normalized_shape_(checked_shape(normalized_shape)), options_(checked_options(options)),
        weight_(parameter_if(options_.elementwise_affine, 1, "weight")),
        bias_(parameter_if(options_.elementwise_affine && options_.bias, 0, "bias")) {}

  // REQUIRES: x's trailing dimensions equal normalized_shape (else
  // std::invalid_argument naming both shapes).
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    return layer_norm(x, normalized_shape_, has_weight() ? tape.param(weight_) : Var<T>(),
                      has_bias() ? tape.param(bias_) : Var<T>(), options_.eps);
  }

  // Names as torch.nn.LayerNorm's state_dict: `weight` and `bias`, each only
  // when the layer has it.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    if (has_weight()) visit.parameter("weight", weight_);
    if (has_bias()) visit.parameter("bias", bias_);
  }

  const Shape& normalized_shape() const noexcept { return normalized_shape_; }
  const LayerNormOptions& options() const noexcept { return options_; }
  double eps() const noexcept { return options_.eps; }
  bool has_weight() const noexcept { return options_.elementwise_affine; }
  bool has_bias() const noexcept { return options_.elementwise_affine && options_.bias; }
  Parameter<T>& weight() {
    if (!has_weight()) throw std::logic_error("momnet::LayerNorm::weight: this layer has elementwise_affine = false");
    return weight_;
  }
  Parameter<T>& bias() {
    if (!has_bias()) {
      throw std::logic_error(std::string("momnet::LayerNorm::bias: this layer has ") +
                             (options_.elementwise_affine ? "bias = false" : "elementwise_affine = false"));
    }
    return bias_;
  }

 private:
  static Shape last_axis(Eigen::Index size) {
    if (size <= 0) {
      throw std::invalid_argument("momnet::LayerNorm: normalized_size must be positive, got " + std::to_string(size));
    }
    return Shape{size};
  }
  static Shape checked_shape(const Shape& shape) {
    bool positive = shape.rank() >= 1;
    for (int i = 0; positive && i < shape.rank(); ++i) positive = shape.dim(i) > 0;
    if (!positive) {
      throw std::invalid_argument("momnet::LayerNorm: normalized_shape must have at least one dimension, all "
                                  "positive, got " + shape.to_string());
    }
    return shape;
  }
  static LayerNormOptions checked_options(const LayerNormOptions& options) {
    if (!(is_finite_bits(options.eps) && options.eps >= 0.0)) {
      throw std::invalid_argument("momnet::LayerNorm: eps must be finite and >= 0, got " +
                                  precise_string(options.eps));
    }
    return options;
  }
  // normalized_shape filled with `fill`, or an empty parameter when absent.
  Parameter<T> parameter_if(bool present, int fill, const char* name) const {
    if (!present) return Parameter<T>();
    Parameter<T> p(normalized_shape_, name);
    p.array().setConstant(static_cast<T>(fill));
    return p;
  }

  Shape normalized_shape_;
  LayerNormOptions options_;
  Parameter<T> weight_, bias_;
};

}  // namespace momnet
