// act(x weight^T + bias) as one node: the first half of an MLP block. The
// node keeps only what its reverse rule reads: the output, from which the
// derivative of tanh, relu, sigmoid and the identity follows, or, for gelu
// and softplus, the pre-activation too. Recorded as linear() then activate(),
// the pre-activation would stay on the tape as well: a whole batch x hidden
// array per layer that no reverse rule needs.
#pragma once

#include "momnet/kernels/matmul.hpp"
#include "momnet/ops/activation.hpp"
#include "momnet/ops/matmul.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

// Shapes as linear(): x [..., in], weight [out, in], bias [out] or empty.
template <class T>
Var<T> linear_activation(const Var<T>& x, const Var<T>& weight, const Var<T>& bias, ActivationKind kind) {
  const detail::LinearGeometry geometry = detail::linear_geometry("momnet::linear_activation", x, weight, bias);
  Tape<T>& tape = x.tape();
  const Eigen::Index rows = geometry.rows, in = geometry.in, out_features = geometry.out;
  const Eigen::Index n = geometry.out_shape.size();
  const bool keeps_input = kind == ActivationKind::gelu || kind == ActivationKind::softplus;
  const T* px = x.data();
  const T* pw = weight.data();
  T* out = tape.allocate(n);
  // The pre-activation: its own buffer when the rule reads it, else the output's.
  T* pre = keeps_input ? tape.allocate(n) : out;
  kernels::linear_forward(px, pw, bias.valid() ? bias.data() : static_cast<const T*>(nullptr), pre, rows, in,
                          out_features);
  {
    const auto Z = array_view(static_cast<const T*>(pre), n);
    auto Y = array_view(out, n);
    const T inv_sqrt2 = T(0.70710678118654752440);
    switch (kind) {
      case ActivationKind::identity: break;
      case ActivationKind::tanh: Y = Z.tanh(); break;
      case ActivationKind::relu: Y = Z.max(T(0)); break;
      case ActivationKind::sigmoid: Y = Z.logistic(); break;
      case ActivationKind::gelu: Y = T(0.5) * Z * (T(1) + (Z * inv_sqrt2).erf()); break;
      case ActivationKind::softplus: Y = Z.max(T(0)) + (-Z.abs()).exp().log1p(); break;
    }
  }
  return tape.record_op({x, weight, bias}, geometry.out_shape, out, [=](Gradients<T>& g) {
    // d(loss)/d(pre-activation), in scratch memory for this rule alone.
    const typename Tape<T>::Scratch scratch = g.tape().scratch(n);
    auto D = array_view(scratch.data(), n);
    const auto G = array_view(g.output(0), n);
    const auto Y = array_view(static_cast<const T*>(out), n);
    const auto Z = array_view(static_cast<const T*>(pre), n);
    const T inv_sqrt2 = T(0.70710678118654752440), inv_sqrt_2pi = T(0.39894228040143267794);
    switch (kind) {
      case ActivationKind::identity: D = G; break;
      case ActivationKind::tanh: D = G * (T(1) - Y.square()); break;
      case ActivationKind::relu: D = (Y > T(0)).select(G, T(0)); break;
      case ActivationKind::sigmoid: D = G * Y * (T(1) - Y); break;
      case ActivationKind::gelu:
        D = G * (T(0.5) * (T(1) + (Z * inv_sqrt2).erf()) + Z * inv_sqrt_2pi * (T(-0.5) * Z.square()).exp());
        break;
      case ActivationKind::softplus: D = G * Z.logistic(); break;
    }
    const T* d = scratch.data();
    if (T* gx = g.input(0)) kernels::linear_backward_x(d, pw, gx, rows, in, out_features);
    if (T* gw = g.input(1)) kernels::linear_backward_weight(d, px, gw, rows, in, out_features);
    if (T* gb = g.input(2)) kernels::linear_backward_bias(d, gb, rows, out_features);
  });
}

}  // namespace momnet
