// A 2-D convolution layer with torch.nn.Conv2d's layout, names and default
// initialisation: weight [out, in / groups, kH, kW] and bias [out], both
// uniform in +-1/sqrt(fan_in) with fan_in = in / groups * kH * kW (PyTorch's
// kaiming_uniform_(a = sqrt(5)) reduces to that bound: init::pytorch_default).
// torchvision's ResNet re-initialises its convolutions with
// init::kaiming_normal_fan_out.
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/init.hpp"
#include "momnet/ops/conv2d.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class Conv2d {
 public:
  using Scalar = T;

  Conv2d(Eigen::Index in_channels, Eigen::Index out_channels, Size2 kernel_size, Rng& rng,
         Conv2dOptions options = {})
      : weight_(checked_shape(in_channels, out_channels, kernel_size, options), "weight"),
        bias_(options.bias ? Parameter<T>(Shape{out_channels}, "bias") : Parameter<T>()),
        in_channels_(in_channels), options_(options) {
    init::pytorch_default(weight_, options_.bias ? &bias_ : nullptr, rng);
  }
  // A square kernel.
  Conv2d(Eigen::Index in_channels, Eigen::Index out_channels, Eigen::Index kernel_size, Rng& rng,
         Conv2dOptions options = {})
      : Conv2d(in_channels, out_channels, Size2{kernel_size, kernel_size}, rng, options) {}

  // x [N, in, H, W] (or [in, H, W]) -> [N, out, H', W'].
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    if (options_.bias) return conv2d(x, tape.param(weight_), tape.param(bias_), options_);
    return conv2d(x, tape.param(weight_), options_);
  }

  // Names as nn.Conv2d: `weight`, and `bias` when there is one.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("weight", weight_);
    if (options_.bias) visit.parameter("bias", bias_);
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    visit(weight_);
    if (options_.bias) visit(bias_);
  }

  Eigen::Index in_channels() const noexcept { return in_channels_; }
  Eigen::Index out_channels() const noexcept { return weight_.shape().dim(0); }
  Size2 kernel_size() const noexcept { return Size2{weight_.shape().dim(2), weight_.shape().dim(3)}; }
  const Conv2dOptions& options() const noexcept { return options_; }
  Size2 stride() const noexcept { return options_.stride; }
  Size2 padding() const noexcept { return options_.padding; }
  Size2 dilation() const noexcept { return options_.dilation; }
  Eigen::Index groups() const noexcept { return options_.groups; }
  bool has_bias() const noexcept { return options_.bias; }
  Parameter<T>& weight() noexcept { return weight_; }
  Parameter<T>& bias() {
    if (!options_.bias) throw std::logic_error("momnet::Conv2d::bias: this layer has no bias");
    return bias_;
  }

 private:
  static Shape checked_shape(Eigen::Index in_channels, Eigen::Index out_channels, Size2 kernel,
                             const Conv2dOptions& options) {
    const char* name = "momnet::Conv2d";
    if (in_channels <= 0 || out_channels <= 0) {
      throw std::invalid_argument(std::string(name) + ": channels must be positive, got in_channels=" +
                                  std::to_string(in_channels) + ", out_channels=" + std::to_string(out_channels));
    }
    if (kernel[0] <= 0 || kernel[1] <= 0) {
      throw std::invalid_argument(std::string(name) + ": kernel_size must be positive, got " +
                                  detail::size2_string(kernel));
    }
    detail::check_conv2d_options(name, options);
    if (in_channels % options.groups != 0 || out_channels % options.groups != 0) {
      throw std::invalid_argument(std::string(name) + ": in_channels=" + std::to_string(in_channels) +
                                  " and out_channels=" + std::to_string(out_channels) +
                                  " must both be divisible by groups=" + std::to_string(options.groups));
    }
    return Shape{out_channels, in_channels / options.groups, kernel[0], kernel[1]};
  }

  Parameter<T> weight_;
  Parameter<T> bias_;
  Eigen::Index in_channels_;
  Conv2dOptions options_;
};

}  // namespace momnet
