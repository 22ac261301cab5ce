// Layer normalisation over the trailing axes, as torch.nn.functional.layer_norm:
//
//   y = (x - mean) / sqrt(var + eps) * weight + bias
//
// with the mean and the biased variance of each row: the values sharing the
// leading indices, over the trailing axes given by normalized_shape. weight and
// bias have normalized_shape (applied element-wise), or are empty Vars for none.
//
// One tape node, whatever the rank. Its reverse rule (kernels/layer_norm.hpp)
// recomputes x̂ from x, which the tape keeps anyway as the node's input, and
// the saved per-row mean and 1/std (2 doubles per row): the node stores
// nothing of x's size beyond its output, where a graph of elementary ops
// would keep several copies. Statistics are summed in double in a fixed
// order, so the same input gives the same bits (the exact backward replays
// it).
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/fixed_point.hpp"
#include "momnet/kernels/layer_norm.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"

namespace momnet {
namespace detail {

// The input read as [rows, cols]; throws naming `operation` unless
// normalized_shape (rank >= 1) equals the input's trailing dimensions.
inline kernels::LayerNormGeometry layer_norm_geometry(const char* operation, const Shape& input,
                                                      const Shape& normalized_shape) {
  const int k = normalized_shape.rank();
  if (k == 0) {
    throw std::invalid_argument(std::string(operation) + ": normalized_shape must have at least one dimension, got " +
                                normalized_shape.to_string());
  }
  bool trailing = k <= input.rank();
  for (int i = 0; trailing && i < k; ++i) trailing = input.dim(input.rank() - k + i) == normalized_shape.dim(i);
  if (!trailing) {
    throw std::invalid_argument(std::string(operation) + ": normalized_shape " + normalized_shape.to_string() +
                                " must equal the trailing dimensions of the input, got an input of " +
                                input.to_string());
  }
  kernels::LayerNormGeometry s;
  s.rows = 1;
  for (int i = 0; i < input.rank() - k; ++i) s.rows *= input.dim(i);
  s.cols = 1;
  for (int i = 0; i < k; ++i) s.cols *= normalized_shape.dim(i);
  return s;
}

}  // namespace detail

// F.layer_norm(x, normalized_shape, weight, bias, eps). weight and bias are
// Vars of normalized_shape on x's tape, or empty Vars (no scale, no shift).
//
// Throws std::invalid_argument naming momnet::layer_norm when normalized_shape
// is empty or differs from x's trailing dimensions (both shapes in the
// message), when weight or bias is not of normalized_shape, or when eps is
// negative or not finite (eps = 0 is allowed, as in PyTorch: a constant row
// then gives NaN).
template <class T>
Var<T> layer_norm(const Var<T>& x, const Shape& normalized_shape, const Var<T>& weight = Var<T>(),
                  const Var<T>& bias = Var<T>(), double eps = 1e-5) {
  const char* operation = "momnet::layer_norm";
  Tape<T>& tape = detail::common_tape(operation, x);
  if (weight.valid()) detail::common_tape(operation, x, weight);
  if (bias.valid()) detail::common_tape(operation, x, bias);
  const Shape shape = x.shape();
  const kernels::LayerNormGeometry s = detail::layer_norm_geometry(operation, shape, normalized_shape);
  const auto check_affine = [&](const Var<T>& v, const char* what) {
    if (v.valid() && v.shape() != normalized_shape) {
      throw std::invalid_argument(std::string(operation) + ": the " + what + " must have normalized_shape " +
                                  normalized_shape.to_string() + ", got " + v.shape().to_string());
    }
  };
  check_affine(weight, "weight");
  check_affine(bias, "bias");
  if (!(is_finite_bits(eps) && eps >= 0.0)) {  // bit test: survives -ffast-math
    throw std::invalid_argument(std::string(operation) + ": eps must be finite and >= 0, got " +
                                precise_string(eps));
  }

  // Saved for the reverse rule: 2 doubles per row.
  double* mean = tape.template allocate_as<double>(s.rows);
  double* rstd = tape.template allocate_as<double>(s.rows);
  // A row of no values (normalized_shape with a 0) has no statistics, but
  // then the output is empty and nothing reads them.
  if (s.cols > 0) kernels::layer_norm_statistics(x.data(), s, eps, mean, rstd);
  const T* px = x.data();
  const T* pw = weight.valid() ? weight.data() : nullptr;
  T* y = tape.allocate(shape.size());
  kernels::layer_norm_forward(px, y, s, mean, rstd, pw, bias.valid() ? bias.data() : nullptr);
  return tape.record_op({x, weight, bias}, shape, y, [=](Gradients<T>& g) {
    if (s.cols == 0) return;
    T* gweight = g.input(1);
    T* gbias = g.input(2);
    // The column sums' double accumulators, from the pool for this rule only.
    const bool columns = gweight != nullptr || gbias != nullptr;
    const Eigen::Index doubles = columns ? 2 * s.cols : 0;
    const auto work = g.tape().scratch(doubles * static_cast<Eigen::Index>(sizeof(double) / sizeof(T)));
    // Pool memory is raw and 64-byte aligned: it holds doubles as well as T.
    kernels::layer_norm_backward(g.output(0), px, s, mean, rstd, pw, g.input(0), gweight, gbias,
                                 reinterpret_cast<double*>(work.data()));
  });
}

}  // namespace momnet
