// Matrix products: matmul(a, b), batched over leading dimensions with optional
// transposes of the last two, and the fused linear(x, weight, bias) =
// x weight^T + bias over the last axis (one node, one pass over the output
// instead of a product followed by a broadcast add). The plain kernels (GEMMs,
// batch broadcasting) are in kernels/matmul.hpp; these wrappers check shapes
// and record the reverse rules.
#pragma once

#include <string>

#include "momnet/kernels/matmul.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

enum class Transpose : bool { no = false, yes = true };

// op(a) op(b), batched like torch.matmul, where op transposes the last two
// dimensions of its operand when asked (attention: matmul(q, k, no, yes)).
//   [m, k] x [k, n]                      -> [m, n]       (one GEMM)
//   [B, H, T, D] x [B, H, D, S]          -> [B, H, T, S] (one GEMM per matrix)
//   [T, D] x [B, H, D, S], [B, 1, T, D] x [1, H, D, S]: batch dimensions (all
//   but the last two) broadcast NumPy-style, aligned from the right, a 1
//   repeating; an operand's gradient is summed over the batches it was
//   repeated across.
//   [k] x [..., k, n] -> [..., n] and [..., m, k] x [k] -> [..., m] (a vector
//   a is a row, a vector b a column, and that dimension is dropped; [k] x [k]
//   is a scalar); a transpose flag on a rank-1 operand is refused.
// Ranks 1 to 4; errors name the operation and both shapes.
template <class T>
Var<T> matmul(const Var<T>& a, const Var<T>& b, Transpose transpose_a = Transpose::no,
              Transpose transpose_b = Transpose::no) {
  const char* name = "momnet::matmul";
  Tape<T>& tape = detail::common_tape(name, a, b);
  const Shape sa = a.shape(), sb = b.shape();
  kernels::MatmulPlan plan;
  switch (kernels::plan_matmul(sa, sb, transpose_a == Transpose::yes, transpose_b == Transpose::yes, plan)) {
    case kernels::MatmulStatus::ok: break;
    case kernels::MatmulStatus::bad_rank: detail::throw_shapes(name, sa, sb, "operands must have rank 1 to 4");
    case kernels::MatmulStatus::transposed_vector:
      detail::throw_shapes(name, sa, sb, "a rank-1 operand cannot be transposed");
    case kernels::MatmulStatus::inner_mismatch:
      detail::throw_shapes(name, sa, sb,
                           "inner dimensions differ (" + std::to_string(plan.k) + " against " +
                               std::to_string(transpose_b == Transpose::yes ? plan.b_cols : plan.b_rows) + ")");
    case kernels::MatmulStatus::batch_mismatch:
      detail::throw_shapes(name, sa, sb, "batch dimensions do not broadcast");
  }
  const T* pa = a.data();
  const T* pb = b.data();
  T* out = tape.allocate(plan.out.size());
  kernels::matmul_forward(plan, pa, pb, out);
  return tape.record_op({a, b}, plan.out, out, [=](Gradients<T>& g) {
    if (T* ga = g.input(0)) kernels::matmul_backward_a(plan, g.output(0), pb, ga);
    if (T* gb = g.input(1)) kernels::matmul_backward_b(plan, pa, g.output(0), gb);
  });
}

// x weight^T + bias over the last axis, like torch.nn.functional.linear: x is
// [..., in] of any rank from 1 (every leading dimension is a batch), weight
// [out, in] (PyTorch's layout), bias [out] (or [1, out]) or an empty Var for
// none. The result is [..., out]; [in] gives [out]. One GEMM on x read as
// [rows, in], rows the product of its leading dimensions; an empty batch gives
// an empty result and in = 0 gives the bias (or zeros).
namespace detail {

// The geometry of linear(x, weight, bias), checked: x read as [rows, in],
// the result [..., out]. Throws naming `name` and the shapes.
struct LinearGeometry {
  Eigen::Index rows, in, out;
  Shape out_shape;
};
template <class T>
LinearGeometry linear_geometry(const char* name, const Var<T>& x, const Var<T>& weight, const Var<T>& bias) {
  common_tape(name, x, weight);
  const Shape sx = x.shape(), sw = weight.shape();
  if (sx.rank() < 1) throw_shapes(name, sx, sw, "the input must have rank 1 or more [..., in]");
  if (sw.rank() != 2) throw_shape(name, sw, "the weight must be rank 2 [out, in]");
  const int last = sx.rank() - 1;
  const Eigen::Index in = sw.dim(1), out_features = sw.dim(0);
  if (sx.dim(last) != in) {
    throw_shapes(name, sx, sw, "input features (last dimension) differ from the weight's in-features");
  }
  if (bias.valid()) {
    common_tape(name, x, bias);
    if (bias.size() != out_features || !is_row_shape(bias.shape())) {
      throw_shapes(name, sw, bias.shape(), "the bias must be a row of the weight's out-features");
    }
  }
  Eigen::Index rows = 1;
  for (int i = 0; i < last; ++i) rows *= sx.dim(i);
  return {rows, in, out_features, sx.with_dim(last, out_features)};
}

}  // namespace detail

template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& weight, const Var<T>& bias = Var<T>()) {
  const detail::LinearGeometry geometry = detail::linear_geometry("momnet::linear", x, weight, bias);
  Tape<T>& tape = x.tape();
  const Eigen::Index rows = geometry.rows, in = geometry.in, out_features = geometry.out;
  const Shape out_shape = geometry.out_shape;
  const bool has_bias = bias.valid();
  const T* px = x.data();
  const T* pw = weight.data();
  T* out = tape.allocate(out_shape.size());
  kernels::linear_forward(px, pw, has_bias ? bias.data() : static_cast<const T*>(nullptr), out, rows, in,
                          out_features);
  return tape.record_op({x, weight, bias}, out_shape, out, [=](Gradients<T>& g) {
    const T* gy = g.output(0);
    if (T* gx = g.input(0)) kernels::linear_backward_x(gy, pw, gx, rows, in, out_features);
    if (T* gw = g.input(1)) kernels::linear_backward_weight(gy, px, gw, rows, in, out_features);
    if (T* gb = g.input(2)) kernels::linear_backward_bias(gy, gb, rows, out_features);
  });
}

}  // namespace momnet
