// Elementwise functions of one Var: scale, neg, square, exp, log, tanh, relu,
// sigmoid, gelu (the exact, erf form), softplus.
#pragma once

#include <cmath>

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
  return tape.record(shape, out, {x}, [=](const T* g) {
    array_view(x.tape().gradient_for(x), n) += grad(array_view(g, n), array_view(px, n), array_view(out, n));
  });
}

}  // namespace detail

// s * x for a constant s.
template <class T>
Var<T> scale(const Var<T>& x, T s) {
  return detail::unary(
      "momnet::scale", x, [s](const auto& X) { return X * s; },
      [s](const auto& G, const auto&, const auto&) { return G * s; });
}
template <class T>
Var<T> operator*(T s, const Var<T>& x) { return scale(x, s); }
template <class T>
Var<T> operator*(const Var<T>& x, T s) { return scale(x, s); }
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

}  // namespace momnet
