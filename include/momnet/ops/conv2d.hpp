// 2-D convolution (cross-correlation, as in every deep-learning library) over
// NCHW values, with torch.nn.functional.conv2d's semantics: stride, zero
// padding on both sides, dilation and groups (depthwise when groups equals
// the input channels). The kernels, and why im2col + GEMM, are in
// kernels/conv2d.hpp.
//
// The node keeps only what PyTorch's autograd keeps: pointers to the input
// and the weight. Its reverse rule unrolls the input again for the weight's
// gradient rather than keeping the unrolled copy (kh kw times the input) on
// the tape for the life of the node; the unrolled buffers are pool scratch,
// released when the forward or the reverse rule returns.
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/kernels/conv2d.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/size2.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct Conv2dOptions {
  Size2 stride{1, 1};
  Size2 padding{0, 0};  // zero padding on both sides, as PyTorch's padding=(ph, pw)
  Size2 dilation{1, 1};
  Eigen::Index groups = 1;
  bool bias = true;  // read by the Conv2d layer; conv2d() takes the bias as an argument
};

namespace detail {

// Throws naming `name` if stride, padding, dilation or groups are out of range.
inline void check_conv2d_options(const char* name, const Conv2dOptions& o) {
  const std::string who(name);
  if (o.stride[0] < 1 || o.stride[1] < 1) {
    throw std::invalid_argument(who + ": stride must be positive, got " + size2_string(o.stride));
  }
  if (o.padding[0] < 0 || o.padding[1] < 0) {
    throw std::invalid_argument(who + ": padding must not be negative, got " + size2_string(o.padding));
  }
  if (o.dilation[0] < 1 || o.dilation[1] < 1) {
    throw std::invalid_argument(who + ": dilation must be at least 1, got " + size2_string(o.dilation));
  }
  if (o.groups < 1) throw std::invalid_argument(who + ": groups must be positive, got " + std::to_string(o.groups));
}

// The checked geometry of conv2d(x, weight, bias): x [N, C, H, W] (or [C, H,
// W]: `unbatched`), weight [C_out, C / groups, kh, kw], bias [C_out] when
// given. Throws std::invalid_argument naming `name` and the values.
inline kernels::Conv2dGeometry conv2d_geometry(const char* name, const Shape& sx, const Shape& sw,
                                               const Shape* sb, const Conv2dOptions& o, bool& unbatched) {
  const std::string who(name);
  check_conv2d_options(name, o);
  if (sx.rank() != 3 && sx.rank() != 4) {
    throw_shape(name, sx, "expects a 4-D input [N, C, H, W] or an unbatched 3-D input [C, H, W]");
  }
  if (sw.rank() != 4) throw_shape(name, sw, "the weight must be 4-D [C_out, C_in / groups, kH, kW]");
  if (sw.size() == 0) throw_shape(name, sw, "the weight must not have a zero dimension");
  unbatched = sx.rank() == 3;
  const int c_axis = unbatched ? 0 : 1;
  kernels::Conv2dGeometry g;
  g.batch = unbatched ? 1 : sx.dim(0);
  g.in_channels = sx.dim(c_axis);
  g.height = sx.dim(c_axis + 1);
  g.width = sx.dim(c_axis + 2);
  g.out_channels = sw.dim(0);
  g.kernel_h = sw.dim(2);
  g.kernel_w = sw.dim(3);
  g.stride_h = o.stride[0];
  g.stride_w = o.stride[1];
  g.pad_h = o.padding[0];
  g.pad_w = o.padding[1];
  g.dilation_h = o.dilation[0];
  g.dilation_w = o.dilation[1];
  g.groups = o.groups;
  const std::string groups = "groups=" + std::to_string(o.groups);
  if (g.out_channels % g.groups != 0) {
    throw std::invalid_argument(who + ": with " + groups + ", the weight's " + std::to_string(g.out_channels) +
                                " output channels (weight " + sw.to_string() + ") are not divisible by the groups");
  }
  if (g.in_channels % g.groups != 0) {
    throw std::invalid_argument(who + ": with " + groups + ", the input's " + std::to_string(g.in_channels) +
                                " channels (input " + sx.to_string() + ") are not divisible by the groups");
  }
  if (g.in_channels != sw.dim(1) * g.groups) {
    throw std::invalid_argument(who + ": the input " + sx.to_string() + " has " + std::to_string(g.in_channels) +
                                " channels, but the weight " + sw.to_string() + " with " + groups + " expects " +
                                std::to_string(sw.dim(1) * g.groups) + " (" + std::to_string(sw.dim(1)) + " x " +
                                std::to_string(g.groups) + ")");
  }
  if (g.height == 0 || g.width == 0) {
    throw_shape(name, sx, "the input's height and width must not be zero");
  }
  const Eigen::Index padded_h = g.height + 2 * g.pad_h, padded_w = g.width + 2 * g.pad_w;
  const Eigen::Index dilated_h = g.dilation_h * (g.kernel_h - 1) + 1, dilated_w = g.dilation_w * (g.kernel_w - 1) + 1;
  if (padded_h < dilated_h || padded_w < dilated_w) {
    throw std::invalid_argument(who + ": kernel size can't be greater than the padded input size (the output would "
                                "be empty): padded input " + std::to_string(padded_h) + "x" +
                                std::to_string(padded_w) + " per channel, dilated kernel " +
                                std::to_string(dilated_h) + "x" + std::to_string(dilated_w));
  }
  if (sb != nullptr && (sb->rank() != 1 || sb->dim(0) != g.out_channels)) {
    throw std::invalid_argument(who + ": the bias must be 1-D with the weight's " + std::to_string(g.out_channels) +
                                " output channels (weight " + sw.to_string() + "), got " + sb->to_string());
  }
  g.out_h = kernels::conv2d_output_size(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = kernels::conv2d_output_size(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  return g;
}

}  // namespace detail

// torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation,
// groups): x [N, C_in, H, W], weight [C_out, C_in / groups, kH, kW], bias
// [C_out] or an empty Var; the result is [N, C_out, H', W'] with
// H' = floor((H + 2 padding - dilation (kH - 1) - 1) / stride) + 1 (W' alike).
// An unbatched x [C_in, H, W] gives [C_out, H', W']; a batch of 0 gives an
// empty result. options.bias is not read here.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& weight, const Var<T>& bias, const Conv2dOptions& options = {}) {
  const char* name = "momnet::conv2d";
  Tape<T>& tape = detail::common_tape(name, x, weight);
  Shape bias_shape;
  if (bias.valid()) {
    detail::common_tape(name, x, bias);
    bias_shape = bias.shape();
  }
  bool unbatched = false;
  const kernels::Conv2dGeometry geometry =
      detail::conv2d_geometry(name, x.shape(), weight.shape(), bias.valid() ? &bias_shape : nullptr, options,
                              unbatched);
  const Shape out_shape = unbatched ? Shape{geometry.out_channels, geometry.out_h, geometry.out_w}
                                    : Shape{geometry.batch, geometry.out_channels, geometry.out_h, geometry.out_w};
  const Eigen::Index scratch_size = geometry.batch == 0 ? 0 : kernels::conv2d_scratch_size<T>(geometry);
  const T* px = x.data();
  const T* pw = weight.data();
  T* out = tape.allocate(out_shape.size());
  {
    const auto scratch = tape.scratch(scratch_size);
    kernels::conv2d_forward(geometry, px, pw, bias.valid() ? bias.data() : static_cast<const T*>(nullptr), out,
                            scratch.data());
  }
  return tape.record_op({x, weight, bias}, out_shape, out, [=](Gradients<T>& g) {
    T* gx = g.input(0);
    T* gw = g.input(1);
    T* gb = g.input(2);
    // The bias alone needs no unrolled input.
    const auto scratch = g.tape().scratch(gx != nullptr || gw != nullptr ? scratch_size : 0);
    kernels::conv2d_backward(geometry, px, pw, g.output(0), gx, gw, gb, scratch.data());
  });
}

// Without a bias.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& weight, const Conv2dOptions& options = {}) {
  return conv2d(x, weight, Var<T>(), options);
}

}  // namespace momnet
