// Matrix products: matmul(a, b) with optional transposes, and the fused
// linear(x, weight, bias) = x weight^T + bias of a dense layer (one node, one
// pass over the output instead of a product followed by a broadcast add).
#pragma once

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

enum class Transpose : bool { no = false, yes = true };

// op(a) * op(b) where op transposes when asked; both operands are rank 2.
template <class T>
Var<T> matmul(const Var<T>& a, const Var<T>& b, Transpose transpose_a = Transpose::no,
              Transpose transpose_b = Transpose::no) {
  const char* name = "momnet::matmul";
  Tape<T>& tape = detail::common_tape(name, a, b);
  const Shape sa = a.shape(), sb = b.shape();
  if (sa.rank() != 2 || sb.rank() != 2) detail::throw_shapes(name, sa, sb, "operands must be rank 2");
  const bool ta = transpose_a == Transpose::yes, tb = transpose_b == Transpose::yes;
  const Eigen::Index m = ta ? sa.dim(1) : sa.dim(0);
  const Eigen::Index k = ta ? sa.dim(0) : sa.dim(1);
  const Eigen::Index kb = tb ? sb.dim(1) : sb.dim(0);
  const Eigen::Index n = tb ? sb.dim(0) : sb.dim(1);
  if (k != kb) detail::throw_shapes(name, sa, sb, "inner dimensions differ");
  const T* pa = a.data();
  const T* pb = b.data();
  const Shape out_shape{m, n};
  T* out = tape.allocate(out_shape.size());
  {
    const auto A = matrix_view(pa, sa);
    const auto B = matrix_view(pb, sb);
    auto C = matrix_view(out, out_shape);
    if (!ta && !tb) C.noalias() = A * B;
    if (!ta && tb) C.noalias() = A * B.transpose();
    if (ta && !tb) C.noalias() = A.transpose() * B;
    if (ta && tb) C.noalias() = A.transpose() * B.transpose();
  }
  return tape.record(out_shape, out, {a, b}, [=](const T* g) {
    const auto A = matrix_view(pa, sa);
    const auto B = matrix_view(pb, sb);
    const auto G = matrix_view(g, out_shape);
    if (a.requires_grad()) {
      auto GA = matrix_view(a.tape().gradient_for(a), sa);
      // C = A B: dA = G B^T; with A transposed, dA = (G op(B)^T)^T = op(B) G^T.
      if (!ta && !tb) GA.noalias() += G * B.transpose();
      if (!ta && tb) GA.noalias() += G * B;
      if (ta && !tb) GA.noalias() += B * G.transpose();
      if (ta && tb) GA.noalias() += B.transpose() * G.transpose();
    }
    if (b.requires_grad()) {
      auto GB = matrix_view(b.tape().gradient_for(b), sb);
      // dB = op(A)^T G, transposed back when B was used transposed.
      if (!ta && !tb) GB.noalias() += A.transpose() * G;
      if (!ta && tb) GB.noalias() += G.transpose() * A;
      if (ta && !tb) GB.noalias() += A * G;
      if (ta && tb) GB.noalias() += G.transpose() * A.transpose();
    }
  });
}

// x weight^T + bias: x is [batch, in], weight [out, in] (PyTorch's layout),
// bias [out] or an empty Var for none. The result is [batch, out].
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>()) {
  const char* name = "momnet::linear";
  Tape<T>& tape = detail::common_tape(name, x, weight);
  const Shape sx = x.shape(), sw = weight.shape();
  if (sx.rank() != 2) detail::throw_shape(name, sx, "the input must be rank 2 [batch, features]");
  if (sw.rank() != 2) detail::throw_shape(name, sw, "the weight must be rank 2 [out, in]");
  if (sx.dim(1) != sw.dim(1)) {
    detail::throw_shapes(name, sx, sw, "input features differ from the weight's in-features");
  }
  const bool has_bias = bias.valid();
  if (has_bias) {
    detail::common_tape(name, x, bias);
    if (bias.size() != sw.dim(0) || !detail::is_row_shape(bias.shape())) {
      detail::throw_shapes(name, sw, bias.shape(), "the bias must be a row of the weight's out-features");
    }
  }
  const Eigen::Index batch = sx.dim(0), out_features = sw.dim(0);
  const Shape out_shape{batch, out_features};
  const T* px = x.data();
  const T* pw = weight.data();
  const T* pbias = has_bias ? bias.data() : nullptr;
  T* out = tape.allocate(out_shape.size());
  {
    auto Y = matrix_view(out, out_shape);
    Y.noalias() = matrix_view(px, sx) * matrix_view(pw, sw).transpose();
    if (has_bias) Y.rowwise() += ConstMatrixView<T>(pbias, 1, out_features).row(0);
  }
  auto backward = [=](const T* g) {
    const auto G = matrix_view(g, out_shape);
    if (x.requires_grad()) {
      matrix_view(x.tape().gradient_for(x), sx).noalias() += G * matrix_view(pw, sw);
    }
    if (weight.requires_grad()) {
      matrix_view(weight.tape().gradient_for(weight), sw).noalias() += G.transpose() * matrix_view(px, sx);
    }
    if (has_bias && bias.requires_grad()) {
      MatrixView<T>(bias.tape().gradient_for(bias), 1, out_features) += G.colwise().sum();
    }
  };
  if (has_bias) return tape.record(out_shape, out, {x, weight, bias}, backward);
  return tape.record(out_shape, out, {x, weight}, backward);
}

}  // namespace momnet
