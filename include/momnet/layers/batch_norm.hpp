// BatchNorm1d ([N, C] or [N, C, L]) and BatchNorm2d ([N, C, H, W]) with
// torch.nn.BatchNorm's semantics and state_dict names: parameters `weight`
// (ones) and `bias` (zeros) when affine; buffers `running_mean` (zeros),
// `running_var` (ones) and `num_batches_tracked` (an int64 scalar) when
// track_running_stats.
//
// Training normalises with the batch's statistics and updates the running
// ones (ops/batch_norm.hpp has the formulas); eval normalises with the
// running ones. Without track_running_stats there are no buffers and batch
// statistics are used in both modes.
//
// As a block inside a stack, the layer follows the context: its mode is
// context.training, and it updates its statistics only when the call is not
// a replay, so MomentumResidual's exact backward, which calls every block
// again on the rebuilt input, changes them once per training step, as the
// stored mode and Residual do. The replay gives the same bits: the batch
// statistics are a deterministic function of the rebuilt input, bitwise equal
// to the original. Called outside a stack, forward(tape, x) follows the
// layer's own mode (set_training, momnet::train / eval).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "momnet/call_context.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/ops/batch_norm.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/parameter.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

struct BatchNormOptions {
  double eps = 1e-5;
  // The running statistics' update factor; std::nullopt gives a cumulative
  // moving average (factor 1 / num_batches_tracked), PyTorch's momentum=None.
  std::optional<double> momentum = 0.1;
  bool affine = true;               // learnable weight and bias
  bool track_running_stats = true;  // running statistics, used in eval mode
};

namespace detail {

// What BatchNorm1d and BatchNorm2d share; they differ in the ranks they take.
template <class T>
class BatchNormLayer {
 public:
  using Scalar = T;

  // In a stack: mode from the context; statistics updated only when
  // training and not a replay.
  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    return run(tape, x, context.training, context.training && !context.replay);
  }
  // Alone: the layer's own mode; statistics updated when training.
  Var<T> forward(Tape<T>& tape, const Var<T>& x) { return run(tape, x, training_, training_); }

  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }

  // Names as torch.nn.BatchNorm2d's state_dict.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    if (options_.affine) {
      visit.parameter("weight", weight_);
      visit.parameter("bias", bias_);
    }
    if (options_.track_running_stats) {
      visit.buffer("running_mean", running_mean_);
      visit.buffer("running_var", running_var_);
      visit.buffer("num_batches_tracked", num_batches_tracked_);
    }
  }

  Eigen::Index num_features() const noexcept { return num_features_; }
  const BatchNormOptions& options() const noexcept { return options_; }
  Parameter<T>& weight() { return affine_only(weight_, "weight"); }
  Parameter<T>& bias() { return affine_only(bias_, "bias"); }
  Tensor<T>& running_mean() { return tracked_only(running_mean_, "running_mean"); }
  Tensor<T>& running_var() { return tracked_only(running_var_, "running_var"); }
  Tensor<std::int64_t>& num_batches_tracked() { return tracked_only(num_batches_tracked_, "num_batches_tracked"); }

 protected:
  BatchNormLayer(const char* name, int min_rank, int max_rank, const char* layout, Eigen::Index num_features,
                 const BatchNormOptions& options)
      : name_(name), min_rank_(min_rank), max_rank_(max_rank), layout_(layout),
        num_features_(checked_features(name, num_features)), options_(checked_options(name, options)),
        weight_(parameter_if(options_.affine, 1, "weight")), bias_(parameter_if(options_.affine, 0, "bias")),
        running_mean_(buffer_if(options_.track_running_stats, 0)),
        running_var_(buffer_if(options_.track_running_stats, 1)),
        num_batches_tracked_(options_.track_running_stats ? Shape{} : Shape{0}) {}

 private:
  static Eigen::Index checked_features(const char* name, Eigen::Index num_features) {
    if (num_features <= 0) {
      throw std::invalid_argument(std::string(name) + ": num_features must be positive, got " +
                                  std::to_string(num_features));
    }
    return num_features;
  }
  static BatchNormOptions checked_options(const char* name, const BatchNormOptions& options) {
    if (!(is_finite_bits(options.eps) && options.eps > 0.0)) {
      throw std::invalid_argument(std::string(name) + ": eps must be positive and finite, got " +
                                  precise_string(options.eps));
    }
    const double m = options.momentum.value_or(0.0);
    if (!(is_finite_bits(m) && m >= 0.0 && m <= 1.0)) {
      throw std::invalid_argument(std::string(name) + ": momentum must lie in [0, 1] (or be std::nullopt), got " +
                                  precise_string(*options.momentum));
    }
    return options;
  }

  // [num_features] filled with `fill`, or an empty one when the layer has none.
  Parameter<T> parameter_if(bool present, int fill, const char* name) const {
    if (!present) return Parameter<T>();
    Parameter<T> p(Shape{num_features_}, name);
    p.array().setConstant(static_cast<T>(fill));
    return p;
  }
  Tensor<T> buffer_if(bool present, int fill) const {
    Tensor<T> t(Shape{present ? num_features_ : 0});
    t.array().setConstant(static_cast<T>(fill));
    return t;
  }

  template <class Member>
  Member& affine_only(Member& member, const char* what) {
    if (!options_.affine) {
      throw std::logic_error(std::string(name_) + "::" + what + ": this layer has affine = false");
    }
    return member;
  }
  template <class Member>
  Member& tracked_only(Member& member, const char* what) {
    if (!options_.track_running_stats) {
      throw std::logic_error(std::string(name_) + "::" + what + ": this layer has track_running_stats = false");
    }
    return member;
  }

  Var<T> run(Tape<T>& tape, const Var<T>& x, bool training, bool update) {
    common_tape(name_, x);
    const Shape shape = x.shape();
    if (shape.rank() < min_rank_ || shape.rank() > max_rank_) {
      throw_shape(name_, shape, std::string("expected an input ") + layout_);
    }
    if (shape.dim(1) != num_features_) {
      throw std::invalid_argument(std::string(name_) + ": expected " + std::to_string(num_features_) +
                                  " channels (dimension 1), got an input of " + shape.to_string());
    }
    const bool track = options_.track_running_stats;
    update = update && track;
    BatchNormStatistics batch;
    const Var<T> y = batch_norm_named(name_, x, track ? &running_mean_ : nullptr, track ? &running_var_ : nullptr,
                                      options_.affine ? tape.param(weight_) : Var<T>(),
                                      options_.affine ? tape.param(bias_) : Var<T>(), training, options_.eps,
                                      update ? &batch : nullptr);
    if (update) {
      // As PyTorch: the count moves on every training call, an empty batch
      // included, and the cumulative average divides by the new count.
      const std::int64_t tracked = ++num_batches_tracked_.data()[0];
      const double factor = options_.momentum ? *options_.momentum : 1.0 / static_cast<double>(tracked);
      update_running_statistics(running_mean_, running_var_, batch, factor);
    }
    return y;
  }

  const char* name_;
  int min_rank_, max_rank_;
  const char* layout_;
  Eigen::Index num_features_;
  BatchNormOptions options_;
  Parameter<T> weight_, bias_;
  Tensor<T> running_mean_, running_var_;
  Tensor<std::int64_t> num_batches_tracked_;
  bool training_ = true;
};

}  // namespace detail

// Batch normalisation of [N, C] or [N, C, L] over each channel C.
template <class T>
class BatchNorm1d : public detail::BatchNormLayer<T> {
 public:
  explicit BatchNorm1d(Eigen::Index num_features, BatchNormOptions options = {})
      : detail::BatchNormLayer<T>("momnet::BatchNorm1d", 2, 3, "of rank 2 or 3 ([N, C] or [N, C, L])", num_features,
                                  options) {}
};

// Batch normalisation of [N, C, H, W] over each channel C.
template <class T>
class BatchNorm2d : public detail::BatchNormLayer<T> {
 public:
  explicit BatchNorm2d(Eigen::Index num_features, BatchNormOptions options = {})
      : detail::BatchNormLayer<T>("momnet::BatchNorm2d", 4, 4, "of rank 4 ([N, C, H, W])", num_features, options) {}
};

}  // namespace momnet
