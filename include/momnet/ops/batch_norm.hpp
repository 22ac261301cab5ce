// Batch normalisation over axis 1 of [N, C], [N, C, L] or [N, C, H, W], as
// torch.nn.functional.batch_norm:
//
//   y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c
//
// with the batch's per-channel mean and biased variance when `training` (or
// when no running statistics are given), else running_mean and running_var.
// weight and bias are [C] Vars, or empty Vars for none (affine = false).
//
// Unlike F.batch_norm, the op changes no state: the running-statistics update
// is update_running_statistics(), fed with the BatchNormStatistics the op
// reports. That keeps the op a pure function of its inputs, as a block inside
// MomentumResidual must be (block.hpp), and lets the caller decide when to
// update (the layers in layers/batch_norm.hpp skip a replay).
//
// Statistics are accumulated in double, in a fixed order
// (kernels/batch_norm.hpp): the same input gives the same bits.
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/fixed_point.hpp"
#include "momnet/kernels/batch_norm.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// The batch statistics a batch_norm call normalised with, per channel.
struct BatchNormStatistics {
  std::vector<double> mean;
  std::vector<double> variance;  // biased: squared deviations summed over count
  // Values per channel (N * L, N * H * W); 0 when the call used the running
  // statistics or the batch was empty, and then there is nothing to update.
  Eigen::Index count = 0;
};

namespace detail {

// batch_norm, with `operation` naming the caller in errors.
template <class T>
Var<T> batch_norm_named(const char* operation, const Var<T>& x, const Tensor<T>* running_mean,
                        const Tensor<T>* running_var, const Var<T>& weight, const Var<T>& bias, bool training,
                        double eps, BatchNormStatistics* statistics) {
  Tape<T>& tape = common_tape(operation, x);
  if (weight.valid()) common_tape(operation, x, weight);
  if (bias.valid()) common_tape(operation, x, bias);
  const Shape shape = x.shape();
  if (shape.rank() < 2) {
    throw_shape(operation, shape, "expected an input of rank 2, 3 or 4 ([N, C], [N, C, L] or [N, C, H, W])");
  }
  const kernels::BatchNormGeometry s{shape.dim(0), shape.dim(1), shape.split(1).inner};
  const Shape channels{s.channels};
  const auto check_channels = [&](const Shape& given, const char* what) {
    if (given != channels) {
      throw std::invalid_argument(std::string(operation) + ": " + what + " must be [C] = " + channels.to_string() +
                                  " for an input of " + shape.to_string() + ", got " + given.to_string());
    }
  };
  if (weight.valid()) check_channels(weight.shape(), "the weight");
  if (bias.valid()) check_channels(bias.shape(), "the bias");
  if ((running_mean == nullptr) != (running_var == nullptr)) {
    throw std::invalid_argument(std::string(operation) +
                                ": running_mean and running_var must be given together (or neither)");
  }
  if (running_mean != nullptr) {
    check_channels(running_mean->shape(), "running_mean");
    check_channels(running_var->shape(), "running_var");
  }
  if (!(is_finite_bits(eps) && eps > 0.0)) {  // bit test: survives -ffast-math
    throw std::invalid_argument(std::string(operation) + ": eps must be positive and finite, got " +
                                precise_string(eps));
  }
  const bool batch = training || running_mean == nullptr;
  // PyTorch's rule: one value per channel has no spread to normalise by.
  if (batch && s.count() == 1) {
    throw std::invalid_argument(std::string(operation) +
                                ": Expected more than 1 value per channel when training, got input size " +
                                shape.to_string());
  }

  // Saved for the reverse rule: the per-channel mean and invstd (2C doubles).
  // x̂ is recomputed from x, which the tape keeps anyway as this node's input,
  // so the node stores nothing of batch size beyond its output.
  double* mean = tape.template allocate_as<double>(s.channels);
  double* invstd = tape.template allocate_as<double>(s.channels);  // holds the variance until made invstd
  if (!batch) {
    for (Eigen::Index c = 0; c < s.channels; ++c) {
      mean[c] = static_cast<double>(running_mean->data()[c]);
      invstd[c] = static_cast<double>(running_var->data()[c]);
    }
  } else if (s.count() > 0) {
    kernels::batch_norm_statistics(x.data(), s, mean, invstd);
  } else {
    // An empty batch: nothing to normalise, but the reverse rule still reads
    // finite numbers (its sums over no values are 0).
    for (Eigen::Index c = 0; c < s.channels; ++c) mean[c] = invstd[c] = 0.0;
  }
  if (statistics != nullptr) {
    statistics->mean.clear();
    statistics->variance.clear();
    statistics->count = 0;
    if (batch && s.count() > 0) {
      statistics->mean.assign(mean, mean + s.channels);
      statistics->variance.assign(invstd, invstd + s.channels);
      statistics->count = s.count();
    }
  }
  for (Eigen::Index c = 0; c < s.channels; ++c) invstd[c] = 1.0 / std::sqrt(invstd[c] + eps);

  const T* px = x.data();
  const T* pw = weight.valid() ? weight.data() : nullptr;
  T* y = tape.allocate(shape.size());
  kernels::batch_norm_forward(px, y, s, mean, invstd, pw, bias.valid() ? bias.data() : nullptr);
  return tape.record_op({x, weight, bias}, shape, y, [=](Gradients<T>& g) {
    kernels::batch_norm_backward(g.output(0), px, s, mean, invstd, pw, batch, g.input(0), g.input(1), g.input(2));
  });
}

}  // namespace detail

// F.batch_norm(x, running_mean, running_var, weight, bias, training, eps)
// without the running-statistics update. running_mean and running_var are
// [C] tensors, or both null (batch statistics always); weight and bias are
// [C] Vars on x's tape, or empty Vars. When `statistics` is not null it
// receives the batch statistics used (count 0 if none), for
// update_running_statistics().
//
// Reverse rule: with batch statistics, the full gradient through the mean and
// variance; with running statistics, the affine map's.
//
// Throws std::invalid_argument naming momnet::batch_norm for a rank other
// than 2 to 4, weight, bias or running statistics not [C], eps <= 0, and (as
// PyTorch) batch statistics over one value per channel.
template <class T>
Var<T> batch_norm(const Var<T>& x, const Tensor<typename Var<T>::Scalar>* running_mean,  // T from x alone,
                  const Tensor<typename Var<T>::Scalar>* running_var,   // so nullptr passes
                  const Var<T>& weight = Var<T>(), const Var<T>& bias = Var<T>(), bool training = false,
                  double eps = 1e-5, BatchNormStatistics* statistics = nullptr) {
  return detail::batch_norm_named("momnet::batch_norm", x, running_mean, running_var, weight, bias, training, eps,
                                  statistics);
}

// PyTorch's running-statistics update with factor f (the momentum, or
// 1 / num_batches_tracked for a cumulative average):
//   running_mean = (1 - f) running_mean + f mean
//   running_var  = (1 - f) running_var  + f variance * count / (count - 1)
// (the unbiased variance, although the normalisation used the biased one).
// Does nothing when batch.count is 0 (no batch statistics, or an empty batch).
template <class T>
void update_running_statistics(Tensor<T>& running_mean, Tensor<T>& running_var, const BatchNormStatistics& batch,
                               double factor) {
  if (batch.count == 0) return;
  const char* operation = "momnet::update_running_statistics";
  const Shape channels{static_cast<Eigen::Index>(batch.mean.size())};
  if (running_mean.shape() != channels || running_var.shape() != channels ||
      batch.variance.size() != batch.mean.size()) {
    throw std::invalid_argument(std::string(operation) + ": running_mean " + running_mean.shape().to_string() +
                                " and running_var " + running_var.shape().to_string() +
                                " must match the batch statistics' " + channels.to_string());
  }
  if (batch.count < 2) {
    throw std::invalid_argument(std::string(operation) + ": the unbiased variance needs 2 or more values per "
                                "channel, got " + std::to_string(batch.count));
  }
  const double unbias = static_cast<double>(batch.count) / static_cast<double>(batch.count - 1);
  for (std::size_t c = 0; c < batch.mean.size(); ++c) {
    T& m = running_mean.data()[c];
    T& v = running_var.data()[c];
    m = static_cast<T>((1.0 - factor) * static_cast<double>(m) + factor * batch.mean[c]);
    v = static_cast<T>((1.0 - factor) * static_cast<double>(v) + factor * batch.variance[c] * unbias);
  }
}

}  // namespace momnet
