// Pooling layers with PyTorch's class names and semantics (ops/pool2d.hpp):
// MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, and GlobalAvgPool2d (PyTorch
// writes AdaptiveAvgPool2d((1, 1)), as torchvision's ResNet `avgpool` does;
// both work). No parameters and no state: they add no name to a state_dict.
// The options are checked when the layer is built; the input at each call.
#pragma once

#include "momnet/ops/pool2d.hpp"
#include "momnet/size2.hpp"
#include "momnet/tape.hpp"

namespace momnet {
template <class T>
class MaxPool2d {
 public:
  using Scalar = T;
  explicit MaxPool2d(const Pool2dOptions& options) : options_(options) {
    detail::check_pool_options("momnet::MaxPool2d", options_, false);
  }
  // nn.MaxPool2d(kernel_size, stride = kernel_size, padding, dilation, ceil_mode).
  explicit MaxPool2d(Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0}, Size2 dilation = {1, 1},
                     bool ceil_mode = false)
      : MaxPool2d(options_of(kernel, stride, padding, dilation, ceil_mode)) {}

  Var<T> forward(Tape<T>&, const Var<T>& x) { return max_pool2d(x, options_); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
  const Pool2dOptions& options() const noexcept { return options_; }

 private:
  static Pool2dOptions options_of(Size2 kernel, Size2 stride, Size2 padding, Size2 dilation, bool ceil_mode) {
    Pool2dOptions o(kernel);
    o.stride = stride;
    o.padding = padding;
    o.dilation = dilation;
    o.ceil_mode = ceil_mode;
    return o;
  }
  Pool2dOptions options_;
};

template <class T>
class AvgPool2d {
 public:
  using Scalar = T;
  explicit AvgPool2d(const Pool2dOptions& options) : options_(options) {
    detail::check_pool_options("momnet::AvgPool2d", options_, true);
  }
  // nn.AvgPool2d(kernel_size, stride = kernel_size, padding, ceil_mode,
  // count_include_pad, divisor_override); divisor_override 0: none.
  explicit AvgPool2d(Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0}, bool ceil_mode = false,
                     bool count_include_pad = true, Eigen::Index divisor_override = 0)
      : AvgPool2d(options_of(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)) {}

  Var<T> forward(Tape<T>&, const Var<T>& x) { return avg_pool2d(x, options_); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
  const Pool2dOptions& options() const noexcept { return options_; }

 private:
  static Pool2dOptions options_of(Size2 kernel, Size2 stride, Size2 padding, bool ceil_mode, bool count_include_pad,
                                  Eigen::Index divisor_override) {
    Pool2dOptions o(kernel);
    o.stride = stride;
    o.padding = padding;
    o.ceil_mode = ceil_mode;
    o.count_include_pad = count_include_pad;
    o.divisor_override = divisor_override;
    return o;
  }
  Pool2dOptions options_;
};

template <class T>
class AdaptiveAvgPool2d {
 public:
  using Scalar = T;
  explicit AdaptiveAvgPool2d(Size2 output_size) : output_size_(output_size) {
    detail::check_adaptive_output("momnet::AdaptiveAvgPool2d", output_size);
  }
  Var<T> forward(Tape<T>&, const Var<T>& x) { return adaptive_avg_pool2d(x, output_size_); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
  Size2 output_size() const noexcept { return output_size_; }

 private:
  Size2 output_size_;
};

// [N, C, H, W] -> [N, C, 1, 1]: the mean of each plane.
template <class T>
class GlobalAvgPool2d {
 public:
  using Scalar = T;
  Var<T> forward(Tape<T>&, const Var<T>& x) { return global_avg_pool2d(x); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
};

}  // namespace momnet
