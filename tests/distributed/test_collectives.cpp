// The distributed building blocks on the ranks of MPI_COMM_WORLD (any
// number; ctest runs 1, 2 and 3): the communicator's collectives, status
// agreement, broadcast of parameters and buffers, replica checks and the
// bucketed gradient reducer. Every rank runs every case; rank-dependent
// values make the checks fail if a collective mixed them up.
#include <catch2/catch.hpp>

#include <momnet/distributed/distributed.hpp>
#include <momnet/momnet.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

namespace md = momnet::distributed;
using momnet::Parameter;
using momnet::Shape;

namespace {

md::Communicator world() { return md::Communicator::world().duplicate(); }

// A model with parameters and buffers (real and integer): Linear, BatchNorm1d, Linear.
momnet::Sequential<double> small_model(std::uint64_t seed, Eigen::Index hidden = 3) {
  momnet::Rng rng(seed);
  momnet::Sequential<double> model;
  model.add(momnet::Linear<double>(4, hidden, rng));
  model.add(momnet::BatchNorm1d<double>(hidden));
  model.add(momnet::Linear<double>(hidden, 2, rng));
  return model;
}

}  // namespace

TEST_CASE("Communicator: rank, size and typed collectives", "[distributed]") {
  const md::Communicator comm = world();
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  REQUIRE(comm.rank() == world_rank);
  REQUIRE(comm.size() == world_size);
  REQUIRE(comm.handle() != MPI_COMM_WORLD);  // a duplicate: its own traffic

  const std::vector<int> ranks = comm.allgather(comm.rank() * 10, "test");
  for (int r = 0; r < comm.size(); ++r) CHECK(ranks[static_cast<std::size_t>(r)] == r * 10);

  std::vector<double> values{1.0 + comm.rank(), 2.0 * comm.rank()};
  comm.allreduce_sum(values.data(), values.size(), "test");
  const double p = comm.size();
  CHECK(values[0] == p + p * (p - 1) / 2);
  CHECK(values[1] == p * (p - 1));

  std::string text = comm.rank() == comm.size() - 1 ? "from the last rank" : "";
  comm.broadcast(text, comm.size() - 1, "test");
  CHECK(text == "from the last rank");
  std::int64_t number = comm.rank() == 0 ? -7 : 0;
  comm.broadcast(&number, 1, 0, "test");
  CHECK(number == -7);

  REQUIRE_THROWS_EXACT(comm.broadcast(&number, 1, comm.size(), "momnet::test"), std::invalid_argument,
                       "momnet::test: root rank " + std::to_string(comm.size()) + " is outside [0, " +
                           std::to_string(comm.size()) + ")");
  REQUIRE_THROWS_EXACT(md::Communicator(MPI_COMM_NULL), std::invalid_argument, "MPI_COMM_NULL is not a communicator");
}

TEST_CASE("agree: every rank throws the same CollectiveError when one rank failed", "[distributed]") {
  const md::Communicator comm = world();
  const int last = comm.size() - 1;

  SECTION("every rank succeeded: nothing happens") {
    md::agree(comm, "step 0", nullptr, 10.0);
    CHECK(md::run_agreed(comm, "step 1", 10.0, [&] { return comm.rank() + 1; }) == comm.rank() + 1);
  }
  SECTION("the last rank threw: every rank throws its message") {
    const auto step = [&] {
      if (comm.rank() == last) throw std::runtime_error("injected failure on the last rank");
    };
    const std::string expected = "step 3: rank " + std::to_string(last) + " of " + std::to_string(comm.size()) +
                                 " failed: injected failure on the last rank";
    try {
      md::run_agreed(comm, "step 3", 10.0, step);
      FAIL("run_agreed returned");
    } catch (const md::CollectiveError& e) {
      CHECK(std::string(e.what()) == expected);
      CHECK(e.failed_ranks() == std::vector<int>{last});
    }
  }
  SECTION("several ranks threw: the first one's message, every failed rank listed") {
    if (comm.size() < 2) return;
    std::exception_ptr failure;
    if (comm.rank() == 0 || comm.rank() == last) {
      failure = std::make_exception_ptr(std::invalid_argument("rank " + std::to_string(comm.rank()) + " says no"));
    }
    const std::string expected = "step 4: rank 0 of " + std::to_string(comm.size()) + " failed: rank 0 says no; ranks 0, " +
                                 std::to_string(last) + " failed";
    REQUIRE_THROWS_EXACT(md::agree(comm, "step 4", failure, 10.0), md::CollectiveError, expected);
  }
  SECTION("a bad timeout is refused before any communication") {
    REQUIRE_THROWS_EXACT(md::agree(comm, "x", nullptr, -1.0), std::invalid_argument,
                         "momnet::distributed::agree: timeout_seconds must be >= 0 (0: no limit), got -1");
  }
}

TEST_CASE("broadcast_state gives every rank the root's parameters and buffers", "[distributed]") {
  const md::Communicator comm = world();
  // Each rank initialises differently and has trained its BatchNorm differently.
  auto model = small_model(100 + static_cast<std::uint64_t>(comm.rank()));
  for (auto& [name, buffer] : momnet::named_buffers(model)) {
    if (buffer.real != nullptr) buffer.real->array() += comm.rank();
    if (buffer.integer != nullptr) buffer.integer->data()[0] = 5 + comm.rank();
  }
  if (comm.size() > 1) {
    REQUIRE_THROWS_MATCHES(md::check_replicas_equal(comm, model), std::logic_error,
                           momnet_test::ExceptionIs<std::logic_error>(
                               {"momnet::distributed::check_replicas_equal: the replicas diverged: rank 1's "
                                "parameter '0.weight' [3, 4] differs from rank 0's (largest difference ",
                                "); the ranks did not apply the same updates"}));
  }
  const int root = comm.size() - 1;
  const auto root_model = small_model(100 + static_cast<std::uint64_t>(root));

  SECTION("parameters, then buffers") {
    md::broadcast_parameters(comm, model, root);
    if (comm.size() > 1) {  // buffers still differ
      REQUIRE_THROWS_AS(md::check_replicas_equal(comm, model), std::logic_error);
    }
    md::check_replicas_equal(comm, model, /*buffers=*/false);
    md::broadcast_buffers(comm, model, root);
  }
  SECTION("both at once") { md::broadcast_state(comm, model, root); }

  md::check_replicas_equal(comm, model);
  auto expected = root_model;
  auto got = momnet::named_parameters(model);
  auto want = momnet::named_parameters(expected);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].second->array().isApprox(want[i].second->array(), 0.0));
  }
  for (auto& [name, buffer] : momnet::named_buffers(model)) {
    if (buffer.integer != nullptr) CHECK(buffer.integer->data()[0] == 5 + root);
    if (buffer.real != nullptr) CHECK((buffer.real->array() == (name.find("var") != std::string::npos ? 1 : 0) + root).all());
  }
}

TEST_CASE("a model whose layout differs on one rank is refused on every rank", "[distributed]") {
  const md::Communicator comm = world();
  if (comm.size() < 2) return;
  auto model = small_model(1, comm.rank() == 1 ? 5 : 3);
  REQUIRE_THROWS_EXACT(md::broadcast_state(comm, model), std::invalid_argument,
                       "momnet::distributed::broadcast_state: the model differs between ranks: entry 0 is parameter "
                       "'0.weight' [5, 4] on rank 1 but parameter '0.weight' [3, 4] on rank 0 (every rank must "
                       "build the same model)");
  // An extra entry on one rank.
  momnet::Sequential<double> extra = small_model(1);
  momnet::Rng rng(2);
  if (comm.rank() == 1) extra.add(momnet::Linear<double>(2, 2, rng, false));
  REQUIRE_THROWS_EXACT(md::broadcast_parameters(comm, extra), std::invalid_argument,
                       "rank 1 has 7 entries, rank 0 6; the first extra one is parameter '3.weight' [2, 2]");
}

TEST_CASE("GradientReducer averages gradients over the ranks in buckets", "[distributed]") {
  const md::Communicator comm = world();
  // Sizes 3, 10, 2, 7, 1: with 8 doubles (64 bytes) per bucket the reverse
  // order packs {1, 7}, {2}, {10} (larger than a bucket: its own), {3}.
  std::vector<Parameter<double>> params;
  for (Eigen::Index n : {3, 10, 2, 7, 1}) params.emplace_back(Shape{n}, "p" + std::to_string(params.size()));
  std::vector<Parameter<double>*> list;
  for (auto& p : params) list.push_back(&p);
  const auto fill = [&] {
    for (std::size_t i = 0; i < params.size(); ++i) {
      for (Eigen::Index k = 0; k < params[i].size(); ++k) {
        params[i].grad_data()[k] = static_cast<double>(100 * comm.rank() + 10 * static_cast<int>(i) + k);
      }
    }
  };
  // The mean over the ranks, computed as the reducer does: exact sums of small integers, one division.
  const auto expect = [&](bool average) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      for (Eigen::Index k = 0; k < params[i].size(); ++k) {
        double sum = 0;
        for (int r = 0; r < comm.size(); ++r) sum += 100.0 * r + 10.0 * static_cast<double>(i) + static_cast<double>(k);
        const double want = average ? sum / comm.size() : sum;
        if (params[i].grad_data()[k] != want) {
          FAIL("parameter " << i << " element " << k << ": " << params[i].grad_data()[k] << " != " << want);
        }
      }
    }
  };

  md::GradientReducer<double> reducer(comm, list, {64, true});
  REQUIRE(reducer.bucket_count() == 4);
  CHECK(reducer.bucket(0).parameters == std::vector<std::size_t>{4, 3});
  CHECK(reducer.bucket(1).parameters == std::vector<std::size_t>{2});
  CHECK(reducer.bucket(2).parameters == std::vector<std::size_t>{1});
  CHECK(reducer.bucket(3).parameters == std::vector<std::size_t>{0});
  CHECK(reducer.bytes_per_step() == 23 * sizeof(double));

  SECTION("after backward") {
    fill();
    reducer.reduce();
    expect(true);
    fill();  // the reducer is reusable step after step
    reducer.reduce();
    expect(true);
  }
  SECTION("as gradients become final, out of bucket order; rank-dependent order") {
    fill();
    const std::vector<std::size_t> order = comm.rank() % 2 == 0 ? std::vector<std::size_t>{2, 0, 4, 3}
                                                                 : std::vector<std::size_t>{4, 3, 1, 2};
    for (std::size_t i : order) {
      reducer.mark_ready(params[i]);
      reducer.poll();
    }
    REQUIRE_THROWS_EXACT(reducer.mark_ready(params[order[0]]), std::logic_error,
                         "momnet::distributed::GradientReducer::mark_ready: parameter 'p" + std::to_string(order[0]) +
                             "' ([" + std::to_string(params[order[0]].size()) +
                             "]) was marked ready twice in one step");
    REQUIRE_THROWS_EXACT(reducer.reduce(), std::logic_error,
                         "momnet::distributed::GradientReducer::reduce: parameters were marked ready in this step; "
                         "finish() it (every rank must reduce a step the same way)");
    reducer.finish();  // marks the rest
    expect(true);
    fill();  // the next step may be reduced the other way
    reducer.reduce();
    expect(true);
  }
  SECTION("sums") {
    md::GradientReducer<double> summing(comm, list, {1 << 20, false});
    CHECK(summing.bucket_count() == 1);
    fill();
    summing.reduce();
    expect(false);
  }
  SECTION("bad arguments") {
    Parameter<double> stranger(Shape{2}, "stranger");
    REQUIRE_THROWS_EXACT(reducer.mark_ready(stranger), std::invalid_argument,
                         "momnet::distributed::GradientReducer::mark_ready: parameter 'stranger' is not one of the "
                         "reducer's 5");
    std::vector<Parameter<double>*> twice{list[0], list[1], list[0]};
    REQUIRE_THROWS_EXACT(md::GradientReducer<double>(comm, twice), std::invalid_argument,
                         "momnet::distributed::GradientReducer: parameter 'p0' ([3]) appears twice, at positions 0 "
                         "and 2; its gradient would be averaged twice");
    REQUIRE_THROWS_EXACT(md::GradientReducer<double>(comm, list, {0, true}), std::invalid_argument,
                         "momnet::distributed::GradientReducer: bucket_bytes must be positive, got 0");
    REQUIRE_THROWS_EXACT(md::GradientReducer<double>(comm, {nullptr}), std::invalid_argument,
                         "momnet::distributed::GradientReducer: null parameter at position 0");
    REQUIRE_THROWS_EXACT(reducer.bucket(4), std::out_of_range,
                         "momnet::distributed::GradientReducer::bucket: bucket 4 of 4");
  }
}

TEST_CASE("GradientReducer works in float", "[distributed]") {
  const md::Communicator comm = world();
  Parameter<float> p(Shape{2, 3}, "w");
  for (Eigen::Index k = 0; k < 6; ++k) p.grad_data()[k] = static_cast<float>(comm.rank() + k);
  md::GradientReducer<float> reducer(comm, {&p});
  reducer.reduce();
  const float mean_rank = static_cast<float>(comm.size() - 1) / 2.0f;
  for (Eigen::Index k = 0; k < 6; ++k) CHECK(p.grad_data()[k] == Approx(mean_rank + static_cast<float>(k)));
}
