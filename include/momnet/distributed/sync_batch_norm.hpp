// SyncBatchNorm: batch normalisation with the statistics of the whole batch
// across the ranks, as torch.nn.SyncBatchNorm. With data parallelism each
// rank sees B / P samples; plain BatchNorm normalises by those alone (noisier
// statistics, and running statistics that differ between ranks).
// SyncBatchNorm sums each channel's values and squared deviations over the
// ranks, so that P ranks with B / P samples each normalise exactly as one
// process with all B would, and every rank's running statistics stay equal.
//
// Same parameters, buffers, names and options as BatchNorm1d/2d
// (layers/batch_norm.hpp: `weight`, `bias`, `running_mean`, `running_var`,
// `num_batches_tracked`), on inputs of rank 2 to 4 ([N, C], [N, C, L],
// [N, C, H, W]). Eval mode uses the running statistics and communicates
// nothing.
//
// In training mode the forward pass makes two allreduces of C + 1 and C
// doubles, the backward pass one of 2C: they are collective, so every rank
// must call the layer the same number of times, in the same order, and each
// call must reach the backward pass on every rank or on none (the same graph
// on every rank does that). Inside MomentumResidual's exact backward the
// layer is called again to rebuild its block: every rank rebuilds the same
// layers in the same order, and the sums, of the same values, come back with
// the same bits. The running statistics change once per training call, not on
// a replay (call_context.hpp), with the global count's unbiased variance.
//
// Gradients (with g = dL/dy of this rank's loss, M the global count):
// the input's is w invstd (g - sum_all g / M - x̂ sum_all(g x̂) / M), the sums
// over every rank; weight's and bias's are this rank's sums of g x̂ and g,
// which DistributedDataParallel then averages like every other gradient.
// Averaged over the ranks, that is the gradient of the mean of the ranks'
// losses, as with PyTorch's SyncBatchNorm under DistributedDataParallel.
//
// The layer works on its own duplicate of the communicator it is given. Its
// collective calls wait at most `timeout_seconds` (then end the job, as
// agreement.hpp): a rank that failed before reaching them cannot leave the
// others waiting forever.
#pragma once

#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/call_context.hpp"
#include "momnet/distributed/agreement.hpp"
#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/error.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/kernels/batch_norm.hpp"
#include "momnet/layers/batch_norm.hpp"
#include "momnet/ops/batch_norm.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/parameter.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet::distributed {

namespace detail {

// values[0, count) summed over the ranks, in place, waiting at most
// timeout_seconds.
inline void sum_over_ranks(const Communicator& comm, double* values, int count, double timeout_seconds,
                           const char* where) {
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, comm.handle(), &request), where,
            "MPI_Iallreduce");
  wait_bounded(request, comm, timeout_seconds, std::string("in ") + where + "'s allreduce");
}

// Channel c's sum of value(k) over this rank's values, in the kernels' fixed order.
template <class Value>
double channel_sum(const kernels::BatchNormGeometry& s, Eigen::Index c, Value&& value) {
  return kernels::batch_norm_detail::channel_sum(s, c, std::forward<Value>(value));
}

// Training-mode batch normalisation with statistics summed over the ranks.
template <class T>
Var<T> sync_batch_norm(const char* name, const Communicator& comm, double timeout_seconds, const Var<T>& x,
                       const Var<T>& weight, const Var<T>& bias, double eps, BatchNormStatistics* statistics) {
  Tape<T>& tape = momnet::detail::common_tape(name, x);
  const Shape shape = x.shape();
  const kernels::BatchNormGeometry s{shape.dim(0), shape.dim(1), shape.split(1).inner};
  const Eigen::Index channels = s.channels;
  const T* px = x.data();

  // The global mean: every rank's sums and counts, summed.
  std::vector<double> sums(static_cast<std::size_t>(channels) + 1);
  for (Eigen::Index c = 0; c < channels; ++c) {
    sums[static_cast<std::size_t>(c)] =
        channel_sum(s, c, [px](Eigen::Index k) { return static_cast<double>(px[k]); });
  }
  sums[static_cast<std::size_t>(channels)] = static_cast<double>(s.count());
  sum_over_ranks(comm, sums.data(), static_cast<int>(sums.size()), timeout_seconds, name);
  const double count = sums[static_cast<std::size_t>(channels)];
  // Every rank has the same count here, so every rank throws alike.
  if (count <= 1) {
    throw std::invalid_argument(std::string(name) + ": Expected more than 1 value per channel when training, got " +
                                std::to_string(static_cast<std::int64_t>(count)) + " over the " +
                                std::to_string(comm.size()) + " rank(s) (this rank's input is " + shape.to_string() +
                                ")");
  }
  double* mean = tape.template allocate_as<double>(channels);
  double* invstd = tape.template allocate_as<double>(channels);
  for (Eigen::Index c = 0; c < channels; ++c) mean[c] = sums[static_cast<std::size_t>(c)] / count;

  // The global variance, from squared deviations about the global mean (two
  // passes, as the kernels: no E[x^2] - E[x]^2 cancellation).
  std::vector<double> squares(static_cast<std::size_t>(channels));
  for (Eigen::Index c = 0; c < channels; ++c) {
    const double m = mean[c];
    squares[static_cast<std::size_t>(c)] = channel_sum(s, c, [px, m](Eigen::Index k) {
      const double d = static_cast<double>(px[k]) - m;
      return d * d;
    });
  }
  sum_over_ranks(comm, squares.data(), static_cast<int>(channels), timeout_seconds, name);
  if (statistics != nullptr) {
    statistics->mean.assign(mean, mean + channels);
    statistics->variance.resize(static_cast<std::size_t>(channels));
    for (Eigen::Index c = 0; c < channels; ++c) {
      statistics->variance[static_cast<std::size_t>(c)] = squares[static_cast<std::size_t>(c)] / count;
    }
    statistics->count = static_cast<Eigen::Index>(count);
  }
  for (Eigen::Index c = 0; c < channels; ++c) {
    invstd[c] = 1.0 / std::sqrt(squares[static_cast<std::size_t>(c)] / count + eps);
  }

  const T* pw = weight.valid() ? weight.data() : nullptr;
  T* y = tape.allocate(shape.size());
  kernels::batch_norm_forward(px, y, s, mean, invstd, pw, bias.valid() ? bias.data() : nullptr);
  return tape.record_op({x, weight, bias}, shape, y, [=](Gradients<T>& g) {
    const T* gy = g.output(0);
    // This rank's sums of g and g (x - mean), per channel; then every rank's.
    std::vector<double> local(2 * static_cast<std::size_t>(channels));
    for (Eigen::Index c = 0; c < channels; ++c) {
      double lane_g[4] = {0.0, 0.0, 0.0, 0.0}, lane_gd[4] = {0.0, 0.0, 0.0, 0.0};
      const double m = mean[c];
      kernels::batch_norm_detail::for_lanes(s, c, [&](Eigen::Index k, int j) {
        const double gk = static_cast<double>(gy[k]);
        lane_g[j] += gk;
        lane_gd[j] += gk * (static_cast<double>(px[k]) - m);
      });
      local[2 * static_cast<std::size_t>(c)] = kernels::batch_norm_detail::total(lane_g);
      local[2 * static_cast<std::size_t>(c) + 1] = kernels::batch_norm_detail::total(lane_gd);
    }
    std::vector<double> global = local;
    sum_over_ranks(comm, global.data(), static_cast<int>(global.size()), timeout_seconds, name);
    T* gx = g.input(0);
    T* gweight = g.input(1);
    T* gbias = g.input(2);
    for (Eigen::Index c = 0; c < channels; ++c) {
      const double r = invstd[c];
      if (gbias != nullptr) gbias[c] += static_cast<T>(local[2 * static_cast<std::size_t>(c)]);
      if (gweight != nullptr) gweight[c] += static_cast<T>(r * local[2 * static_cast<std::size_t>(c) + 1]);
      if (gx == nullptr) continue;
      const double m = mean[c];
      const double scale = r * (pw != nullptr ? static_cast<double>(pw[c]) : 1.0);
      const double mean_g = global[2 * static_cast<std::size_t>(c)] / count;
      const double slope = r * r * global[2 * static_cast<std::size_t>(c) + 1] / count;
      kernels::batch_norm_detail::for_channel(s, c, [=](Eigen::Index k) {
        const double d = static_cast<double>(px[k]) - m;
        gx[k] += static_cast<T>(scale * (static_cast<double>(gy[k]) - mean_g - d * slope));
      });
    }
  });
}

}  // namespace detail

template <class T>
class SyncBatchNorm {
 public:
  using Scalar = T;

  // Collective (it duplicates `comm`): every rank constructs its own.
  SyncBatchNorm(Eigen::Index num_features, const Communicator& comm, BatchNormOptions options = {},
                double timeout_seconds = 1800.0)
      : comm_(checked(comm, num_features, options, timeout_seconds).duplicate()), num_features_(num_features),
        options_(options), timeout_seconds_(timeout_seconds),
        weight_(options.affine ? filled_parameter(1, "weight") : Parameter<T>()),
        bias_(options.affine ? filled_parameter(0, "bias") : Parameter<T>()),
        running_mean_(filled_buffer(options.track_running_stats, 0)),
        running_var_(filled_buffer(options.track_running_stats, 1)),
        num_batches_tracked_(options.track_running_stats ? Shape{} : Shape{0}) {}

  // In a stack: mode from the context; statistics updated only when training
  // and not a replay.
  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    return run(tape, x, context.training, context.training && !context.replay);
  }
  // Alone: the layer's own mode; statistics updated when training.
  Var<T> forward(Tape<T>& tape, const Var<T>& x) { return run(tape, x, training_, training_); }

  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }

  // Names as torch.nn.SyncBatchNorm's (and BatchNorm's) state_dict.
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
  const Communicator& communicator() const noexcept { return comm_; }
  Parameter<T>& weight() { return member(weight_, options_.affine, "weight", "affine"); }
  Parameter<T>& bias() { return member(bias_, options_.affine, "bias", "affine"); }
  Tensor<T>& running_mean() { return member(running_mean_, options_.track_running_stats, "running_mean", "track_running_stats"); }
  Tensor<T>& running_var() { return member(running_var_, options_.track_running_stats, "running_var", "track_running_stats"); }
  Tensor<std::int64_t>& num_batches_tracked() {
    return member(num_batches_tracked_, options_.track_running_stats, "num_batches_tracked", "track_running_stats");
  }

 private:
  static constexpr const char* name_ = "momnet::distributed::SyncBatchNorm";

  // Validates the arguments before the collective duplicate of `comm`.
  static const Communicator& checked(const Communicator& comm, Eigen::Index num_features,
                                     const BatchNormOptions& options, double timeout_seconds) {
    if (num_features <= 0) {
      throw std::invalid_argument(std::string(name_) + ": num_features must be positive, got " +
                                  std::to_string(num_features));
    }
    if (!(is_finite_bits(options.eps) && options.eps > 0.0)) {
      throw std::invalid_argument(std::string(name_) + ": eps must be positive and finite, got " +
                                  precise_string(options.eps));
    }
    const double m = options.momentum.value_or(0.0);
    if (!(is_finite_bits(m) && m >= 0.0 && m <= 1.0)) {
      throw std::invalid_argument(std::string(name_) + ": momentum must lie in [0, 1] (or be std::nullopt), got " +
                                  precise_string(m));
    }
    detail::check_timeout(timeout_seconds, name_);
    return comm;
  }

  Parameter<T> filled_parameter(int fill, const char* name) const {
    Parameter<T> p(Shape{num_features_}, name);
    p.array().setConstant(static_cast<T>(fill));
    return p;
  }
  Tensor<T> filled_buffer(bool present, int fill) const {
    Tensor<T> t(Shape{present ? num_features_ : 0});
    t.array().setConstant(static_cast<T>(fill));
    return t;
  }
  template <class Member>
  Member& member(Member& m, bool present, const char* what, const char* option) {
    if (!present) {
      throw std::logic_error(std::string(name_) + "::" + what + ": this layer has " + option + " = false");
    }
    return m;
  }

  Var<T> run(Tape<T>& tape, const Var<T>& x, bool training, bool update) {
    momnet::detail::common_tape(name_, x);
    const Shape shape = x.shape();
    if (shape.rank() < 2 || shape.rank() > 4) {
      momnet::detail::throw_shape(name_, shape, "expected an input of rank 2, 3 or 4 ([N, C], [N, C, L] or [N, C, H, W])");
    }
    if (shape.dim(1) != num_features_) {
      throw std::invalid_argument(std::string(name_) + ": expected " + std::to_string(num_features_) +
                                  " channels (dimension 1), got an input of " + shape.to_string());
    }
    const bool track = options_.track_running_stats;
    const Var<T> weight = options_.affine ? tape.param(weight_) : Var<T>();
    const Var<T> bias = options_.affine ? tape.param(bias_) : Var<T>();
    if (!training) {
      // Eval communicates nothing: the running statistics, or without them
      // this rank's batch statistics (as PyTorch).
      return momnet::detail::batch_norm_named(name_, x, track ? &running_mean_ : nullptr,
                                              track ? &running_var_ : nullptr, weight, bias, false, options_.eps,
                                              nullptr);
    }
    update = update && track;
    BatchNormStatistics batch;
    const Var<T> y = detail::sync_batch_norm(name_, comm_, timeout_seconds_, x, weight, bias, options_.eps,
                                             update ? &batch : nullptr);
    if (update) {
      const std::int64_t tracked = ++num_batches_tracked_.data()[0];
      const double factor = options_.momentum ? *options_.momentum : 1.0 / static_cast<double>(tracked);
      update_running_statistics(running_mean_, running_var_, batch, factor);
    }
    return y;
  }

  Communicator comm_;
  Eigen::Index num_features_;
  BatchNormOptions options_;
  double timeout_seconds_;
  Parameter<T> weight_, bias_;
  Tensor<T> running_mean_, running_var_;
  Tensor<std::int64_t> num_batches_tracked_;
  bool training_ = true;
};

}  // namespace momnet::distributed
