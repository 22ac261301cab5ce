// Softmax and log-softmax along one axis, as plain kernels: no tape, raw
// pointers and an AxisSplit (element (o, a, i) at (o * axis + a) * inner + i;
// each (o, i) is one distribution over a). Both subtract the maximum along
// the axis first, so they never overflow.
//
// The last axis (inner == 1, rows of the value) is the fast path: each row is
// a contiguous run read through an Eigen::Unaligned map. Other axes walk the
// outer blocks, vectorising over the inner elements. Every kernel is a fixed
// sequence of operations: the same data at the same addresses gives the same
// bits (momnet's storage is 64-byte aligned, so the vectorised paths do not
// change between calls).
//
// Backward kernels ADD into the input gradient.
#pragma once

#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "momnet/shape.hpp"

namespace momnet::kernels {

namespace softmax_detail {

template <class T>
using ConstRun = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;
template <class T>
using Run = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;

// out = x - max_a x, then out -= log sum_a exp(out): log_softmax in place of
// `out`, for one outer block of axis x inner elements.
template <class T>
void log_softmax_block(const T* x, T* out, Eigen::Index axis, Eigen::Index inner, T* scratch) {
  if (inner == 1) {
    const ConstRun<T> X(x, axis);
    Run<T> Y(out, axis);
    Y = X - X.maxCoeff();
    Y -= std::log(Y.exp().sum());
    return;
  }
  // scratch holds inner values: the maximum, then the log of the sum.
  Run<T> M(scratch, inner);
  M = ConstRun<T>(x, inner);
  for (Eigen::Index a = 1; a < axis; ++a) M = M.max(ConstRun<T>(x + a * inner, inner));
  for (Eigen::Index a = 0; a < axis; ++a) Run<T>(out + a * inner, inner) = ConstRun<T>(x + a * inner, inner) - M;
  M = Run<T>(out, inner).exp();
  for (Eigen::Index a = 1; a < axis; ++a) M += Run<T>(out + a * inner, inner).exp();
  M = M.log();
  for (Eigen::Index a = 0; a < axis; ++a) Run<T>(out + a * inner, inner) -= M;
}

}  // namespace softmax_detail

// out = log_softmax(x) along the axis. `scratch` holds s.inner values (unused,
// may be null, when s.inner == 1). Needs s.axis > 0 unless the value is empty.
template <class T>
void log_softmax(const T* x, T* out, const AxisSplit& s, T* scratch) {
  const Eigen::Index block = s.axis * s.inner;
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    softmax_detail::log_softmax_block(x + o * block, out + o * block, s.axis, s.inner, scratch);
  }
}

// out = softmax(x) along the axis, as exp(log_softmax(x)).
template <class T>
void softmax(const T* x, T* out, const AxisSplit& s, T* scratch) {
  log_softmax(x, out, s, scratch);
  const Eigen::Index n = s.outer * s.axis * s.inner;
  softmax_detail::Run<T> Y(out, n);
  // Eigen's vectorised exp gives a denormal (5.6e-309 in double), not 0, for
  // -infinity: a masked attention weight must be exactly 0, as in PyTorch,
  // and denormals would slow every product that reads it.
  Y = (Y == -std::numeric_limits<T>::infinity()).select(T(0), Y.exp());
}

// gx += y * (g - sum_a g * y), with y = softmax(x) (the forward output).
// `scratch` holds s.inner values (unused when s.inner == 1).
template <class T>
void softmax_backward(const T* g, const T* y, T* gx, const AxisSplit& s, T* scratch) {
  using softmax_detail::ConstRun;
  using softmax_detail::Run;
  const Eigen::Index block = s.axis * s.inner;
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    const T* go = g + o * block;
    const T* yo = y + o * block;
    T* gxo = gx + o * block;
    if (s.inner == 1) {
      const ConstRun<T> G(go, s.axis), Y(yo, s.axis);
      Run<T>(gxo, s.axis) += Y * (G - (G * Y).sum());
      continue;
    }
    Run<T> D(scratch, s.inner);
    D.setZero();
    for (Eigen::Index a = 0; a < s.axis; ++a) {
      D += ConstRun<T>(go + a * s.inner, s.inner) * ConstRun<T>(yo + a * s.inner, s.inner);
    }
    for (Eigen::Index a = 0; a < s.axis; ++a) {
      const Eigen::Index k = a * s.inner;
      Run<T>(gxo + k, s.inner) += ConstRun<T>(yo + k, s.inner) * (ConstRun<T>(go + k, s.inner) - D);
    }
  }
}

// gx += g - exp(y) * sum_a g, with y = log_softmax(x) (the forward output).
// `scratch` holds s.inner values (unused when s.inner == 1).
template <class T>
void log_softmax_backward(const T* g, const T* y, T* gx, const AxisSplit& s, T* scratch) {
  using softmax_detail::ConstRun;
  using softmax_detail::Run;
  const Eigen::Index block = s.axis * s.inner;
  for (Eigen::Index o = 0; o < s.outer; ++o) {
    const T* go = g + o * block;
    const T* yo = y + o * block;
    T* gxo = gx + o * block;
    if (s.inner == 1) {
      const ConstRun<T> G(go, s.axis), Y(yo, s.axis);
      Run<T>(gxo, s.axis) += G - Y.exp() * G.sum();
      continue;
    }
    Run<T> S(scratch, s.inner);
    S.setZero();
    for (Eigen::Index a = 0; a < s.axis; ++a) S += ConstRun<T>(go + a * s.inner, s.inner);
    for (Eigen::Index a = 0; a < s.axis; ++a) {
      const Eigen::Index k = a * s.inner;
      Run<T>(gxo + k, s.inner) += ConstRun<T>(go + k, s.inner) - ConstRun<T>(yo + k, s.inner).exp() * S;
    }
  }
}

}  // namespace momnet::kernels
