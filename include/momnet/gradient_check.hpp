// Numerical gradient checking: compares the tape's gradients of a function of
// Vars (or of a block) with central finite differences in double precision,
// for every element of every input and parameter. It is how momnet tests
// its own operations and how users test the blocks they write.
//
// A non-scalar output y is reduced to the scalar sum(y * R) with R a fixed,
// seeded random array, so every output element takes part.
//
// The error of one element is |analytic - numeric| / max(|analytic|,
// |numeric|, floor), with floor = relative_floor * (largest |numeric| over the
// whole check): entries far below the function's gradient scale, where finite
// differences are mostly rounding, are judged against that scale instead.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/call_context.hpp"
#include "momnet/module.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/ops/reduction.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

struct GradientCheckOptions {
  double step = 1e-6;             // finite-difference step, times max(1, |x|)
  double tolerance = 1e-6;        // the largest error that passes
  double relative_floor = 1e-3;   // see the header comment
  std::uint64_t seed = 0x5eed;    // for the output projection R
};

struct GradientCheckResult {
  bool passed = false;
  double max_error = 0.0;  // the largest element error (see the header comment)
  std::string worst;       // where it occurred, with both values
  std::size_t checked = 0; // elements compared

  explicit operator bool() const noexcept { return passed; }
};

namespace detail {

struct GradientEntry {
  std::string where;
  double analytic;
  double numeric;
};

// loss = f(inputs) projected to a scalar, on `tape`.
template <class Function>
Var<double> projected_loss(Function& function, Tape<double>& tape,
                           const std::vector<Tensor<double>>& inputs, bool with_grad,
                           std::uint64_t seed, std::vector<Var<double>>& vars) {
  vars.clear();
  for (const Tensor<double>& input : inputs) {
    vars.push_back(with_grad ? tape.variable(input) : tape.constant(input));
  }
  Var<double> output = function(tape, static_cast<const std::vector<Var<double>>&>(vars));
  if (output.size() == 1) return output;
  Tensor<double> projection(output.shape());
  Rng rng(seed);
  for (Eigen::Index i = 0; i < projection.size(); ++i) projection.data()[i] = rng.uniform(-1.0, 1.0);
  return sum(mul(output, tape.constant(projection)));
}

}  // namespace detail

// `function(Tape<double>&, const std::vector<Var<double>>&) -> Var<double>`
// is evaluated on Vars made from `inputs`; `parameters` are those it uses
// through tape.param(). Parameter gradients are restored afterwards.
template <class Function>
GradientCheckResult check_gradients(Function&& function, std::vector<Tensor<double>> inputs,
                                    const std::vector<Parameter<double>*>& parameters = {},
                                    const GradientCheckOptions& options = {}) {
  // The parameters' gradients come back as they were, even if `function` throws.
  struct RestoreGradients {
    const std::vector<Parameter<double>*>& parameters;
    std::vector<Buffer<double>> saved;
    ~RestoreGradients() {
      for (std::size_t k = 0; k < saved.size(); ++k) {
        std::copy(saved[k].data(), saved[k].data() + parameters[k]->size(), parameters[k]->grad_data());
      }
    }
  } restore{parameters, {}};
  for (Parameter<double>* p : parameters) {
    restore.saved.emplace_back(static_cast<std::size_t>(p->size()));
    std::copy(p->grad_data(), p->grad_data() + p->size(), restore.saved.back().data());
    p->zero_grad();
  }

  // Analytic gradients.
  std::vector<std::vector<double>> input_grads;
  std::vector<std::vector<double>> parameter_grads;
  {
    Tape<double> tape;
    std::vector<Var<double>> vars;
    Var<double> loss = detail::projected_loss(function, tape, inputs, true, options.seed, vars);
    tape.backward(loss);
    for (const Var<double>& var : vars) {
      const auto grad = var.grad();
      input_grads.emplace_back(grad.data(), grad.data() + grad.size());
    }
    for (Parameter<double>* p : parameters) {
      parameter_grads.emplace_back(p->grad_data(), p->grad_data() + p->size());
    }
  }

  // Numeric gradients, element by element.
  auto evaluate = [&]() {
    Tape<double> tape;
    typename Tape<double>::NoGradScope no_grad(tape);
    std::vector<Var<double>> vars;
    return detail::projected_loss(function, tape, inputs, false, options.seed, vars).item();
  };
  auto central_difference = [&](double& x) {
    const double original = x;
    const double h = options.step * std::max(1.0, std::abs(original));
    struct RestoreValue {
      double& value;
      double original;
      ~RestoreValue() { value = original; }  // also when `function` throws
    } restore_value{x, original};
    x = original + h;
    const double plus = evaluate();
    x = original - h;
    const double minus = evaluate();
    return (plus - minus) / (2.0 * h);
  };

  std::vector<detail::GradientEntry> entries;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    for (Eigen::Index e = 0; e < inputs[i].size(); ++e) {
      const double numeric = central_difference(inputs[i].data()[e]);
      entries.push_back({"input " + std::to_string(i) + " " + inputs[i].shape().to_string() +
                             " element " + std::to_string(e),
                         input_grads[i][static_cast<std::size_t>(e)], numeric});
    }
  }
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    Parameter<double>& p = *parameters[k];
    for (Eigen::Index e = 0; e < p.size(); ++e) {
      const double numeric = central_difference(p.value_data()[e]);
      entries.push_back({"parameter " + std::to_string(k) + " '" + p.name() + "' " +
                             p.shape().to_string() + " element " + std::to_string(e),
                         parameter_grads[k][static_cast<std::size_t>(e)], numeric});
    }
  }
  double scale = 0.0;
  for (const auto& entry : entries) scale = std::max(scale, std::abs(entry.numeric));
  const double floor = std::max(options.relative_floor * scale, 1e-300);
  GradientCheckResult result;
  result.checked = entries.size();
  for (const auto& entry : entries) {
    const double denominator =
        std::max({std::abs(entry.analytic), std::abs(entry.numeric), floor});
    double error = std::abs(entry.analytic - entry.numeric) / denominator;
    if (!std::isfinite(entry.analytic) || !std::isfinite(entry.numeric)) error = INFINITY;
    if (error > result.max_error || (result.worst.empty() && error == result.max_error)) {
      result.max_error = error;
      std::ostringstream where;
      where.precision(10);
      where << entry.where << ": analytic " << entry.analytic << ", numeric " << entry.numeric;
      result.worst = where.str();
    }
  }
  result.passed = result.max_error <= options.tolerance;
  return result;
}

// The gradients of the block's forward with respect to x and every parameter
// of the block. A block that takes a CallContext is called with `context`
// (layer 0, step 0, training, not a replay, no extra inputs by default); it is
// called many times, so it must be a pure function of its arguments (as the
// Block concept asks).
template <class Block>
GradientCheckResult check_block_gradients(Block& block, const Tensor<double>& input,
                                          const GradientCheckOptions& options = {},
                                          const CallContext<double>& context = CallContext<double>()) {
  static_assert(std::is_same_v<typename Block::Scalar, double>,
                "check_block_gradients needs a double-precision block");
  return check_gradients(
      [&block, context](Tape<double>& tape, const std::vector<Var<double>>& x) {
        return detail::call_block(block, tape, x[0], context, "momnet::check_block_gradients");
      },
      {input}, parameters_of(block), options);
}

}  // namespace momnet
