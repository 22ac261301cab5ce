// 2-D pooling of NCHW values with PyTorch's semantics (torch.nn.functional's
// max_pool2d, avg_pool2d, adaptive_avg_pool2d): input [N, C, H, W] or,
// unbatched, [C, H, W]; the output keeps the leading dimensions.
//
// Output length per spatial axis (kernels/pool2d.hpp, pool_output_size):
//   floor((in + 2 padding - dilation (kernel - 1) - 1) / stride) + 1,
// rounded up instead in ceil_mode, where a last window must start inside the
// input or its left padding. Rules, as PyTorch's: kernel >= 1, stride >= 1
// (stride (0, 0) means the kernel), 0 <= padding <= kernel / 2, dilation >= 1
// (average pooling has none), and at least one window per axis.
//
// max_pool2d takes the maximum over the taps inside the input (padding never
// wins; a window whose dilated taps all miss the input gives -inf, as in
// PyTorch). Its gradient goes to each window's maximum: the first one in
// scan order on a tie, the last NaN when there are NaNs (the output is then
// NaN). Its reverse rule finds the maxima again from the input and the
// output instead of saving indices, so the operation keeps nothing but its
// output.
//
// avg_pool2d divides each window's sum by the number of its taps inside the
// padded input (count_include_pad, the default; a ceil_mode window running
// past the padding is cut there), by the number inside the input, or by
// divisor_override when it is not 0 (PyTorch's None).
//
// adaptive_avg_pool2d accepts an output size of 0 (an empty value), as
// PyTorch does. Unlike PyTorch, 0 channels are accepted too (an empty value).
#pragma once

#include <limits>
#include <stdexcept>
#include <string>

#include "momnet/kernels/pool2d.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/size2.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct Pool2dOptions {
  Size2 kernel{0, 0};
  Size2 stride{0, 0};  // (0, 0): the kernel
  Size2 padding{0, 0};
  Size2 dilation{1, 1};  // max pooling only
  bool ceil_mode = false;
  bool count_include_pad = true;     // average pooling only
  Eigen::Index divisor_override = 0;  // average pooling only; 0: none

  Pool2dOptions() = default;
  explicit Pool2dOptions(Size2 kernel_size) : kernel(kernel_size) {}
};

namespace detail {

// The leading dimensions and the spatial size of an NCHW or CHW input (a
// batch or channels of 0 give an empty output; an empty plane is refused).
inline kernels::Pool2dGeometry pool_planes(const char* operation, const Shape& shape) {
  if (shape.rank() != 3 && shape.rank() != 4) {
    throw_shape(operation, shape, "expected an input of rank 4 [N, C, H, W] or 3 [C, H, W]");
  }
  kernels::Pool2dGeometry g;
  g.planes = 1;
  for (int k = 0; k + 2 < shape.rank(); ++k) g.planes *= shape.dim(k);
  g.h.in = shape.dim(-2);
  g.w.in = shape.dim(-1);
  if (g.h.in < 1 || g.w.in < 1) throw_shape(operation, shape, "the input's height and width must be positive");
  return g;
}

inline Shape pooled_shape(const Shape& shape, Eigen::Index out_h, Eigen::Index out_w) {
  return shape.with_dim(-2, out_h).with_dim(-1, out_w);
}

// Throws, naming `operation`, if `o` breaks one of the rules in the header
// comment (for average pooling when `average`).
inline void check_pool_options(const char* operation, const Pool2dOptions& o, bool average) {
  const std::string name(operation);
  // Larger sizes than any value's dimension are refused so that the window
  // arithmetic cannot overflow.
  const std::string range = "[1, " + std::to_string(Shape::max_size) + "]";
  const auto in_range = [](const Size2& s) {
    return s[0] >= 1 && s[1] >= 1 && s[0] <= Shape::max_size && s[1] <= Shape::max_size;
  };
  if (!in_range(o.kernel)) {
    throw std::invalid_argument(name + ": kernel must lie in " + range + ", got " + size2_string(o.kernel));
  }
  const bool default_stride = o.stride[0] == 0 && o.stride[1] == 0;
  if (!default_stride && !in_range(o.stride)) {
    throw std::invalid_argument(name + ": stride must lie in " + range + " (or be (0, 0): the kernel), got " +
                                size2_string(o.stride));
  }
  if (average && (o.dilation[0] != 1 || o.dilation[1] != 1)) {
    throw std::invalid_argument(name + ": average pooling has no dilation (as in PyTorch), got " +
                                size2_string(o.dilation));
  }
  if (!in_range(o.dilation)) {
    throw std::invalid_argument(name + ": dilation must lie in " + range + ", got " + size2_string(o.dilation));
  }
  if (o.padding[0] < 0 || o.padding[1] < 0 || o.padding[0] > o.kernel[0] / 2 || o.padding[1] > o.kernel[1] / 2) {
    throw std::invalid_argument(name + ": padding must lie between 0 and half the kernel, got padding " +
                                size2_string(o.padding) + " for kernel " + size2_string(o.kernel));
  }
}

// Checks `o` for `operation` and returns the geometry of pooling an input of
// `shape` with them.
inline kernels::Pool2dGeometry pool_geometry(const char* operation, const Shape& shape, const Pool2dOptions& o,
                                             bool average) {
  check_pool_options(operation, o, average);
  kernels::Pool2dGeometry g = pool_planes(operation, shape);
  const bool default_stride = o.stride[0] == 0 && o.stride[1] == 0;
  const Size2 stride = default_stride ? o.kernel : o.stride;
  kernels::PoolAxis* axes[2] = {&g.h, &g.w};
  for (int k = 0; k < 2; ++k) {
    kernels::PoolAxis& a = *axes[k];
    a.kernel = o.kernel[k];
    a.stride = stride[k];
    a.padding = o.padding[k];
    a.dilation = o.dilation[k];
    a.out = kernels::pool_output_size(a.in, a.kernel, a.stride, a.padding, a.dilation, o.ceil_mode);
  }
  if (g.h.out < 1 || g.w.out < 1) {
    throw std::invalid_argument(std::string(operation) + ": the output would be empty: input " + shape.to_string() + " with kernel " +
                                size2_string(o.kernel) + ", stride " + size2_string(stride) + ", padding " +
                                size2_string(o.padding) + ", dilation " + size2_string(o.dilation) +
                                (o.ceil_mode ? ", ceil_mode" : "") + " gives " + std::to_string(g.h.out) + " x " +
                                std::to_string(g.w.out));
  }
  return g;
}

}  // namespace detail

// Max pooling over windows of kernel[0] x kernel[1] taps, spaced by dilation.
template <class T>
Var<T> max_pool2d(const Var<T>& x, const Pool2dOptions& options) {
  const char* name = "momnet::max_pool2d";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const kernels::Pool2dGeometry g = detail::pool_geometry(name, shape, options, false);
  const Shape out_shape = detail::pooled_shape(shape, g.h.out, g.w.out);
  T* y = tape.allocate(out_shape.size());
  const T* px = x.data();
  // An empty value skips the kernels: with a batch of 0, H * W may not even fit an index.
  const bool empty = out_shape.size() == 0;
  if (!empty) kernels::max_pool2d(px, y, g);
  return tape.record_op({x}, out_shape, y, [=](Gradients<T>& grads) {
    T* gx = grads.input(0);
    if (gx != nullptr && !empty) kernels::max_pool2d_backward(grads.output(0), px, y, gx, g);
  });
}

// PyTorch's argument order: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).
template <class T>
Var<T> max_pool2d(const Var<T>& x, Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0},
                  Size2 dilation = {1, 1}, bool ceil_mode = false) {
  Pool2dOptions options(kernel);
  options.stride = stride;
  options.padding = padding;
  options.dilation = dilation;
  options.ceil_mode = ceil_mode;
  return max_pool2d(x, options);
}

// Average pooling; options.dilation must be (1, 1).
template <class T>
Var<T> avg_pool2d(const Var<T>& x, const Pool2dOptions& options) {
  const char* name = "momnet::avg_pool2d";
  Tape<T>& tape = detail::common_tape(name, x);
  const Shape shape = x.shape();
  const kernels::Pool2dGeometry g = detail::pool_geometry(name, shape, options, true);
  const Shape out_shape = detail::pooled_shape(shape, g.h.out, g.w.out);
  T* y = tape.allocate(out_shape.size());
  const bool include_pad = options.count_include_pad;
  const Eigen::Index divisor = options.divisor_override;
  const bool empty = out_shape.size() == 0;
  if (!empty) kernels::avg_pool2d(x.data(), y, g, include_pad, divisor);
  return tape.record_op({x}, out_shape, y, [=](Gradients<T>& grads) {
    T* gx = grads.input(0);
    if (gx != nullptr && !empty) kernels::avg_pool2d_backward(grads.output(0), gx, g, include_pad, divisor);
  });
}

// PyTorch's argument order: F.avg_pool2d(x, kernel, stride, padding,
// ceil_mode, count_include_pad, divisor_override); divisor_override 0: none.
template <class T>
Var<T> avg_pool2d(const Var<T>& x, Size2 kernel, Size2 stride = {0, 0}, Size2 padding = {0, 0},
                  bool ceil_mode = false, bool count_include_pad = true, Eigen::Index divisor_override = 0) {
  Pool2dOptions options(kernel);
  options.stride = stride;
  options.padding = padding;
  options.ceil_mode = ceil_mode;
  options.count_include_pad = count_include_pad;
  options.divisor_override = divisor_override;
  return avg_pool2d(x, options);
}

namespace detail {

// As PyTorch, an output size of 0 gives an empty output.
inline void check_adaptive_output(const char* operation, Size2 output) {
  if (output[0] < 0 || output[1] < 0 || output[0] > Shape::max_size || output[1] > Shape::max_size) {
    throw std::invalid_argument(std::string(operation) + ": the output size must lie in [0, " +
                                std::to_string(Shape::max_size) + "], got " + size2_string(output));
  }
}

template <class T>
Var<T> adaptive_average(const char* operation, const Var<T>& x, Size2 output) {
  const std::string name(operation);
  Tape<T>& tape = common_tape(operation, x);
  const Shape shape = x.shape();
  kernels::Pool2dGeometry g = pool_planes(operation, shape);
  check_adaptive_output(operation, output);
  // The window bounds multiply an output index by the input length.
  constexpr Eigen::Index largest = std::numeric_limits<Eigen::Index>::max();
  if (output[0] > largest / (g.h.in + 1) || output[1] > largest / (g.w.in + 1)) {
    throw std::invalid_argument(name + ": the output size " + size2_string(output) + " is too large for input " +
                                shape.to_string());
  }
  g.h.out = output[0];
  g.w.out = output[1];
  const Shape out_shape = pooled_shape(shape, g.h.out, g.w.out);
  T* y = tape.allocate(out_shape.size());
  const bool empty = out_shape.size() == 0;
  if (!empty) kernels::adaptive_avg_pool2d(x.data(), y, g);
  return tape.record_op({x}, out_shape, y, [=](Gradients<T>& grads) {
    T* gx = grads.input(0);
    if (gx != nullptr && !empty) kernels::adaptive_avg_pool2d_backward(grads.output(0), gx, g);
  });
}

}  // namespace detail

// The mean over output[0] x output[1] windows that tile the input:
// along an axis, window o covers [floor(o in / out), ceil((o + 1) in / out)).
template <class T>
Var<T> adaptive_avg_pool2d(const Var<T>& x, Size2 output) {
  return detail::adaptive_average("momnet::adaptive_avg_pool2d", x, output);
}

// The mean of each plane: [N, C, H, W] -> [N, C, 1, 1] ([C, H, W] -> [C, 1, 1]),
// adaptive_avg_pool2d(x, {1, 1}).
template <class T>
Var<T> global_avg_pool2d(const Var<T>& x) {
  return detail::adaptive_average("momnet::global_avg_pool2d", x, Size2{1, 1});
}

}  // namespace momnet
