// Data-parallel training, as PyTorch's DistributedDataParallel: every rank
// holds a replica of the model, computes the gradients of its own share of
// the batch, and the gradients are averaged over the ranks before the
// optimiser step, which every rank then takes alike. The replicas stay
// identical, and with a per-rank batch of B / P (DistributedSampler) a step
// equals a single process's step on the whole batch of B, to rounding.
//
//   DistributedDataParallel ddp(model, world);          // rank 0's state to every rank
//   SGD<float> sgd(parameters_of(model), {0.1});
//   for (...) {
//     sgd.zero_grad();
//     const float loss = ddp.step([&] {                  // every rank, its own batch
//       Tape<float> tape;
//       const Var<float> l = mse(model(tape, tape.constant(x)), tape.constant(y));
//       tape.backward(l);
//       return l.item();
//     });                                                // gradients now averaged
//     sgd.step();
//   }
//
// Construction broadcasts rank `root`'s parameters and buffers (the ranks'
// models must have the same layout). step(f) then:
//   1. broadcasts the root's buffers (running statistics) when
//      broadcast_buffers is set, as PyTorch does before each forward pass, so
//      that every rank's BatchNorm sees the same statistics;
//   2. runs f() (forward and backward on this rank's batch);
//   3. agrees on the outcome (agreement.hpp): if f threw on any rank, every
//      rank throws a CollectiveError naming it, and no rank is left waiting;
//   4. averages the gradients (gradient_reducer.hpp), in buckets of
//      bucket_bytes, after the backward pass.
// A rank that never reaches step 3 (it hangs, or crashed without ending the
// job) makes the others end the job after timeout_seconds.
//
// Gradient accumulation: run several forward/backward passes inside one f
// (or call synchronize_gradients() yourself after the last one); only then
// are gradients averaged. The model must outlive this object; its parameter
// list is taken at construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>

#include "momnet/distributed/agreement.hpp"
#include "momnet/distributed/broadcast.hpp"
#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/gradient_reducer.hpp"
#include "momnet/module.hpp"

namespace momnet::distributed {

struct DataParallelOptions {
  // PyTorch's bucket_cap_mb default: 25 MiB.
  std::size_t bucket_bytes = std::size_t{25} << 20;
  // The root's buffers to every rank before each step.
  bool broadcast_buffers = true;
  // How long a rank waits at a step's agreement for the others; PyTorch's
  // default process-group timeout is 30 minutes. 0: no limit.
  double timeout_seconds = 1800.0;
  // The rank whose initial state (and buffers) the others take.
  int root = 0;
};

template <class Model>
class DistributedDataParallel {
 public:
  using Scalar = typename Model::Scalar;

  // Collective: every rank of `comm` constructs its own, at the same point.
  DistributedDataParallel(Model& model, const Communicator& comm, DataParallelOptions options = {})
      : model_(&model), comm_(checked(comm, options).duplicate()), options_(options),
        reducer_(comm_, parameters_of(model), ReducerOptions{options.bucket_bytes, true}),
        has_buffers_(!named_buffers(model).empty()) {
    broadcast_state(comm_, model, options_.root);
  }
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  Model& module() noexcept { return *model_; }
  // The communicator this object's collectives run on (its own duplicate).
  const Communicator& communicator() const noexcept { return comm_; }
  GradientReducer<Scalar>& reducer() noexcept { return reducer_; }
  const DataParallelOptions& options() const noexcept { return options_; }
  // The number of steps (and synchronize_gradients() calls) that completed.
  std::uint64_t steps() const noexcept { return steps_; }

  // See the top of this file. Returns what forward_backward returns.
  template <class F>
  auto step(F&& forward_backward) {
    if (options_.broadcast_buffers && has_buffers_) broadcast_buffers(comm_, *model_, options_.root);
    if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
      run_agreed(comm_, step_name(), options_.timeout_seconds, forward_backward);
      reduce();
    } else {
      auto result = run_agreed(comm_, step_name(), options_.timeout_seconds, forward_backward);
      reduce();
      return result;
    }
  }

  // Steps 3 and 4 alone, for code that runs its own passes: `failure` is the
  // exception this rank's passes threw, or null. Every rank must call it.
  void synchronize_gradients(const std::exception_ptr& failure = nullptr) {
    agree(comm_, step_name(), failure, options_.timeout_seconds);
    reduce();
  }

 private:
  static const Communicator& checked(const Communicator& comm, const DataParallelOptions& options) {
    const std::string who = "momnet::distributed::DistributedDataParallel";
    detail::check_timeout(options.timeout_seconds, who.c_str());
    if (options.root < 0 || options.root >= comm.size()) {
      throw std::invalid_argument(who + ": root rank " + std::to_string(options.root) + " is outside [0, " +
                                  std::to_string(comm.size()) + ")");
    }
    return comm;
  }

  std::string step_name() const {
    return "momnet::distributed::DistributedDataParallel: step " + std::to_string(steps_);
  }

  void reduce() {
    reducer_.reduce();
    ++steps_;
  }

  Model* model_;
  Communicator comm_;
  DataParallelOptions options_;
  GradientReducer<Scalar> reducer_;
  bool has_buffers_;
  std::uint64_t steps_ = 0;
};

}  // namespace momnet::distributed
