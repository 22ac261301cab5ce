// Gradient averaging over the ranks in flat buckets, as PyTorch's
// DistributedDataParallel reducer: the parameters are grouped, in reverse
// order (the order a backward pass finishes them in), into buckets of about
// `bucket_bytes`; each bucket's gradients are copied into one flat buffer,
// summed over the ranks by one MPI_Iallreduce and divided by the number of
// ranks. One large message per bucket instead of one per parameter: a few
// hundred small allreduces cost their latency each.
//
//   GradientReducer<float> reducer(comm.duplicate(), parameters_of(model));
//   tape.backward(loss);
//   reducer.reduce();   // every gradient is now the average over the ranks
//   optimiser.step();
//
// Overlap. mark_ready(p) says p's gradient is final for this step; when the
// last parameter of a bucket is marked, that bucket's allreduce starts at
// once, while the caller goes on computing the gradients of the next ones
// (call poll() now and then: MPI progresses a non-blocking collective only
// inside MPI calls). Buckets start in bucket order on every rank, whatever
// order they become ready in (collective calls must match across ranks): a
// bucket ready early waits for the ones before it. finish() marks what is
// left, waits and writes the averages back. reduce() is the whole reduction
// after the backward pass, for a step in which nothing was marked. momnet's
// tape has no per-parameter "gradient final" hook yet, so
// DistributedDataParallel reduces after backward (docs/distributed.md
// describes the hook overlap needs).
//
// Sums over two ranks are exact in order (a + b == b + a in IEEE arithmetic);
// dividing by a power of two is exact, so with P = 2 or 4 the average is the
// correctly rounded mean of the ranks' gradients.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/error.hpp"
#include "momnet/parameter.hpp"

namespace momnet::distributed {

struct ReducerOptions {
  // PyTorch's default bucket_cap_mb: 25 MiB. A parameter larger than a
  // bucket gets one of its own.
  std::size_t bucket_bytes = std::size_t{25} << 20;
  // Divide the sums by the number of ranks (false: leave the sums).
  bool average = true;
};

template <class T>
class GradientReducer {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "momnet::distributed::GradientReducer supports float and double");

 public:
  struct Bucket {
    std::vector<std::size_t> parameters;  // indices into parameters(), in packing order
    std::size_t elements = 0;
  };

  GradientReducer(Communicator comm, std::vector<Parameter<T>*> parameters, ReducerOptions options = {})
      : comm_(std::move(comm)), parameters_(std::move(parameters)), options_(options) {
    const char* who = "momnet::distributed::GradientReducer";
    if (options_.bucket_bytes == 0) {
      throw std::invalid_argument(std::string(who) + ": bucket_bytes must be positive, got 0");
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (parameters_[i] == nullptr) {
        throw std::invalid_argument(std::string(who) + ": null parameter at position " + std::to_string(i));
      }
      if (!index_.emplace(parameters_[i], i).second) {
        throw std::invalid_argument(std::string(who) + ": parameter " + label(i) + " appears twice, at positions " +
                                    std::to_string(index_[parameters_[i]]) + " and " + std::to_string(i) +
                                    "; its gradient would be averaged twice");
      }
    }
    const std::size_t capacity = std::max<std::size_t>(1, options_.bucket_bytes / sizeof(T));
    for (std::size_t i = parameters_.size(); i-- > 0;) {
      const auto size = static_cast<std::size_t>(parameters_[i]->size());
      if (buckets_.empty() || (buckets_.back().elements > 0 && buckets_.back().elements + size > capacity)) {
        buckets_.emplace_back();
      }
      buckets_.back().parameters.push_back(i);
      buckets_.back().elements += size;
    }
    bucket_of_.resize(parameters_.size());
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      for (std::size_t i : buckets_[b].parameters) bucket_of_[i] = b;
    }
    flat_.resize(buckets_.size());
    requests_.resize(buckets_.size());
    reset();
  }
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  // Reductions still in flight cannot be cancelled: wait for them, since MPI
  // would write into freed buffers.
  ~GradientReducer() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (auto& list : requests_) {
      if (!list.empty()) MPI_Waitall(static_cast<int>(list.size()), list.data(), MPI_STATUSES_IGNORE);
    }
  }

  const Communicator& communicator() const noexcept { return comm_; }
  const std::vector<Parameter<T>*>& parameters() const noexcept { return parameters_; }
  const ReducerOptions& options() const noexcept { return options_; }
  std::size_t bucket_count() const noexcept { return buckets_.size(); }
  const Bucket& bucket(std::size_t b) const {
    if (b >= buckets_.size()) {
      throw std::out_of_range("momnet::distributed::GradientReducer::bucket: bucket " + std::to_string(b) + " of " +
                              std::to_string(buckets_.size()));
    }
    return buckets_[b];
  }
  // The gradient bytes each rank sends into the reduction per step.
  std::size_t bytes_per_step() const noexcept {
    std::size_t n = 0;
    for (const Bucket& b : buckets_) n += b.elements;
    return n * sizeof(T);
  }

  // p's gradient is final for this step. Throws std::invalid_argument for a
  // parameter the reducer does not hold, std::logic_error for one marked
  // twice in a step.
  void mark_ready(const Parameter<T>& p) {
    const char* who = "momnet::distributed::GradientReducer::mark_ready";
    const auto found = index_.find(&p);
    if (found == index_.end()) {
      throw std::invalid_argument(std::string(who) + ": parameter " +
                                  (p.name().empty() ? "of shape " + p.shape().to_string() : "'" + p.name() + "'") +
                                  " is not one of the reducer's " + std::to_string(parameters_.size()));
    }
    const std::size_t i = found->second;
    if (ready_[i]) {
      throw std::logic_error(std::string(who) + ": parameter " + label(i) +
                             " was marked ready twice in one step (a parameter used several times, as a weight-tied "
                             "block's, is final only after its last use: mark it then)");
    }
    ready_[i] = true;
    const std::size_t b = bucket_of_[i];
    if (++pending_ready_[b] == buckets_[b].parameters.size()) launch_ready();
  }

  // Drives the reductions in flight (MPI_Test); returns true when none is left.
  bool poll() {
    bool all = true;
    for (std::size_t b = 0; b < launched_; ++b) {
      auto& list = requests_[b];
      if (list.empty()) continue;
      int done = 0;
      check_mpi(MPI_Testall(static_cast<int>(list.size()), list.data(), &done, MPI_STATUSES_IGNORE),
                "momnet::distributed::GradientReducer::poll", "MPI_Testall");
      all = all && done != 0;
    }
    return all;
  }

  // Marks every parameter not yet marked, waits for every bucket's reduction
  // and writes the averaged (or summed) gradients into the parameters. Every
  // rank must call it, once per step.
  void finish() {
    const char* who = "momnet::distributed::GradientReducer::finish";
    if (comm_.size() > 1) {
      for (std::size_t b = 0; b < buckets_.size(); ++b) pending_ready_[b] = buckets_[b].parameters.size();
      launch_ready();
    }
    for (std::size_t b = 0; b < launched_; ++b) {
      auto& list = requests_[b];
      if (!list.empty()) {
        check_mpi(MPI_Waitall(static_cast<int>(list.size()), list.data(), MPI_STATUSES_IGNORE), who, "MPI_Waitall");
      }
      list.clear();
      unpack(b);
    }
    reset();
  }

  // The whole reduction after the backward pass, for a step in which nothing
  // was marked: one blocking MPI_Allreduce per bucket, in bucket order (Open
  // MPI's blocking collectives pick faster algorithms than its non-blocking
  // ones, and with nothing left to overlap there is nothing to gain from
  // those). A step is either marked (mark_ready, finish) or reduced, the same
  // way on every rank: MPI does not match a blocking collective with a
  // non-blocking one.
  void reduce() {
    const char* who = "momnet::distributed::GradientReducer::reduce";
    for (bool ready : ready_) {
      if (ready) {
        throw std::logic_error(std::string(who) + ": parameters were marked ready in this step; finish() it "
                               "(every rank must reduce a step the same way)");
      }
    }
    if (comm_.size() > 1) {
      for (std::size_t b = 0; b < buckets_.size(); ++b) {
        pack(b);
        comm_.allreduce_sum(flat_[b].data(), flat_[b].size(), who);
        unpack(b);
      }
    }
    reset();
  }

 private:
  std::string label(std::size_t i) const {
    const Parameter<T>& p = *parameters_[i];
    return (p.name().empty() ? "#" + std::to_string(i) : "'" + p.name() + "'") + " (" + p.shape().to_string() + ")";
  }

  void reset() {
    ready_.assign(parameters_.size(), false);
    pending_ready_.assign(buckets_.size(), 0);
    launched_ = 0;
  }

  // Starts, in bucket order, every bucket whose parameters are all ready.
  void launch_ready() {
    if (comm_.size() == 1) {  // one rank: the sum is the gradient itself
      launched_ = buckets_.size();
      return;
    }
    while (launched_ < buckets_.size() && pending_ready_[launched_] == buckets_[launched_].parameters.size()) {
      launch(launched_++);
    }
  }

  // The bucket's gradients into its flat buffer.
  void pack(std::size_t b) {
    const Bucket& bucket = buckets_[b];
    std::vector<T>& flat = flat_[b];
    flat.resize(bucket.elements);
    T* out = flat.data();
    for (std::size_t i : bucket.parameters) {
      Parameter<T>& p = *parameters_[i];
      out = std::copy(p.grad_data(), p.grad_data() + p.size(), out);
    }
  }

  void launch(std::size_t b) {
    pack(b);
    std::vector<T>& flat = flat_[b];
    Communicator::for_each_chunk(buckets_[b].elements, [&](std::size_t offset, int n) {
      requests_[b].emplace_back(MPI_REQUEST_NULL);
      check_mpi(MPI_Iallreduce(MPI_IN_PLACE, flat.data() + offset, n, mpi_datatype<T>(), MPI_SUM, comm_.handle(),
                               &requests_[b].back()),
                "momnet::distributed::GradientReducer", "MPI_Iallreduce");
    });
  }

  void unpack(std::size_t b) {
    if (comm_.size() == 1) {
      return;
    }
    const T* in = flat_[b].data();
    const T ranks = static_cast<T>(comm_.size());
    for (std::size_t i : buckets_[b].parameters) {
      Parameter<T>& p = *parameters_[i];
      T* grad = p.grad_data();
      const auto n = static_cast<std::size_t>(p.size());
      if (options_.average) {
        for (std::size_t k = 0; k < n; ++k) grad[k] = in[k] / ranks;
      } else {
        std::copy(in, in + n, grad);
      }
      in += n;
    }
  }

  Communicator comm_;
  std::vector<Parameter<T>*> parameters_;
  ReducerOptions options_;
  std::unordered_map<const Parameter<T>*, std::size_t> index_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;
  std::vector<std::vector<T>> flat_;
  std::vector<std::vector<MPI_Request>> requests_;
  std::vector<bool> ready_;
  std::vector<std::size_t> pending_ready_;
  std::size_t launched_ = 0;
};

}  // namespace momnet::distributed
