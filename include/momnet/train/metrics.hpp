// Classification metrics and a running mean, for the evaluation and logging
// side of a training loop (no tape: they read values, record nothing).
//
// Logits are [B, K] (a Var or a Tensor), labels B class indices in [0, K).
// The prediction is torch.argmax's: the first maximum (ties go to the lowest
// index), and a NaN counts as the maximum.
//   count_correct / accuracy    top-1, the fraction of rows predicted right
//   count_top_k / top_k_accuracy  the label ranks among the k largest logits,
//                                 ties ranked by index as argmax does, so
//                                 top-1 equals accuracy
//   RunningMean                 a mean weighted by batch size (epoch losses)
//   ConfusionMatrix             counts[label][prediction]
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/kernels/reduction.hpp"
#include "momnet/ops/reduction.hpp"
#include "momnet/shape.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {
namespace detail {

// Checks logits [B, K] with K >= 1 against B labels in [0, K).
inline void check_classification(const char* name, const Shape& shape, const std::vector<int>& labels) {
  if (shape.rank() != 2 || shape[1] < 1) {
    throw std::invalid_argument(std::string(name) + ": logits must be [batch, classes] with classes >= 1, got " +
                                shape.to_string());
  }
  if (static_cast<Eigen::Index>(labels.size()) != shape[0]) {
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(labels.size()) +
                                " labels for a batch of " + std::to_string(shape[0]) + " (logits " +
                                shape.to_string() + ")");
  }
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= shape[1]) {
      throw std::invalid_argument(std::string(name) + ": label " + std::to_string(labels[i]) + " at index " +
                                  std::to_string(i) + " is outside [0, " + std::to_string(shape[1]) + ")");
    }
  }
}

template <class T>
long count_correct_of(const char* name, const T* data, const Shape& shape, const std::vector<int>& labels) {
  check_classification(name, shape, labels);
  const Tensor<std::int64_t> predicted = argmax_of(name, data, shape, 1, false);
  long correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (predicted.data()[i] == labels[i]) ++correct;
  }
  return correct;
}

// Row i's label is among the k best logits: fewer than k entries beat it,
// where an entry beats the label's if it is larger (a NaN beats a number), or
// equal and at a lower index.
template <class T>
long count_top_k_of(const char* name, const T* data, const Shape& shape, const std::vector<int>& labels, long k) {
  check_classification(name, shape, labels);
  const Eigen::Index classes = shape[1];
  if (k < 1 || k > classes) {
    throw std::invalid_argument(std::string(name) + ": k must lie in [1, " + std::to_string(classes) + "], got " +
                                std::to_string(k));
  }
  long correct = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const T* row = data + static_cast<Eigen::Index>(i) * classes;
    const Eigen::Index label = labels[i];
    const T mine = row[label];
    long ahead = 0;
    for (Eigen::Index j = 0; j < classes && ahead < k; ++j) {
      if (j == label) continue;
      const bool tie = row[j] == mine || (std::isnan(row[j]) && std::isnan(mine));
      if (kernels::detail::beats(row[j], mine) || (tie && j < label)) ++ahead;
    }
    if (ahead < k) ++correct;
  }
  return correct;
}

inline double fraction(const char* name, long count, std::size_t batch) {
  if (batch == 0) throw std::invalid_argument(std::string(name) + ": the accuracy of an empty batch is undefined");
  return static_cast<double>(count) / static_cast<double>(batch);
}

}  // namespace detail

// The number of rows whose argmax is the label.
template <class T>
long count_correct(const Tensor<T>& logits, const std::vector<int>& labels) {
  return detail::count_correct_of("momnet::count_correct", logits.data(), logits.shape(), labels);
}
template <class T>
long count_correct(const Var<T>& logits, const std::vector<int>& labels) {
  return detail::count_correct_of("momnet::count_correct", logits.data(), logits.shape(), labels);
}

// The fraction of rows whose argmax is the label; throws for an empty batch.
template <class T>
double accuracy(const Tensor<T>& logits, const std::vector<int>& labels) {
  const char* name = "momnet::accuracy";
  return detail::fraction(name, detail::count_correct_of(name, logits.data(), logits.shape(), labels), labels.size());
}
template <class T>
double accuracy(const Var<T>& logits, const std::vector<int>& labels) {
  const char* name = "momnet::accuracy";
  return detail::fraction(name, detail::count_correct_of(name, logits.data(), logits.shape(), labels), labels.size());
}

// The number of rows whose label is among the k largest logits.
template <class T>
long count_top_k(const Tensor<T>& logits, const std::vector<int>& labels, long k) {
  return detail::count_top_k_of("momnet::count_top_k", logits.data(), logits.shape(), labels, k);
}
template <class T>
long count_top_k(const Var<T>& logits, const std::vector<int>& labels, long k) {
  return detail::count_top_k_of("momnet::count_top_k", logits.data(), logits.shape(), labels, k);
}

// The fraction of rows whose label is among the k largest logits.
template <class T>
double top_k_accuracy(const Tensor<T>& logits, const std::vector<int>& labels, long k) {
  const char* name = "momnet::top_k_accuracy";
  return detail::fraction(name, detail::count_top_k_of(name, logits.data(), logits.shape(), labels, k),
                          labels.size());
}
template <class T>
double top_k_accuracy(const Var<T>& logits, const std::vector<int>& labels, long k) {
  const char* name = "momnet::top_k_accuracy";
  return detail::fraction(name, detail::count_top_k_of(name, logits.data(), logits.shape(), labels, k),
                          labels.size());
}

// sum(weight * value) / sum(weight): add each batch's mean loss with the
// batch size as its weight, and mean() is the epoch's mean loss per sample
// even when the last batch is short.
class RunningMean {
 public:
  void add(double value, double weight = 1.0) {
    if (!(weight >= 0.0 && std::isfinite(weight))) {
      throw std::invalid_argument("momnet::RunningMean::add: weight must be >= 0 and finite, got " +
                                  std::to_string(weight));
    }
    sum_ += value * weight;
    count_ += weight;
  }
  // Throws std::logic_error before any weight was added (0 / 0).
  double mean() const {
    if (count_ == 0.0) throw std::logic_error("momnet::RunningMean::mean: no values added (total weight 0)");
    return sum_ / count_;
  }
  double sum() const noexcept { return sum_; }
  double count() const noexcept { return count_; }
  void reset() noexcept { sum_ = count_ = 0.0; }

 private:
  double sum_ = 0.0;
  double count_ = 0.0;
};

// counts(label, prediction) over the rows added: rows are true classes,
// columns predicted ones (scikit-learn's layout).
class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int classes) : classes_(classes) {
    if (classes < 1) {
      throw std::invalid_argument("momnet::ConfusionMatrix: classes must be >= 1, got " + std::to_string(classes));
    }
    counts_.assign(static_cast<std::size_t>(classes) * static_cast<std::size_t>(classes), 0);
  }

  template <class T>
  void add(const Tensor<T>& logits, const std::vector<int>& labels) {
    add_rows(logits.data(), logits.shape(), labels);
  }
  template <class T>
  void add(const Var<T>& logits, const std::vector<int>& labels) {
    add_rows(logits.data(), logits.shape(), labels);
  }

  int classes() const noexcept { return classes_; }
  long count(int label, int predicted) const {
    check_class("count", label);
    check_class("count", predicted);
    return counts_[index(label, predicted)];
  }
  long total() const noexcept {
    long n = 0;
    for (long c : counts_) n += c;
    return n;
  }
  // The fraction on the diagonal; throws when empty.
  double accuracy() const {
    long diagonal = 0;
    for (int c = 0; c < classes_; ++c) diagonal += counts_[index(c, c)];
    return detail::fraction("momnet::ConfusionMatrix::accuracy", diagonal, static_cast<std::size_t>(total()));
  }
  void reset() { counts_.assign(counts_.size(), 0); }

 private:
  template <class T>
  void add_rows(const T* data, const Shape& shape, const std::vector<int>& labels) {
    const char* name = "momnet::ConfusionMatrix::add";
    detail::check_classification(name, shape, labels);
    if (shape[1] != classes_) {
      throw std::invalid_argument(std::string(name) + ": logits " + shape.to_string() + " for " +
                                  std::to_string(classes_) + " classes");
    }
    const Tensor<std::int64_t> predicted = detail::argmax_of(name, data, shape, 1, false);
    for (std::size_t i = 0; i < labels.size(); ++i) {
      ++counts_[index(labels[i], static_cast<int>(predicted.data()[i]))];
    }
  }
  std::size_t index(int label, int predicted) const {
    return static_cast<std::size_t>(label) * static_cast<std::size_t>(classes_) + static_cast<std::size_t>(predicted);
  }
  void check_class(const char* what, int c) const {
    if (c < 0 || c >= classes_) {
      throw std::out_of_range(std::string("momnet::ConfusionMatrix::") + what + ": class " + std::to_string(c) +
                              " is outside [0, " + std::to_string(classes_) + ")");
    }
  }

  int classes_;
  std::vector<long> counts_;
};

}  // namespace momnet
