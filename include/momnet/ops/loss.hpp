// Losses, each the mean over the batch: cross-entropy of logits against
// integer class labels, and the mean squared error.
#pragma once

#include <string>
#include <vector>

#include "momnet/ops/checks.hpp"
#include "momnet/ops/softmax.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

// -mean_i log softmax(logits)_i[labels[i]]; logits is [batch, classes].
template <class T>
Var<T> cross_entropy(const Var<T>& logits, const std::vector<int>& labels) {
  const char* name = "momnet::cross_entropy";
  Tape<T>& tape = detail::common_tape(name, logits);
  const Shape shape = logits.shape();
  if (shape.rank() != 2) detail::throw_shape(name, shape, "logits must be rank 2 [batch, classes]");
  const Eigen::Index batch = shape.dim(0), classes = shape.dim(1);
  if (static_cast<Eigen::Index>(labels.size()) != batch) {
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(labels.size()) +
                                " labels for a batch of " + std::to_string(batch) + " (logits " +
                                shape.to_string() + ")");
  }
  if (batch == 0) detail::throw_shape(name, shape, "needs a non-empty batch");
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      throw std::invalid_argument(std::string(name) + ": label " + std::to_string(labels[i]) +
                                  " at index " + std::to_string(i) + " is outside [0, " +
                                  std::to_string(classes) + ")");
    }
  }
  // The log-probabilities stay on the tape for the backward pass.
  T* log_probs = tape.allocate(shape.size());
  detail::log_softmax_rows(logits.data(), log_probs, shape);
  int* kept_labels = tape.template allocate_as<int>(batch);
  std::copy(labels.begin(), labels.end(), kept_labels);
  T total = 0;
  for (Eigen::Index i = 0; i < batch; ++i) total -= log_probs[i * classes + kept_labels[i]];
  T* out = tape.allocate(1);
  out[0] = total / T(batch);
  return tape.record(Shape{}, out, {logits}, [=](const T* g) {
    const T factor = g[0] / T(batch);
    auto GX = matrix_view(logits.tape().gradient_for(logits), shape);
    GX.array() += matrix_view(static_cast<const T*>(log_probs), shape).array().exp() * factor;
    for (Eigen::Index i = 0; i < batch; ++i) GX(i, kept_labels[i]) -= factor;
  });
}

// mean((a - b)^2) over every element; a and b have the same shape.
template <class T>
Var<T> mse(const Var<T>& a, const Var<T>& b) {
  const char* name = "momnet::mse";
  Tape<T>& tape = detail::common_tape(name, a, b);
  const Shape shape = a.shape();
  if (shape != b.shape()) detail::throw_shapes(name, shape, b.shape(), "shapes differ");
  const Eigen::Index n = shape.size();
  if (n == 0) detail::throw_shape(name, shape, "needs at least one element");
  const T* pa = a.data();
  const T* pb = b.data();
  T* out = tape.allocate(1);
  out[0] = (array_view(pa, n) - array_view(pb, n)).square().sum() / T(n);
  return tape.record(Shape{}, out, {a, b}, [=](const T* g) {
    const T factor = T(2) * g[0] / T(n);
    if (a.requires_grad()) {
      array_view(a.tape().gradient_for(a), n) += factor * (array_view(pa, n) - array_view(pb, n));
    }
    if (b.requires_grad()) {
      array_view(b.tape().gradient_for(b), n) -= factor * (array_view(pa, n) - array_view(pb, n));
    }
  });
}

}  // namespace momnet
