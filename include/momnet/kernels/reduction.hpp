// Reductions along one axis, as plain kernels: no tape, raw pointers and an
// AxisSplit (the value read as outer x axis x inner, element (o, a, i) at
// (o * axis + a) * inner + i). The reduced value is outer x inner, element
// (o, i) at o * inner + i.
//
// Every kernel is a fixed sequence of operations: called twice on the same
// data at the same addresses it returns the same bits (the exact backward
// recomputes blocks and compares bits). Contiguous runs are read through
// Eigen::Unaligned maps, so no alignment is assumed; momnet's storage is
// 64-byte aligned, which keeps the vectorised paths identical between calls.
//
// Backward kernels ADD into the input gradient.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include "momnet/shape.hpp"

namespace momnet::kernels {

namespace detail {

template <class T>
using ConstRun = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;
template <class T>
using Run = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;

// a is a better maximum than b: larger, or NaN (which propagates, as in
// PyTorch); ties keep the first.
template <class T>
inline bool beats(T a, T b) {
  return a > b || (std::isnan(a) && !std::isnan(b));
}

}  // namespace detail

// out(o, i) = sum_a x(o, a, i). An empty axis sums to 0.
template <class T>
void sum(const T* x, T* out, const AxisSplit& s) {
  if (s.inner == 1) {
    for (Eigen::Index o = 0; o < s.outer; ++o) {
      out[o] = s.axis == 0 ? T(0) : detail::ConstRun<T>(x + o * s.axis, s.axis).sum();
    }
    return;
  }
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    T* y = out + o * s.inner;
    for (Eigen::Index i = 0; i < s.inner; ++i) y[i] = T(0);
    for (Eigen::Index a = 0; a < s.axis; ++a) {
      const T* row = x + (o * s.axis + a) * s.inner;
      for (Eigen::Index i = 0; i < s.inner; ++i) y[i] += row[i];
    }
  }
}

// gx(o, a, i) += factor * g(o, i).
template <class T>
void sum_backward(const T* g, T* gx, const AxisSplit& s, T factor = T(1)) {
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    const T* go = g + o * s.inner;
    for (Eigen::Index a = 0; a < s.axis; ++a) {
      T* row = gx + (o * s.axis + a) * s.inner;
      for (Eigen::Index i = 0; i < s.inner; ++i) row[i] += factor * go[i];
    }
  }
}

// out(o, i) = max_a x(o, a, i) and index(o, i) = the first a reaching it (a NaN
// wins, as in PyTorch). Needs s.axis > 0 unless the value is empty. `out` may
// be null (argmax).
template <class T>
void max(const T* x, T* out, std::int64_t* index, const AxisSplit& s) {
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    for (Eigen::Index i = 0; i < s.inner; ++i) {
      const T* p = x + o * s.axis * s.inner + i;
      T best = p[0];
      Eigen::Index at = 0;
      for (Eigen::Index a = 1; a < s.axis; ++a) {
        const T v = p[a * s.inner];
        if (detail::beats(v, best)) {
          best = v;
          at = a;
        }
      }
      if (out != nullptr) out[o * s.inner + i] = best;
      index[o * s.inner + i] = static_cast<std::int64_t>(at);
    }
  }
}

// gx(o, index(o, i), i) += g(o, i).
template <class T>
void max_backward(const T* g, const std::int64_t* index, T* gx, const AxisSplit& s) {
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    for (Eigen::Index i = 0; i < s.inner; ++i) {
      const Eigen::Index a = static_cast<Eigen::Index>(index[o * s.inner + i]);
      gx[(o * s.axis + a) * s.inner + i] += g[o * s.inner + i];
    }
  }
}

// out(o, i) = log sum_a exp x(o, a, i), computed as m + log sum exp(x - m)
// with m the maximum (so it never overflows); all -inf gives -inf, a +inf
// gives +inf. Needs s.axis > 0 unless the value is empty.
template <class T>
void logsumexp(const T* x, T* out, const AxisSplit& s) {
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    const T* block = x + o * s.axis * s.inner;
    T* y = out + o * s.inner;
    for (Eigen::Index i = 0; i < s.inner; ++i) {
      T m = block[i];
      for (Eigen::Index a = 1; a < s.axis; ++a) m = std::fmax(m, block[a * s.inner + i]);
      const T shift = std::isfinite(m) ? m : T(0);
      T total = T(0);
      for (Eigen::Index a = 0; a < s.axis; ++a) total += std::exp(block[a * s.inner + i] - shift);
      y[i] = shift + std::log(total);
    }
  }
}

// gx(o, a, i) += g(o, i) * exp(x(o, a, i) - out(o, i)) (the softmax along the
// axis); a slice whose result is -inf (every element -inf) gets no gradient.
template <class T>
void logsumexp_backward(const T* g, const T* x, const T* out, T* gx, const AxisSplit& s) {
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    for (Eigen::Index i = 0; i < s.inner; ++i) {
      const T lse = out[o * s.inner + i];
      if (lse == -std::numeric_limits<T>::infinity()) continue;
      const T go = g[o * s.inner + i];
      for (Eigen::Index a = 0; a < s.axis; ++a) {
        const Eigen::Index e = (o * s.axis + a) * s.inner + i;
        gx[e] += go * std::exp(x[e] - lse);
      }
    }
  }
}

}  // namespace momnet::kernels
