// 2-D pooling over the planes of NCHW values, as plain kernels: no tape, raw
// pointers and a geometry. A value is read as `planes` (N * C) row-major
// planes of in.h x in.w; the output as planes of out.h x out.w. Windows follow
// PyTorch's CPU kernels:
//
//   max:      the taps begin = o * stride - padding + j * dilation (j < kernel)
//             that fall inside the input; padding never wins. The first
//             maximum in scan order wins a tie; a NaN wins over any number
//             and a later NaN over an earlier one (PyTorch's
//             `val > max || isnan(val)`).
//   average:  [o * stride - padding, + kernel) cut at in + padding (ceil_mode
//             may run past it), then clipped to the input for the sum; the
//             divisor is the cut window's size (count_include_pad), the
//             clipped one's, or divisor_override.
//   adaptive: [floor(o * in / out), ceil((o + 1) * in / out)).
//
// Plain loops in a fixed order: the same data gives the same bits on every
// call (the exact backward recomputes blocks and compares bits). NaN is read
// from the bits so that -ffast-math cannot fold the test away. Backward
// kernels ADD into the input gradient.
#pragma once

#include <algorithm>
#include <limits>

#include <Eigen/Core>

#include "momnet/fixed_point.hpp"

namespace momnet::kernels {

// One spatial axis of a pooling.
struct PoolAxis {
  Eigen::Index in = 0;   // input length
  Eigen::Index out = 0;  // output length
  Eigen::Index kernel = 1;
  Eigen::Index stride = 1;
  Eigen::Index padding = 0;
  Eigen::Index dilation = 1;
};

struct Pool2dGeometry {
  Eigen::Index planes = 0;  // N * C
  PoolAxis h, w;
};

// PyTorch's output length of a pooling along one axis, or 0 when not even one
// window fits. Expects kernel, stride, dilation >= 1 and 0 <= padding <=
// kernel / 2. In ceil_mode a last, partial window is kept if it starts inside
// the input or its left padding.
inline Eigen::Index pool_output_size(Eigen::Index in, Eigen::Index kernel, Eigen::Index stride, Eigen::Index padding,
                                     Eigen::Index dilation, bool ceil_mode) {
  // out = floor((in + 2 padding - dilation (kernel - 1) - 1 [+ stride - 1]) / stride) + 1,
  // with the product compared by division first: kernel and dilation may be huge.
  const Eigen::Index slack = in + 2 * padding - 1 + (ceil_mode ? stride - 1 : 0);
  if (slack < 0 || (kernel > 1 && dilation > slack / (kernel - 1))) return 0;
  Eigen::Index out = (slack - dilation * (kernel - 1)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= in + padding) --out;
  return out;
}

namespace detail {

// Input positions begin, begin + step, ... < end.
struct Taps {
  Eigen::Index begin;
  Eigen::Index end;
  Eigen::Index step;
};

// The taps of max-pool window o that lie inside the input (possibly none,
// when dilation skips over the whole input).
inline Taps max_taps(const PoolAxis& a, Eigen::Index o) {
  Eigen::Index begin = o * a.stride - a.padding;
  const Eigen::Index end = std::min(begin + a.dilation * (a.kernel - 1) + 1, a.in);
  if (begin < 0) begin += (-begin + a.dilation - 1) / a.dilation * a.dilation;
  return Taps{begin, end, a.dilation};
}

// The maximum over the taps, or -inf when there are none; a NaN tap gives
// the last NaN. Written as selects, which compile to a max instruction and a
// conditional move, not a branch: on real data the comparison is a coin toss
// that a branch predictor loses (a branching scan ran 3x slower).
template <class T>
T window_max(const T* plane, Eigen::Index width, const Taps& rows, const Taps& cols) {
  if (rows.begin >= rows.end || cols.begin >= cols.end) return -std::numeric_limits<T>::infinity();
  T value = plane[rows.begin * width + cols.begin];
  Eigen::Index nan_at = -1;
  for (Eigen::Index r = rows.begin; r < rows.end; r += rows.step) {
    for (Eigen::Index c = cols.begin; c < cols.end; c += cols.step) {
      const Eigen::Index i = r * width + c;
      const T v = plane[i];
      value = value < v ? v : value;
      nan_at = is_nan_bits(v) ? i : nan_at;
    }
  }
  return nan_at >= 0 ? plane[nan_at] : value;
}

// Where the window's maximum `value` (window_max's result) came from: the
// first tap equal to it (PyTorch's strict `>` scan keeps the first), or the
// last NaN tap; -1 when there are no taps.
template <class T>
Eigen::Index window_argmax(const T* plane, Eigen::Index width, const Taps& rows, const Taps& cols, T value) {
  if (rows.begin >= rows.end || cols.begin >= cols.end) return -1;
  const bool nan = is_nan_bits(value);
  Eigen::Index last_nan = -1;
  for (Eigen::Index r = rows.begin; r < rows.end; r += rows.step) {
    for (Eigen::Index c = cols.begin; c < cols.end; c += cols.step) {
      const Eigen::Index i = r * width + c;
      if (!nan && plane[i] == value) return i;
      last_nan = is_nan_bits(plane[i]) ? i : last_nan;
    }
  }
  return last_nan;
}

// An average-pool window along one axis: [begin, end) inside the input, and
// the length of the window cut at the padded input's end.
struct AvgSpan {
  Eigen::Index begin;
  Eigen::Index end;
  Eigen::Index padded;
};

inline AvgSpan avg_span(const PoolAxis& a, Eigen::Index o) {
  const Eigen::Index begin = o * a.stride - a.padding;
  const Eigen::Index end = std::min(begin + a.kernel, a.in + a.padding);
  return AvgSpan{std::max<Eigen::Index>(begin, 0), std::min(end, a.in), end - begin};
}

inline Eigen::Index avg_divisor(const AvgSpan& rows, const AvgSpan& cols, bool count_include_pad,
                                Eigen::Index divisor_override) {
  if (divisor_override != 0) return divisor_override;
  if (count_include_pad) return rows.padded * cols.padded;
  return (rows.end - rows.begin) * (cols.end - cols.begin);
}

// Adaptive window o of `out` over an axis of length `in`.
inline AvgSpan adaptive_span(Eigen::Index in, Eigen::Index out, Eigen::Index o) {
  const Eigen::Index begin = o * in / out;
  const Eigen::Index end = ((o + 1) * in + out - 1) / out;
  return AvgSpan{begin, end, end - begin};
}

}  // namespace detail

// y = the maximum of each window (-inf for a window with no tap inside the input).
template <class T>
void max_pool2d(const T* x, T* y, const Pool2dGeometry& g) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* plane = x + p * in_plane;
    T* out = y + p * out_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::Taps rows = detail::max_taps(g.h, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        out[oh * g.w.out + ow] = detail::window_max(plane, g.w.in, rows, detail::max_taps(g.w, ow));
      }
    }
  }
}

// gx += the output gradient at each window's argmax. The argmax is found
// again from x and the output y rather than saved: both live on the tape
// anyway.
template <class T>
void max_pool2d_backward(const T* grad, const T* x, const T* y, T* gx, const Pool2dGeometry& g) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* plane = x + p * in_plane;
    const T* go = grad + p * out_plane;
    const T* yp = y + p * out_plane;
    T* gp = gx + p * in_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::Taps rows = detail::max_taps(g.h, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        const Eigen::Index o = oh * g.w.out + ow;
        const Eigen::Index i = detail::window_argmax(plane, g.w.in, rows, detail::max_taps(g.w, ow), yp[o]);
        if (i >= 0) gp[i] += go[o];
      }
    }
  }
}

// y = the sum over each window / its divisor (see the header comment);
// divisor_override 0 means none.
template <class T>
void avg_pool2d(const T* x, T* y, const Pool2dGeometry& g, bool count_include_pad, Eigen::Index divisor_override) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* plane = x + p * in_plane;
    T* out = y + p * out_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::AvgSpan rows = detail::avg_span(g.h, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        const detail::AvgSpan cols = detail::avg_span(g.w, ow);
        T sum = T(0);
        for (Eigen::Index r = rows.begin; r < rows.end; ++r) {
          for (Eigen::Index c = cols.begin; c < cols.end; ++c) sum += plane[r * g.w.in + c];
        }
        out[oh * g.w.out + ow] = sum / T(detail::avg_divisor(rows, cols, count_include_pad, divisor_override));
      }
    }
  }
}

template <class T>
void avg_pool2d_backward(const T* grad, T* gx, const Pool2dGeometry& g, bool count_include_pad,
                         Eigen::Index divisor_override) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* go = grad + p * out_plane;
    T* gp = gx + p * in_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::AvgSpan rows = detail::avg_span(g.h, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        const detail::AvgSpan cols = detail::avg_span(g.w, ow);
        const T share =
            go[oh * g.w.out + ow] / T(detail::avg_divisor(rows, cols, count_include_pad, divisor_override));
        for (Eigen::Index r = rows.begin; r < rows.end; ++r) {
          for (Eigen::Index c = cols.begin; c < cols.end; ++c) gp[r * g.w.in + c] += share;
        }
      }
    }
  }
}

// y = the mean over each adaptive window. Reads only planes, in and out of the geometry.
template <class T>
void adaptive_avg_pool2d(const T* x, T* y, const Pool2dGeometry& g) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* plane = x + p * in_plane;
    T* out = y + p * out_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::AvgSpan rows = detail::adaptive_span(g.h.in, g.h.out, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        const detail::AvgSpan cols = detail::adaptive_span(g.w.in, g.w.out, ow);
        T sum = T(0);
        for (Eigen::Index r = rows.begin; r < rows.end; ++r) {
          for (Eigen::Index c = cols.begin; c < cols.end; ++c) sum += plane[r * g.w.in + c];
        }
        out[oh * g.w.out + ow] = sum / T(rows.padded * cols.padded);
      }
    }
  }
}

template <class T>
void adaptive_avg_pool2d_backward(const T* grad, T* gx, const Pool2dGeometry& g) {
  const Eigen::Index in_plane = g.h.in * g.w.in, out_plane = g.h.out * g.w.out;
  for (Eigen::Index p = 0; p < g.planes; ++p) {
    const T* go = grad + p * out_plane;
    T* gp = gx + p * in_plane;
    for (Eigen::Index oh = 0; oh < g.h.out; ++oh) {
      const detail::AvgSpan rows = detail::adaptive_span(g.h.in, g.h.out, oh);
      for (Eigen::Index ow = 0; ow < g.w.out; ++ow) {
        const detail::AvgSpan cols = detail::adaptive_span(g.w.in, g.w.out, ow);
        const T share = go[oh * g.w.out + ow] / T(rows.padded * cols.padded);
        for (Eigen::Index r = rows.begin; r < rows.end; ++r) {
          for (Eigen::Index c = cols.begin; c < cols.end; ++c) gp[r * g.w.in + c] += share;
        }
      }
    }
  }
}

}  // namespace momnet::kernels
