// DistributedSampler: shards without overlap that cover the data set, the
// same size on every rank, a new order each epoch from the shared seed, the
// DataLoader's order and stride, and per-rank batches that together form the
// single-process batch.
#include <catch2/catch.hpp>

#include <momnet/distributed/sampler.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <vector>

#include "support.hpp"

using momnet::distributed::DistributedSampler;
using momnet::distributed::DistributedSamplerOptions;

namespace {

std::vector<std::vector<std::int64_t>> shards(std::int64_t n, int replicas, DistributedSamplerOptions options,
                                              std::uint64_t epoch = 0) {
  std::vector<std::vector<std::int64_t>> all;
  for (int r = 0; r < replicas; ++r) {
    DistributedSampler sampler(n, replicas, r, options);
    sampler.set_epoch(epoch);
    REQUIRE(static_cast<std::int64_t>(sampler.indices().size()) == sampler.num_samples());
    all.push_back(sampler.indices());
  }
  return all;
}

}  // namespace

TEST_CASE("DistributedSampler: disjoint shards of equal size that cover the data set", "[distributed][sampler]") {
  for (const bool shuffle : {false, true}) {
    for (const std::int64_t n : {0, 1, 7, 12, 13}) {
      for (const int replicas : {1, 2, 3, 4}) {
        CAPTURE(shuffle, n, replicas);
        // drop_last: floor(n / R) each, all distinct, the order's first R floor(n / R) positions.
        const auto dropped = shards(n, replicas, {shuffle, 9, true});
        std::map<std::int64_t, int> seen;
        for (const auto& s : dropped) {
          CHECK(static_cast<std::int64_t>(s.size()) == n / replicas);
          for (std::int64_t i : s) ++seen[i];
        }
        CHECK(static_cast<std::int64_t>(seen.size()) == n / replicas * replicas);
        for (const auto& [index, count] : seen) {
          CHECK(count == 1);
          CHECK((index >= 0 && index < n));
        }
        // Padding: ceil(n / R) each, every index at least once, ceil * R - n repeats.
        const auto padded = shards(n, replicas, {shuffle, 9, false});
        seen.clear();
        for (const auto& s : padded) {
          CHECK(static_cast<std::int64_t>(s.size()) == (n + replicas - 1) / replicas);
          for (std::int64_t i : s) ++seen[i];
        }
        CHECK(static_cast<std::int64_t>(seen.size()) == n);
        int repeats = 0;
        for (const auto& [index, count] : seen) repeats += count - 1;
        CHECK(repeats == (n + replicas - 1) / replicas * replicas - n);
      }
    }
  }
}

TEST_CASE("DistributedSampler: a new order each epoch, the same on every rank for a seed", "[distributed][sampler]") {
  const std::int64_t n = 40;
  DistributedSampler a(n, 2, 0, {true, 3, false}), b(n, 2, 0, {true, 3, false});
  const auto epoch0 = a.indices();
  a.set_epoch(1);
  CHECK(a.epoch() == 1);
  CHECK(a.indices() != epoch0);
  a.set_epoch(0);
  CHECK(a.indices() == epoch0);  // an epoch's order is a function of (seed, epoch) alone
  CHECK(b.indices() == epoch0);
  DistributedSampler other_seed(n, 2, 0, {true, 4, false});
  CHECK(other_seed.indices() != epoch0);
  DistributedSampler in_order(n, 2, 1, {false, 3, false});
  for (std::size_t k = 0; k < in_order.indices().size(); ++k) {
    CHECK(in_order.indices()[k] == static_cast<std::int64_t>(2 * k + 1));
  }
}

TEST_CASE("DistributedSampler follows the DataLoader's order and stride", "[distributed][sampler]") {
  // 12 one-pixel images whose value is their index.
  momnet::Tensor<double> images(momnet::Shape{12, 1, 1, 1});
  for (Eigen::Index i = 0; i < 12; ++i) images.data()[i] = static_cast<double>(i);
  const momnet::ImageDataset<double> dataset(images, std::vector<int>(12, 0));
  for (int replicas : {1, 2, 3, 4}) {
    for (int rank = 0; rank < replicas; ++rank) {
      momnet::DataLoaderOptions options;
      options.shuffle = true;
      options.seed = 21;
      options.num_replicas = replicas;
      options.rank = rank;
      momnet::DataLoader<double> loader(dataset, options);
      DistributedSampler sampler(12, replicas, rank, {true, 21, false});
      for (std::uint64_t epoch : {0, 5}) {
        loader.set_epoch(epoch);
        sampler.set_epoch(epoch);
        CHECK(loader.order() == sampler.indices());
      }
    }
  }
}

TEST_CASE("DistributedSampler: per-rank batches of B / R form the single-process batch of B",
          "[distributed][sampler]") {
  const std::int64_t n = 48, global_batch = 12;
  const std::vector<std::int64_t> order = momnet::epoch_order(n, true, 8, 2);
  for (int replicas : {1, 2, 3, 4}) {
    const std::int64_t local_batch = global_batch / replicas;
    const auto all = shards(n, replicas, {true, 8, true}, 2);
    for (std::int64_t step = 0; step < n / global_batch; ++step) {
      std::vector<std::int64_t> together;
      for (const auto& shard : all) {
        together.insert(together.end(), shard.begin() + step * local_batch, shard.begin() + (step + 1) * local_batch);
      }
      std::vector<std::int64_t> single(order.begin() + step * global_batch, order.begin() + (step + 1) * global_batch);
      std::sort(together.begin(), together.end());
      std::sort(single.begin(), single.end());
      CHECK(together == single);
    }
  }
}

TEST_CASE("DistributedSampler refuses bad arguments", "[distributed][sampler]") {
  REQUIRE_THROWS_EXACT(DistributedSampler(-1, 2, 0), std::invalid_argument,
                       "momnet::distributed::DistributedSampler: dataset_size must be >= 0, got -1");
  REQUIRE_THROWS_EXACT(DistributedSampler(10, 0, 0), std::invalid_argument,
                       "momnet::distributed::DistributedSampler: num_replicas must be positive, got 0");
  REQUIRE_THROWS_EXACT(DistributedSampler(10, 2, 2), std::invalid_argument,
                       "momnet::distributed::DistributedSampler: rank 2 is outside [0, num_replicas = 2)");
  REQUIRE_THROWS_EXACT(DistributedSampler(10, 2, -1), std::invalid_argument,
                       "momnet::distributed::DistributedSampler: rank -1 is outside [0, num_replicas = 2)");
}
