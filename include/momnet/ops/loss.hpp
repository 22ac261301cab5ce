// Losses: cross-entropy of logits against integer class labels (PyTorch's
// ignore_index and mean or sum reduction), and the mean squared error.
//
// An empty batch, or one whose every label is ignored, gives a loss of 0 with
// a zero gradient. PyTorch returns NaN for the mean over no rows; momnet does
// not, because a NaN loss makes Tape::backward throw, and a batch made only
// of padding is an ordinary event (the end of a data set, masked sequences)
// that should contribute nothing rather than stop training.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "momnet/kernels/softmax.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {

// How a loss combines its per-sample terms.
enum class Reduction {
  mean,  // their mean (over the rows not ignored)
  sum,   // their sum
};

struct CrossEntropyOptions {
  // Rows whose label equals this contribute neither loss nor gradient, and
  // are not counted by the mean (PyTorch's default, -100).
  int ignore_index = -100;
  Reduction reduction = Reduction::mean;
};

// -log softmax(logits)[i, labels[i]], reduced over the rows i whose label is
// not options.ignore_index; logits is [batch, classes].
template <class T>
Var<T> cross_entropy(const Var<T>& logits, const std::vector<int>& labels, const CrossEntropyOptions& options = {}) {
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
  const int ignore = options.ignore_index;
  Eigen::Index counted = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] == ignore) continue;
    if (labels[i] < 0 || labels[i] >= classes) {
      throw std::invalid_argument(std::string(name) + ": label " + std::to_string(labels[i]) + " at index " +
                                  std::to_string(i) + " is outside [0, " + std::to_string(classes) +
                                  ") (logits " + shape.to_string() + ", ignore_index " + std::to_string(ignore) +
                                  ")");
    }
    ++counted;
  }
  if (classes == 0 && batch != 0) detail::throw_shape(name, shape, "needs at least one class");
  // The log-probabilities stay on the tape for the backward pass.
  const AxisSplit rows{batch, classes, 1};
  T* log_probs = tape.allocate(shape.size());
  kernels::log_softmax(logits.data(), log_probs, rows, static_cast<T*>(nullptr));
  int* kept_labels = tape.template allocate_as<int>(batch);
  std::copy(labels.begin(), labels.end(), kept_labels);
  T total = 0;
  for (Eigen::Index i = 0; i < batch; ++i) {
    if (kept_labels[i] != ignore) total -= log_probs[i * classes + kept_labels[i]];
  }
  // The mean over no rows is taken as 0 (see the header comment).
  const T divisor = options.reduction == Reduction::mean && counted > 0 ? T(counted) : T(1);
  T* out = tape.allocate(1);
  out[0] = total / divisor;
  return tape.record_op({logits}, Shape{}, out, [=](Gradients<T>& g) {
    T* gx = g.input(0);
    if (gx == nullptr) return;
    const T factor = g.output(0)[0] / divisor;
    for (Eigen::Index i = 0; i < batch; ++i) {
      if (kept_labels[i] == ignore) continue;
      T* row = gx + i * classes;
      const T* lp = log_probs + i * classes;
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>(row, classes) +=
          Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>(lp, classes).exp() * factor;
      row[kept_labels[i]] -= factor;
    }
  });
}

// mean((a - b)^2) over every element; a and b have the same shape. Empty
// values give 0 (see the header comment).
template <class T>
Var<T> mse(const Var<T>& a, const Var<T>& b) {
  const char* name = "momnet::mse";
  Tape<T>& tape = detail::common_tape(name, a, b);
  const Shape shape = a.shape();
  if (shape != b.shape()) detail::throw_shapes(name, shape, b.shape(), "shapes differ");
  const Eigen::Index n = shape.size();
  const T* pa = a.data();
  const T* pb = b.data();
  T* out = tape.allocate(1);
  out[0] = n == 0 ? T(0) : (array_view(pa, n) - array_view(pb, n)).square().sum() / T(n);
  return tape.record_op({a, b}, Shape{}, out, [=](Gradients<T>& g) {
    if (n == 0) return;
    const T factor = T(2) * g.output(0)[0] / T(n);
    if (T* ga = g.input(0)) array_view(ga, n) += factor * (array_view(pa, n) - array_view(pb, n));
    if (T* gb = g.input(1)) array_view(gb, n) -= factor * (array_view(pa, n) - array_view(pb, n));
  });
}

}  // namespace momnet
