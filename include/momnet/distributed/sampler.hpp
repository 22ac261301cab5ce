// The indices of a data set that one rank trains on in an epoch, as PyTorch's
// DistributedSampler: the epoch's order is a permutation drawn from a shared
// seed and the epoch (the same on every rank, different each epoch), and rank
// r of R takes positions r, r + R, r + 2R, ... of it. The shards are disjoint
// and together cover the data set.
//
//   DistributedSampler sampler(n, world.size(), world.rank(), {/*shuffle=*/true, /*seed=*/1});
//   for (std::uint64_t epoch = 0; epoch < epochs; ++epoch) {
//     sampler.set_epoch(epoch);
//     const auto& mine = sampler.indices();   // num_samples() indices
//     ...
//   }
//
// The order is epoch_order(n, shuffle, seed, epoch) and the stride the
// DataLoader's (data/batch_iterator.hpp), so a DataLoader with
// num_replicas = R, rank = r and the same seed visits exactly indices() when R
// divides n. Unlike that loader, the sampler gives every rank the same number
// of samples, so that every rank runs the same number of steps (a rank with
// one step more would wait in its allreduce forever): with drop_last it drops
// the order's last n mod R positions; without, as PyTorch, it pads the order
// by repeating its first positions up to a multiple of R (a few samples then
// count twice in an epoch).
//
// With a per-rank batch of b = B / R, the ranks' batches k together hold the
// positions [kB, (k+1)B) of the order: exactly a single process's batch k of
// size B. That is what makes data-parallel steps equal single-process ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/data/batch_iterator.hpp"

namespace momnet::distributed {

struct DistributedSamplerOptions {
  bool shuffle = true;
  std::uint64_t seed = 0;  // must be the same on every rank
  bool drop_last = false;
};

class DistributedSampler {
 public:
  DistributedSampler(std::int64_t dataset_size, int num_replicas, int rank, DistributedSamplerOptions options = {})
      : dataset_size_(dataset_size), num_replicas_(num_replicas), rank_(rank), options_(options) {
    const std::string who = "momnet::distributed::DistributedSampler";
    if (dataset_size < 0) {
      throw std::invalid_argument(who + ": dataset_size must be >= 0, got " + std::to_string(dataset_size));
    }
    if (num_replicas <= 0) {
      throw std::invalid_argument(who + ": num_replicas must be positive, got " + std::to_string(num_replicas));
    }
    if (rank < 0 || rank >= num_replicas) {
      throw std::invalid_argument(who + ": rank " + std::to_string(rank) + " is outside [0, num_replicas = " +
                                  std::to_string(num_replicas) + ")");
    }
    const std::int64_t r = num_replicas;
    num_samples_ = options_.drop_last ? dataset_size / r : (dataset_size + r - 1) / r;
    set_epoch(0);
  }

  // Draws the order of `epoch` (call it before each epoch, as PyTorch's
  // set_epoch: otherwise every epoch repeats epoch 0's order).
  void set_epoch(std::uint64_t epoch) {
    epoch_ = epoch;
    const std::vector<std::int64_t> order = epoch_order(dataset_size_, options_.shuffle, options_.seed, epoch);
    indices_.clear();
    indices_.reserve(static_cast<std::size_t>(num_samples_));
    const auto total = static_cast<std::size_t>(total_size());
    for (std::size_t p = static_cast<std::size_t>(rank_); p < total; p += static_cast<std::size_t>(num_replicas_)) {
      indices_.push_back(order[p % order.size()]);  // p >= n only when padding: wrap to the start
    }
  }
  std::uint64_t epoch() const noexcept { return epoch_; }

  // This rank's indices for the epoch, num_samples() of them.
  const std::vector<std::int64_t>& indices() const noexcept { return indices_; }
  // Samples per rank and epoch (the same on every rank).
  std::int64_t num_samples() const noexcept { return num_samples_; }
  // Samples per epoch over all ranks: num_samples() * num_replicas().
  std::int64_t total_size() const noexcept { return num_samples_ * num_replicas_; }
  std::int64_t dataset_size() const noexcept { return dataset_size_; }
  int num_replicas() const noexcept { return num_replicas_; }
  int rank() const noexcept { return rank_; }
  const DistributedSamplerOptions& options() const noexcept { return options_; }

 private:
  std::int64_t dataset_size_;
  int num_replicas_;
  int rank_;
  DistributedSamplerOptions options_;
  std::int64_t num_samples_ = 0;
  std::uint64_t epoch_ = 0;
  std::vector<std::int64_t> indices_;
};

}  // namespace momnet::distributed
