// A dense layer y = x W^T + b with PyTorch's layout (W is [out, in]) and
// PyTorch's default initialisation: W and b uniform in +-1/sqrt(in).
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/init.hpp"
#include "momnet/ops/matmul.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class Linear {
 public:
  using Scalar = T;

  Linear(Eigen::Index in_features, Eigen::Index out_features, Rng& rng, bool with_bias = true,
         const std::string& name = "linear")
      : weight_(checked_shape(in_features, out_features), name + ".weight"),
        bias_(with_bias ? Parameter<T>(Shape{out_features}, name + ".bias") : Parameter<T>()),
        has_bias_(with_bias) {
    init::pytorch_linear(weight_, in_features, rng);
    if (has_bias_) init::pytorch_linear(bias_, in_features, rng);
  }

  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    if (has_bias_) return linear(x, tape.param(weight_), tape.param(bias_));
    return linear(x, tape.param(weight_));
  }

  // Names as PyTorch's nn.Linear: `weight`, and `bias` when there is one.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("weight", weight_);
    if (has_bias_) visit.parameter("bias", bias_);
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    visit(weight_);
    if (has_bias_) visit(bias_);
  }

  Eigen::Index in_features() const noexcept { return weight_.shape().dim(1); }
  Eigen::Index out_features() const noexcept { return weight_.shape().dim(0); }
  bool has_bias() const noexcept { return has_bias_; }
  Parameter<T>& weight() noexcept { return weight_; }
  Parameter<T>& bias() {
    if (!has_bias_) throw std::logic_error("momnet::Linear::bias: this layer has no bias");
    return bias_;
  }

 private:
  static Shape checked_shape(Eigen::Index in_features, Eigen::Index out_features) {
    if (in_features <= 0 || out_features <= 0) {
      throw std::invalid_argument("momnet::Linear: features must be positive, got in=" +
                                  std::to_string(in_features) + ", out=" + std::to_string(out_features));
    }
    return Shape{out_features, in_features};
  }

  Parameter<T> weight_;
  Parameter<T> bias_;
  bool has_bias_;
};

}  // namespace momnet
