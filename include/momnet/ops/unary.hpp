// Element-wise functions of one Var: scale, neg, square, exp, log, tanh, relu,
// sigmoid, gelu (the exact, erf form), softplus, sqrt, rsqrt, pow (a constant
// exponent), abs, clamp. Scalar parameters take the Var's scalar type
// (x * 2 and x * 2.0 both work for a Var<float>).
//
// Every function is an array expression over the whole, 64-byte aligned
// value, so it gives the same bits each time it is computed.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include <unsupported/Eigen/SpecialFunctions>

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {
namespace detail {

// value(X) is an array expression of the input; grad(G, X, Y) the gradient
// contribution to the input given the output gradient G and the output Y.
template <class T, class Value, class Grad>
Var<T> unary(const char* operation, const Var<T>& x, Value value, Grad grad) {
  Tape<T>& tape = common_tape(operation, x);
  const Shape shape = x.shape();
  const Eigen::Index n = shape.size();
  const T* px = x.data();
  T* out = tape.allocate(n);
  array_view(out, n) = value(array_view(px, n));
  return tape.record_op({x}, shape, out, [=](Gradients<T>& g) {
    if (T* gx = g.input(0)) {
      array_view(gx, n) += grad(array_view(g.output(0), n), array_view(px, n), array_view(out, n));
    }
  });
}

}  // namespace detail

// s * x for a constant s.
template <class T>
Var<T> scale(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::unary(
      "momnet::scale", x, [s](const auto& X) { return X * s; },
      [s](const auto& G, const auto&, const auto&) { return G * s; });
}
template <class T>
Var<T> operator*(typename Var<T>::Scalar s, const Var<T>& x) { return scale(x, s); }
template <class T>
Var<T> operator*(const Var<T>& x, typename Var<T>::Scalar s) { return scale(x, s); }
template <class T>
Var<T> operator-(const Var<T>& x) { return scale(x, T(-1)); }

template <class T>
Var<T> square(const Var<T>& x) {
  return detail::unary(
      "momnet::square", x, [](const auto& X) { return X.square(); },
      [](const auto& G, const auto& X, const auto&) { return T(2) * G * X; });
}

template <class T>
Var<T> exp(const Var<T>& x) {
  return detail::unary(
      "momnet::exp", x, [](const auto& X) { return X.exp(); },
      [](const auto& G, const auto&, const auto& Y) { return G * Y; });
}

// Natural logarithm; non-positive inputs give NaN or -inf, as in IEEE.
template <class T>
Var<T> log(const Var<T>& x) {
  return detail::unary(
      "momnet::log", x, [](const auto& X) { return X.log(); },
      [](const auto& G, const auto& X, const auto&) { return G / X; });
}

template <class T>
Var<T> tanh(const Var<T>& x) {
  return detail::unary(
      "momnet::tanh", x, [](const auto& X) { return X.tanh(); },
      [](const auto& G, const auto&, const auto& Y) { return G * (T(1) - Y.square()); });
}

// max(x, 0); the gradient at exactly 0 is taken as 0.
template <class T>
Var<T> relu(const Var<T>& x) {
  return detail::unary(
      "momnet::relu", x, [](const auto& X) { return X.max(T(0)); },
      [](const auto& G, const auto& X, const auto&) { return (X > T(0)).select(G, T(0)); });
}

template <class T>
Var<T> sigmoid(const Var<T>& x) {
  return detail::unary(
      "momnet::sigmoid", x, [](const auto& X) { return X.logistic(); },
      [](const auto& G, const auto&, const auto& Y) { return G * Y * (T(1) - Y); });
}

// x * Phi(x) with Phi the standard normal CDF (PyTorch's default GELU).
template <class T>
Var<T> gelu(const Var<T>& x) {
  const T inv_sqrt2 = T(0.70710678118654752440);
  const T inv_sqrt_2pi = T(0.39894228040143267794);
  return detail::unary(
      "momnet::gelu", x,
      [inv_sqrt2](const auto& X) { return T(0.5) * X * (T(1) + (X * inv_sqrt2).erf()); },
      [inv_sqrt2, inv_sqrt_2pi](const auto& G, const auto& X, const auto&) {
        return G * (T(0.5) * (T(1) + (X * inv_sqrt2).erf()) +
                    X * inv_sqrt_2pi * (T(-0.5) * X.square()).exp());
      });
}

// log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) so it never overflows.
template <class T>
Var<T> softplus(const Var<T>& x) {
  return detail::unary(
      "momnet::softplus", x,
      [](const auto& X) { return X.max(T(0)) + (-X.abs()).exp().log1p(); },
      [](const auto& G, const auto& X, const auto&) { return G * X.logistic(); });
}

// sqrt(x), correctly rounded: std::sqrt element by element, because Eigen's
// vectorised float sqrt (under its default EIGEN_FAST_MATH) is an estimate that
// differs from the scalar path and mishandles infinities. The gradient
// 1 / (2 sqrt(x)) is infinite at 0; negative inputs give NaN, as in IEEE (and
// PyTorch).
template <class T>
Var<T> sqrt(const Var<T>& x) {
  return detail::unary(
      "momnet::sqrt", x, [](const auto& X) { return X.unaryExpr([](T v) { return std::sqrt(v); }); },
      [](const auto& G, const auto&, const auto& Y) { return G / (T(2) * Y); });
}

// 1 / sqrt(x), computed as a correctly rounded square root and a division
// (not a hardware reciprocal-square-root estimate), so every build and every
// vector width gives the same bits.
template <class T>
Var<T> rsqrt(const Var<T>& x) {
  return detail::unary(
      "momnet::rsqrt", x, [](const auto& X) { return X.unaryExpr([](T v) { return T(1) / std::sqrt(v); }); },
      [](const auto& G, const auto&, const auto& Y) { return T(-0.5) * G * Y * Y * Y; });
}

// x^p for a constant exponent p, element by element with std::pow. The
// gradient p x^(p-1) is taken as 0 when p = 0 (as PyTorch does).
template <class T>
Var<T> pow(const Var<T>& x, typename Var<T>::Scalar p) {
  return detail::unary(
      "momnet::pow", x, [p](const auto& X) { return X.unaryExpr([p](T v) { return std::pow(v, p); }); },
      [p](const auto& G, const auto& X, const auto&) {
        return G * X.unaryExpr([p](T v) { return p == T(0) ? T(0) : p * std::pow(v, p - T(1)); });
      });
}

// |x|; the gradient is sign(x), taken as 0 at exactly 0 (as PyTorch does).
template <class T>
Var<T> abs(const Var<T>& x) {
  return detail::unary(
      "momnet::abs", x, [](const auto& X) { return X.abs(); },
      [](const auto& G, const auto& X, const auto&) { return G * X.sign(); });
}

// x limited to [lo, hi]. The gradient passes where lo <= x <= hi, bounds
// included, and is 0 outside (as PyTorch's clamp); NaN stays NaN, with no
// gradient. Throws std::invalid_argument unless lo <= hi.
template <class T>
Var<T> clamp(const Var<T>& x, typename Var<T>::Scalar lo, typename Var<T>::Scalar hi) {
  if (!(lo <= hi)) {
    throw std::invalid_argument("momnet::clamp: the bounds must satisfy lo <= hi, got lo = " + std::to_string(lo) +
                                " and hi = " + std::to_string(hi));
  }
  return detail::unary(
      "momnet::clamp", x, [lo, hi](const auto& X) { return (X < lo).select(lo, (X > hi).select(hi, X)); },
      [lo, hi](const auto& G, const auto& X, const auto&) { return (X >= lo && X <= hi).select(G, T(0)); });
}

}  // namespace momnet
