// Positional encodings added to a sequence x of shape [B, T, D] (or [T, D]):
// y[b, t, :] = x[b, t, :] + pe[t, :], for the first T of max_len positions.
//
//   SinusoidalPositionalEncoding  pe fixed, from "Attention is all you need"
//                                 (Vaswani et al. 2017, section 3.5):
//                                 pe[pos, 2i] = sin(pos / 10000^(2i / d)),
//                                 pe[pos, 2i + 1] = cos(pos / 10000^(2i / d)).
//                                 With d odd, the last column is a sine whose
//                                 cosine partner would be column d. No state:
//                                 the table is recomputed from (max_len,
//                                 d_model), so visit_state names nothing and
//                                 checkpoints hold nothing for it.
//   LearnedPositionalEncoding     pe is the Parameter `weight` [max_len,
//                                 d_model], initialised N(0, 1) as an
//                                 nn.Embedding over the positions 0..T-1
//                                 would be.
//
// PyTorch has neither as a module (its tutorials write them by hand); these
// follow the paper and nn.Embedding. Each records one tape node that keeps
// nothing: the reverse rule passes the gradient to x and, for the learned
// table, sums it over the batch into rows 0..T-1.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

#include "momnet/init.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// The sinusoidal table [max_len, d_model], computed in double and rounded
// once to T (so a float table is the double one rounded, not a float
// computation's drift at large positions).
template <class T>
Tensor<T> sinusoidal_encoding(Eigen::Index max_len, Eigen::Index d_model) {
  if (max_len <= 0 || d_model <= 0) {
    throw std::invalid_argument("momnet::sinusoidal_encoding: max_len and d_model must be positive, got " +
                                std::to_string(max_len) + " and " + std::to_string(d_model));
  }
  Tensor<T> pe(Shape{max_len, d_model});
  for (Eigen::Index j = 0; j < d_model; ++j) {
    const Eigen::Index even = j - j % 2;  // 2i: a sine and the cosine after it share a frequency
    const double inverse_wavelength = std::pow(10000.0, -static_cast<double>(even) / static_cast<double>(d_model));
    for (Eigen::Index pos = 0; pos < max_len; ++pos) {
      const double angle = static_cast<double>(pos) * inverse_wavelength;
      pe.data()[pos * d_model + j] = static_cast<T>(j % 2 == 0 ? std::sin(angle) : std::cos(angle));
    }
  }
  return pe;
}

namespace detail {

// Throws naming `operation` unless x is a Var on `tape` of shape [B, T, D] or
// [T, D] with T <= max_len and D = d_model.
template <class T>
void check_positions(const char* operation, Tape<T>& tape, const Var<T>& x, Eigen::Index max_len,
                     Eigen::Index d_model) {
  if (&common_tape(operation, x) != &tape) {
    throw std::invalid_argument(std::string(operation) + ": the input belongs to a different tape");
  }
  const Shape shape = x.shape();
  if (shape.rank() != 2 && shape.rank() != 3) {
    throw_shape(operation, shape, "expected an input [B, T, D] or [T, D]");
  }
  const Eigen::Index positions = shape.dim(-2), width = shape.dim(-1);
  if (width != d_model) {
    throw std::invalid_argument(std::string(operation) + ": the input's last dimension " + std::to_string(width) +
                                " differs from d_model " + std::to_string(d_model) + " (input " +
                                shape.to_string() + ")");
  }
  if (positions > max_len) {
    throw std::invalid_argument(std::string(operation) + ": the input has " + std::to_string(positions) +
                                " positions, more than max_len " + std::to_string(max_len) + " (input " +
                                shape.to_string() + ")");
  }
}

// x + table[:T] for x checked by check_positions, `table` [max_len, D]
// row-major: the values of `table_var` when that is given (the learned
// encoding's parameter, which then receives the gradient summed over the
// batch).
template <class T>
Var<T> add_positions(Tape<T>& tape, const Var<T>& x, const T* table, const Var<T>& table_var) {
  const Shape shape = x.shape();
  const Eigen::Index positions = shape.dim(-2), width = shape.dim(-1);
  const Eigen::Index batch = shape.rank() == 3 ? shape.dim(0) : 1;
  const Eigen::Index block = positions * width;  // one sequence: the first `block` values of the table
  const T* px = x.data();
  T* y = tape.allocate(shape.size());
  for (Eigen::Index b = 0; b < batch; ++b) {
    for (Eigen::Index k = 0; k < block; ++k) y[b * block + k] = px[b * block + k] + table[k];
  }
  return tape.record_op({x, table_var}, shape, y, [=](Gradients<T>& g) {
    const T* gy = g.output(0);
    if (T* gx = g.input(0)) {
      for (Eigen::Index k = 0; k < batch * block; ++k) gx[k] += gy[k];
    }
    if (T* gt = g.input(1)) {
      // Summed in double over the batch in a fixed order, rounded once.
      for (Eigen::Index k = 0; k < block; ++k) {
        double s = 0.0;
        for (Eigen::Index b = 0; b < batch; ++b) s += static_cast<double>(gy[b * block + k]);
        gt[k] += static_cast<T>(s);
      }
    }
  });
}

inline void check_encoding_size(const char* operation, Eigen::Index max_len, Eigen::Index d_model) {
  if (max_len <= 0 || d_model <= 0) {
    throw std::invalid_argument(std::string(operation) + ": max_len and d_model must be positive, got " +
                                std::to_string(max_len) + " and " + std::to_string(d_model));
  }
}

}  // namespace detail

template <class T>
class SinusoidalPositionalEncoding {
 public:
  using Scalar = T;

  SinusoidalPositionalEncoding(Eigen::Index max_len, Eigen::Index d_model)
      : pe_((detail::check_encoding_size("momnet::SinusoidalPositionalEncoding", max_len, d_model),
             sinusoidal_encoding<T>(max_len, d_model))) {}

  // x [B, T, D] or [T, D] with T <= max_len and D = d_model (else
  // std::invalid_argument with the numbers) -> x + pe[:T].
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    detail::check_positions("momnet::SinusoidalPositionalEncoding", tape, x, max_len(), d_model());
    // The table is read, not recorded: the rule needs nothing of it.
    return detail::add_positions(tape, x, pe_.data(), Var<T>());
  }

  // Nothing to name: the table is a function of (max_len, d_model).
  template <class Visitor>
  void visit_state(Visitor&) {}

  Eigen::Index max_len() const noexcept { return pe_.shape().dim(0); }
  Eigen::Index d_model() const noexcept { return pe_.shape().dim(1); }
  const Tensor<T>& table() const noexcept { return pe_; }

 private:
  Tensor<T> pe_;
};

template <class T>
class LearnedPositionalEncoding {
 public:
  using Scalar = T;

  LearnedPositionalEncoding(Eigen::Index max_len, Eigen::Index d_model, Rng& rng)
      : weight_((detail::check_encoding_size("momnet::LearnedPositionalEncoding", max_len, d_model),
                 Shape{max_len, d_model}),
                "weight") {
    init::normal(weight_, 0.0, 1.0, rng);
  }

  // x [B, T, D] or [T, D] with T <= max_len and D = d_model (else
  // std::invalid_argument with the numbers) -> x + weight[:T].
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    detail::check_positions("momnet::LearnedPositionalEncoding", tape, x, max_len(), d_model());
    const Var<T> table = tape.param(weight_);
    return detail::add_positions(tape, x, table.data(), table);
  }

  // The name an nn.Embedding member would give: `weight`.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("weight", weight_);
  }

  Eigen::Index max_len() const noexcept { return weight_.shape().dim(0); }
  Eigen::Index d_model() const noexcept { return weight_.shape().dim(1); }
  Parameter<T>& weight() noexcept { return weight_; }

 private:
  Parameter<T> weight_;
};

}  // namespace momnet
