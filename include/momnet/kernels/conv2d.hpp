// The plain kernels behind conv2d() (ops/conv2d.hpp): a 2-D cross-correlation
// over NCHW storage with stride, zero padding, dilation and groups, as
// torch.nn.functional.conv2d computes it. No tape, no exceptions: the
// operation checks the geometry first.
//
// Method: im2col + GEMM, one sample at a time. A sample's input is unrolled
// into `col`, a (C kh kw) x (H' W') row-major matrix whose row (c, i, j) holds
// the input pixel each output pixel sees through kernel tap (i, j) of channel
// c (zero where that tap falls in the padding). Group g's output is then the
// GEMM W_g [C_out/g, C_in/g kh kw] x col_g [C_in/g kh kw, H' W'], written in
// place in the sample's [C_out, H', W'] block. The backward takes
// gW_g += gY_g col_g^T (col recomputed from the input: only x and the weight
// are kept, as PyTorch keeps them) and gcol_g = W_g^T gY_g, folded back into
// the input's gradient by col2im (the adjoint of im2col: a sum over the taps).
// Large images are unrolled a band of output rows at a time (see
// conv2d_chunk_rows), which bounds the scratch memory.
//
// Why this and not Eigen's unsupported Tensor convolve(): that is a direct
// convolution whose channel sum is no GEMM and which has no stride. Measured
// on the benchmark's shape (3x3, 32 -> 32 channels, 28x28, batch 128, float,
// one thread, benchmarks/conv2d_throughput.cpp) it ran at about 2 GFLOP/s;
// im2col + GEMM runs forward and backward at about 80 GFLOP/s, where Eigen's
// GEMM itself reached 100 (the convolution's own shapes) to 120 (square).
// Folding several samples into one wider GEMM was not done: the product's
// columns would then interleave samples, which NCHW does not store
// contiguously (a transposing copy), and a GEMM of H' W' = 784 columns
// already runs at Eigen's rate for those shapes; a measured 32 x 288 x
// (128 * 784) product was slower than 128 of 784 columns.
//
// A 1x1 kernel with stride 1 and no padding needs no unrolling: col is the
// input itself, and the input's gradient is a GEMM added straight into it.
//
// Determinism: every loop runs in a fixed order, per sample, band and group;
// the GEMMs go through Eigen on Unaligned maps whose offsets depend only on
// the shapes, so the same call gives the same bits.
#pragma once

#include <algorithm>
#include <cstring>

#include <Eigen/Core>

#include "momnet/views.hpp"

namespace momnet::kernels {

// The sizes of one convolution. Output sizes follow PyTorch:
// H' = floor((H + 2 pad_h - dilation_h (kernel_h - 1) - 1) / stride_h) + 1.
struct Conv2dGeometry {
  Eigen::Index batch = 0, in_channels = 0, height = 0, width = 0;
  Eigen::Index out_channels = 0, kernel_h = 0, kernel_w = 0;
  Eigen::Index stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  Eigen::Index groups = 1;
  Eigen::Index out_h = 0, out_w = 0;

  Eigen::Index group_in() const noexcept { return in_channels / groups; }
  Eigen::Index group_out() const noexcept { return out_channels / groups; }
  Eigen::Index taps() const noexcept { return kernel_h * kernel_w; }
  Eigen::Index in_pixels() const noexcept { return height * width; }
  Eigen::Index out_pixels() const noexcept { return out_h * out_w; }
  // Rows of a group's unrolled input (= columns of its weight matrix).
  Eigen::Index group_col_rows() const noexcept { return group_in() * taps(); }
  Eigen::Index weight_size() const noexcept { return out_channels * group_col_rows(); }
  Eigen::Index input_size() const noexcept { return batch * in_channels * in_pixels(); }
  Eigen::Index output_size() const noexcept { return batch * out_channels * out_pixels(); }
  // col would equal the input: 1x1 kernel, stride 1, no padding.
  bool unrolled_is_input() const noexcept {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
  }
};

// floor((in + 2 pad - dilation (kernel - 1) - 1) / stride) + 1, or 0 when
// the dilated kernel is larger than the padded input.
inline Eigen::Index conv2d_output_size(Eigen::Index in, Eigen::Index kernel, Eigen::Index stride,
                                       Eigen::Index pad, Eigen::Index dilation) noexcept {
  const Eigen::Index span = in + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

namespace conv2d_detail {

inline Eigen::Index floor_div(Eigen::Index a, Eigen::Index b) noexcept {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// The output columns [first, last) whose input column ow * stride + offset
// lies in [0, width).
inline void valid_range(Eigen::Index offset, Eigen::Index stride, Eigen::Index width, Eigen::Index out,
                        Eigen::Index& first, Eigen::Index& last) noexcept {
  first = std::max<Eigen::Index>(0, floor_div(-offset + stride - 1, stride));
  last = std::min<Eigen::Index>(out, floor_div(width - 1 - offset, stride) + 1);
  if (last < first) last = first;
}

template <class T>
using ConstRun = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;

}  // namespace conv2d_detail

// Stride 1 and an output as wide as the input (2 pad_w = dilation_w (kW - 1),
// the "same" convolutions of a ResNet): a tap then reads its channel shifted
// by a constant offset, so the valid part of its unrolled row is one
// contiguous run of the input, except for the columns that fall into the
// left and right padding. im2col copies the run whole and zeroes those
// columns after; col2im zeroes them in gcol first and adds the run whole.
// Either way each element sees the same operations as on the general path.
inline bool conv2d_rows_contiguous(const Conv2dGeometry& g) noexcept {
  return g.stride_h == 1 && g.stride_w == 1 && g.out_w == g.width;
}

// Output rows [oh_begin, oh_end) of one sample unrolled: x is [C, H, W], col
// [C kh kw, (oh_end - oh_begin) W'].
template <class T>
void im2col(const Conv2dGeometry& g, const T* x, Eigen::Index oh_begin, Eigen::Index oh_end, T* col) {
  using conv2d_detail::valid_range;
  const Eigen::Index H = g.height, W = g.width, OW = g.out_w, columns = (oh_end - oh_begin) * OW;
  const bool contiguous = conv2d_rows_contiguous(g);
  for (Eigen::Index c = 0; c < g.in_channels; ++c) {
    const T* xc = x + c * H * W;
    for (Eigen::Index i = 0; i < g.kernel_h; ++i) {
      for (Eigen::Index j = 0; j < g.kernel_w; ++j) {
        T* row = col + ((c * g.kernel_h + i) * g.kernel_w + j) * columns;
        const Eigen::Index offset_h = i * g.dilation_h - g.pad_h, offset_w = j * g.dilation_w - g.pad_w;
        Eigen::Index first = 0, last = 0;
        valid_range(offset_w, g.stride_w, W, OW, first, last);
        if (contiguous) {
          // Output rows [lo, hi) read inside the input.
          Eigen::Index lo = 0, hi = 0;
          valid_range(offset_h, 1, H, g.out_h, lo, hi);
          lo = std::max(lo, oh_begin);
          hi = std::max(lo, std::min(hi, oh_end));
          if (last <= first) lo = hi = oh_begin;
          std::fill(row, row + (lo - oh_begin) * OW, T(0));
          std::fill(row + (hi - oh_begin) * OW, row + columns, T(0));
          if (hi == lo) continue;
          T* dst = row + (lo - oh_begin) * OW;
          // Offsets added before forming the pointer: offset_w may be negative.
          const T* src = xc + ((lo + offset_h) * W + offset_w + first);
          const Eigen::Index end = (hi - lo - 1) * OW + last;
          std::memcpy(dst + first, src, static_cast<std::size_t>(end - first) * sizeof(T));
          for (Eigen::Index r = 0; r < hi - lo; ++r) {
            std::fill(dst + r * OW, dst + r * OW + first, T(0));
            std::fill(dst + r * OW + last, dst + (r + 1) * OW, T(0));
          }
          continue;
        }
        for (Eigen::Index oh = oh_begin; oh < oh_end; ++oh) {
          T* r = row + (oh - oh_begin) * OW;
          const Eigen::Index ih = oh * g.stride_h + offset_h;
          if (ih < 0 || ih >= H) {
            std::fill(r, r + OW, T(0));
            continue;
          }
          std::fill(r, r + first, T(0));
          if (last > first) {
            const T* src = xc + (ih * W + offset_w + first * g.stride_w);  // input column of output column first
            if (g.stride_w == 1) {
              std::memcpy(r + first, src, static_cast<std::size_t>(last - first) * sizeof(T));
            } else {
              for (Eigen::Index ow = first; ow < last; ++ow) r[ow] = src[(ow - first) * g.stride_w];
            }
          }
          std::fill(r + last, r + OW, T(0));
        }
      }
    }
  }
}

// gx += col2im(gcol) for output rows [oh_begin, oh_end) of one sample: the
// adjoint of im2col, each tap's contribution added in the fixed order
// (c, i, j, oh, ow). gcol is clobbered (its padding columns zeroed).
template <class T>
void col2im_add(const Conv2dGeometry& g, T* gcol, Eigen::Index oh_begin, Eigen::Index oh_end, T* gx) {
  using conv2d_detail::valid_range;
  const Eigen::Index H = g.height, W = g.width, OW = g.out_w, columns = (oh_end - oh_begin) * OW;
  const bool contiguous = conv2d_rows_contiguous(g);
  for (Eigen::Index c = 0; c < g.in_channels; ++c) {
    T* gxc = gx + c * H * W;
    for (Eigen::Index i = 0; i < g.kernel_h; ++i) {
      for (Eigen::Index j = 0; j < g.kernel_w; ++j) {
        T* row = gcol + ((c * g.kernel_h + i) * g.kernel_w + j) * columns;
        const Eigen::Index offset_h = i * g.dilation_h - g.pad_h, offset_w = j * g.dilation_w - g.pad_w;
        Eigen::Index first = 0, last = 0;
        valid_range(offset_w, g.stride_w, W, OW, first, last);
        if (last <= first) continue;
        if (contiguous) {
          Eigen::Index lo = 0, hi = 0;
          valid_range(offset_h, 1, H, g.out_h, lo, hi);
          lo = std::max(lo, oh_begin);
          hi = std::min(hi, oh_end);
          if (hi <= lo) continue;
          T* src = row + (lo - oh_begin) * OW;
          for (Eigen::Index r = 0; r < hi - lo; ++r) {
            std::fill(src + r * OW, src + r * OW + first, T(0));
            std::fill(src + r * OW + last, src + (r + 1) * OW, T(0));
          }
          T* dst = gxc + ((lo + offset_h) * W + offset_w + first);
          const Eigen::Index count = (hi - lo - 1) * OW + last - first;
          for (Eigen::Index k = 0; k < count; ++k) dst[k] += src[first + k];
          continue;
        }
        for (Eigen::Index oh = oh_begin; oh < oh_end; ++oh) {
          const Eigen::Index ih = oh * g.stride_h + offset_h;
          if (ih < 0 || ih >= H) continue;
          const T* r = row + (oh - oh_begin) * OW + first;
          T* dst = gxc + (ih * W + offset_w + first * g.stride_w);
          // Plain loops: GCC vectorises them; an Eigen map per short run costs more.
          if (g.stride_w == 1) {
            for (Eigen::Index k = 0; k < last - first; ++k) dst[k] += r[k];
          } else {
            for (Eigen::Index k = 0; k < last - first; ++k) dst[k * g.stride_w] += r[k];
          }
        }
      }
    }
  }
}

// Output rows unrolled at a time: as many as keep the unrolled block within
// conv2d_chunk_bytes, spread evenly (at least one row). This bounds the
// scratch memory of large images (a whole 56x56 sample of 64 channels unrolls
// to 7 MB in float); measured on 3x3 convolutions of 32 to 128 channels at
// 28x28 and 56x56, chunks of 512 KiB to a whole sample ran at the same speed
// within noise, while chunks of one or two output rows were a quarter slower
// (narrower GEMMs). A function of the shapes only, so the same call always
// takes the same path.
constexpr std::size_t conv2d_chunk_bytes = 1024 * 1024;

template <class T>
Eigen::Index conv2d_chunk_rows(const Conv2dGeometry& g) noexcept {
  if (g.unrolled_is_input() || g.out_h == 0) return g.out_h;
  const Eigen::Index per_row = g.in_channels * g.taps() * g.out_w;
  const Eigen::Index target = static_cast<Eigen::Index>(conv2d_chunk_bytes / sizeof(T));
  const Eigen::Index rows = std::min(g.out_h, std::max<Eigen::Index>(1, target / std::max<Eigen::Index>(1, per_row)));
  const Eigen::Index chunks = (g.out_h + rows - 1) / rows;
  return (g.out_h + chunks - 1) / chunks;
}

// Scratch values conv2d_forward and conv2d_backward need.
template <class T>
Eigen::Index conv2d_scratch_size(const Conv2dGeometry& g) noexcept {
  return g.unrolled_is_input() ? 0 : g.in_channels * g.taps() * conv2d_chunk_rows<T>(g) * g.out_w;
}

namespace conv2d_detail {

// Row-major matrices at any offset and row stride.
template <class T>
using Block = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstBlock = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
ConstBlock<T> block(const T* p, Eigen::Index rows, Eigen::Index cols, Eigen::Index stride) {
  return ConstBlock<T>(p, rows, cols, Eigen::OuterStride<>(stride));
}
template <class T>
Block<T> block(T* p, Eigen::Index rows, Eigen::Index cols, Eigen::Index stride) {
  return Block<T>(p, rows, cols, Eigen::OuterStride<>(stride));
}

}  // namespace conv2d_detail

// y = conv2d(x, weight) + bias: x [N, C, H, W], weight [C_out, C/groups, kh,
// kw], bias [C_out] or nullptr, y [N, C_out, H', W']; `scratch` holds
// conv2d_scratch_size<T>(g) values.
template <class T>
void conv2d_forward(const Conv2dGeometry& g, const T* x, const T* weight, const T* bias, T* y, T* scratch) {
  using conv2d_detail::block;
  const Eigen::Index P = g.out_pixels(), Kg = g.group_out(), R = g.group_col_rows();
  const Eigen::Index x_sample = g.in_channels * g.in_pixels(), y_sample = g.out_channels * P;
  const bool direct = g.unrolled_is_input();
  const Eigen::Index chunk = conv2d_chunk_rows<T>(g);
  for (Eigen::Index n = 0; n < g.batch; ++n) {
    const T* xn = x + n * x_sample;
    T* yn = y + n * y_sample;
    if (bias != nullptr) {
      for (Eigen::Index k = 0; k < g.out_channels; ++k) std::fill(yn + k * P, yn + (k + 1) * P, bias[k]);
    }
    for (Eigen::Index oh = 0; oh < g.out_h; oh += chunk) {
      const Eigen::Index oh_end = std::min(oh + chunk, g.out_h), columns = (oh_end - oh) * g.out_w;
      if (!direct) im2col(g, xn, oh, oh_end, scratch);
      const T* col = direct ? xn : scratch;
      // Y_g = W_g col_g (+ the bias already there): each (chunk, group) block
      // of the output is written once.
      for (Eigen::Index group = 0; group < g.groups; ++group) {
        auto out = block(yn + group * Kg * P + oh * g.out_w, Kg, columns, P);
        auto product = block(weight + group * Kg * R, Kg, R, R) * block(col + group * R * columns, R, columns, columns);
        if (bias != nullptr) {
          out.noalias() += product;
        } else {
          out.noalias() = product;
        }
      }
    }
  }
}

// The reverse rule of conv2d_forward given gy = d(loss)/dy: adds into gx,
// gweight and gbias, each skipped when null. `scratch` holds
// conv2d_scratch_size<T>(g) values.
template <class T>
void conv2d_backward(const Conv2dGeometry& g, const T* x, const T* weight, const T* gy, T* gx, T* gweight,
                     T* gbias, T* scratch) {
  using conv2d_detail::block;
  const Eigen::Index P = g.out_pixels(), Kg = g.group_out(), R = g.group_col_rows();
  const Eigen::Index x_sample = g.in_channels * g.in_pixels(), y_sample = g.out_channels * P;
  const bool direct = g.unrolled_is_input();
  const Eigen::Index chunk = conv2d_chunk_rows<T>(g);
  for (Eigen::Index n = 0; n < g.batch; ++n) {
    const T* xn = x + n * x_sample;
    const T* gyn = gy + n * y_sample;
    if (gbias != nullptr && P > 0) {
      for (Eigen::Index k = 0; k < g.out_channels; ++k) {
        gbias[k] += conv2d_detail::ConstRun<T>(gyn + k * P, P).sum();
      }
    }
    if (gweight == nullptr && gx == nullptr) continue;
    T* gxn = gx != nullptr ? gx + n * x_sample : nullptr;
    for (Eigen::Index oh = 0; oh < g.out_h; oh += chunk) {
      const Eigen::Index oh_end = std::min(oh + chunk, g.out_h), columns = (oh_end - oh) * g.out_w;
      const T* gy_chunk = gyn + oh * g.out_w;
      if (gweight != nullptr) {
        if (!direct) im2col(g, xn, oh, oh_end, scratch);
        const T* col = direct ? xn : scratch;
        for (Eigen::Index group = 0; group < g.groups; ++group) {  // gW_g += gY_g col_g^T
          block(gweight + group * Kg * R, Kg, R, R).noalias() +=
              block(gy_chunk + group * Kg * P, Kg, columns, P) *
              block(col + group * R * columns, R, columns, columns).transpose();
        }
      }
      if (gxn != nullptr) {
        // gcol_g = W_g^T gY_g, added straight into gx when col is the input itself.
        T* gcol = direct ? gxn : scratch;
        for (Eigen::Index group = 0; group < g.groups; ++group) {
          auto product =
              block(weight + group * Kg * R, Kg, R, R).transpose() * block(gy_chunk + group * Kg * P, Kg, columns, P);
          auto out = block(gcol + group * R * columns, R, columns, columns);
          if (direct) {
            out.noalias() += product;
          } else {
            out.noalias() = product;
          }
        }
        if (!direct) col2im_add(g, scratch, oh, oh_end, gxn);
      }
    }
  }
}

}  // namespace momnet::kernels
