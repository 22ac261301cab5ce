// DistributedDataParallel on the ranks of MPI_COMM_WORLD: P ranks with a
// per-rank batch of B / P take the steps a single process takes with the
// whole batch B (the MLP momentum stack in exact mode: double to 1e-12
// relative), a rank that throws in a step makes every rank throw, and the
// root's buffers reach every rank before each step.
#include <catch2/catch.hpp>

#include <momnet/distributed/distributed.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

namespace md = momnet::distributed;
using momnet::Sequential;
using momnet::Tensor;

namespace {

md::Communicator world() { return md::Communicator::world().duplicate(); }

// The MLP momentum stack of the headline benchmark, small: 6 MLP blocks
// (width 4, hidden 8, tanh) in exact mode, gamma 0.9, and a linear head.
template <class T>
Sequential<T> momentum_mlp(std::uint64_t seed) {
  momnet::Rng rng(seed);
  std::vector<momnet::MLPBlock<T>> blocks;
  for (int i = 0; i < 6; ++i) blocks.emplace_back(4, 8, rng);
  momnet::MomentumOptions options;
  options.gamma = 0.9;
  options.mode = momnet::BackwardMode::exact;
  Sequential<T> model;
  model.add(momnet::MomentumResidual<momnet::MLPBlock<T>>(std::move(blocks), options));
  model.add(momnet::Linear<T>(4, 1, rng));
  return model;
}

template <class T>
Tensor<T> random_tensor(const momnet::Shape& shape, std::uint64_t seed) {
  Tensor<T> t(shape);
  momnet::Rng rng(seed);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(rng.uniform(-1, 1));
  return t;
}

// Rows `indices[first, first + count)` of `data`.
template <class T>
Tensor<T> rows(const Tensor<T>& data, const std::vector<std::int64_t>& indices, std::size_t first, std::size_t count) {
  const Eigen::Index width = data.shape().dim(1);
  Tensor<T> out(momnet::Shape{static_cast<Eigen::Index>(count), width});
  for (std::size_t k = 0; k < count; ++k) {
    std::copy_n(data.data() + indices[first + k] * width, width, out.data() + static_cast<Eigen::Index>(k) * width);
  }
  return out;
}

// One forward and backward pass of the mean squared error on a batch.
template <class T>
T forward_backward(Sequential<T>& model, const Tensor<T>& x, const Tensor<T>& y) {
  momnet::Tape<T> tape;
  const momnet::Var<T> loss = momnet::mse(model(tape, tape.constant(x)), tape.constant(y));
  tape.backward(loss);
  return loss.item();
}

// max |a - b| / max |b| over all parameters.
template <class T>
double relative_difference(Sequential<T>& a, Sequential<T>& b) {
  const auto pa = momnet::parameters_of(a), pb = momnet::parameters_of(b);
  REQUIRE(pa.size() == pb.size());
  double difference = 0, scale = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    difference = std::max(difference, static_cast<double>((pa[i]->array() - pb[i]->array()).abs().maxCoeff()));
    scale = std::max(scale, static_cast<double>(pb[i]->array().abs().maxCoeff()));
  }
  return difference / scale;
}

// k steps of SGD with momentum on P ranks (per-rank batch B / P, from the
// DistributedSampler) and in one process (batch B, the same epoch order);
// returns the relative difference of the parameters at the end.
template <class T>
double data_parallel_against_single(int steps) {
  const md::Communicator comm = world();
  const std::int64_t global_batch = 12, n = global_batch * steps;
  if (global_batch % comm.size() != 0) return 0;  // P must divide B (ctest runs 1, 2, 3)
  const auto local_batch = static_cast<std::size_t>(global_batch / comm.size());
  const Tensor<T> x = random_tensor<T>(momnet::Shape{n, 4}, 1);
  const Tensor<T> y = random_tensor<T>(momnet::Shape{n, 1}, 2);
  const momnet::SGDOptions sgd_options{0.1, 0.9};
  const std::uint64_t seed = 5;

  // The single process, on every rank.
  Sequential<T> single = momentum_mlp<T>(11);
  const Sequential<T> initial = single;
  momnet::SGD<T> single_sgd(momnet::parameters_of(single), sgd_options);
  const std::vector<std::int64_t> order = momnet::epoch_order(n, true, seed, 0);
  for (int s = 0; s < steps; ++s) {
    single_sgd.zero_grad();
    const auto count = static_cast<std::size_t>(global_batch);
    forward_backward(single, rows(x, order, s * count, count), rows(y, order, s * count, count));
    single_sgd.step();
  }

  // P ranks, each initialised differently: the broadcast must give them rank 0's start.
  Sequential<T> model = momentum_mlp<T>(11 + 1000 * static_cast<std::uint64_t>(comm.rank()));
  md::DistributedDataParallel<Sequential<T>> ddp(model, comm);
  momnet::SGD<T> sgd(momnet::parameters_of(model), sgd_options);
  md::DistributedSampler sampler(n, comm.size(), comm.rank(), {true, seed, true});
  const auto& mine = sampler.indices();
  for (int s = 0; s < steps; ++s) {
    sgd.zero_grad();
    const std::size_t first = static_cast<std::size_t>(s) * local_batch;
    const T loss = ddp.step([&] { return forward_backward(model, rows(x, mine, first, local_batch),
                                                          rows(y, mine, first, local_batch)); });
    CHECK(std::isfinite(static_cast<double>(loss)));
    sgd.step();
  }
  CHECK(ddp.steps() == static_cast<std::uint64_t>(steps));
  md::check_replicas_equal(comm, model);  // bit for bit on every rank
  Sequential<T> start = initial;
  CHECK(relative_difference(model, start) > 1e-3);  // the steps did move the parameters
  return relative_difference(model, single);
}

}  // namespace

TEST_CASE("P ranks with batch B / P take the steps of one process with batch B (exact momentum MLP)",
          "[distributed][determinism]") {
  SECTION("double: to 1e-12") {
    const double difference = data_parallel_against_single<double>(4);
    CAPTURE(difference);
    CHECK(difference <= 1e-12);
  }
  SECTION("float: to float rounding") {
    const double difference = data_parallel_against_single<float>(4);
    CAPTURE(difference);
    CHECK(difference <= 1e-5);
  }
}

TEST_CASE("a step that throws on one rank throws CollectiveError on every rank; training goes on",
          "[distributed]") {
  const md::Communicator comm = world();
  const int last = comm.size() - 1;
  Sequential<double> model = momentum_mlp<double>(3);
  md::DataParallelOptions options;
  options.timeout_seconds = 30;
  md::DistributedDataParallel<Sequential<double>> ddp(model, comm, options);
  momnet::SGD<double> sgd(momnet::parameters_of(model), {0.05});
  const Tensor<double> x = random_tensor<double>(momnet::Shape{3, 4}, 10 + static_cast<std::uint64_t>(comm.rank()));
  const Tensor<double> y = random_tensor<double>(momnet::Shape{3, 1}, 20 + static_cast<std::uint64_t>(comm.rank()));

  sgd.zero_grad();
  const std::string expected = "momnet::distributed::DistributedDataParallel: step 0: rank " + std::to_string(last) +
                               " of " + std::to_string(comm.size()) +
                               " failed: injected failure after the backward pass";
  REQUIRE_THROWS_EXACT(ddp.step([&] {
                         forward_backward(model, x, y);
                         if (comm.rank() == last) throw std::runtime_error("injected failure after the backward pass");
                       }),
                       md::CollectiveError, expected);
  CHECK(ddp.steps() == 0);
  // The failed step's gradients are partial on some ranks: zero them and go on.
  sgd.zero_grad();
  ddp.step([&] { forward_backward(model, x, y); });
  sgd.step();
  CHECK(ddp.steps() == 1);
  md::check_replicas_equal(comm, model);

  // synchronize_gradients, for code that runs its own passes.
  sgd.zero_grad();
  std::exception_ptr failure;
  try {
    forward_backward(model, x, y);
    if (comm.rank() == 0) throw std::domain_error("rank 0 saw a NaN");
  } catch (...) {
    failure = std::current_exception();
  }
  REQUIRE_THROWS_EXACT(ddp.synchronize_gradients(failure), md::CollectiveError,
                       "momnet::distributed::DistributedDataParallel: step 1: rank 0 of " +
                           std::to_string(comm.size()) + " failed: rank 0 saw a NaN");
}

TEST_CASE("DistributedDataParallel gives every rank the root's buffers before each step", "[distributed]") {
  const md::Communicator comm = world();
  momnet::Rng rng(4 + static_cast<std::uint64_t>(comm.rank()));
  Sequential<double> model;
  model.add(momnet::Linear<double>(4, 3, rng));
  model.add(momnet::BatchNorm1d<double>(3));
  model.add(momnet::Linear<double>(3, 1, rng));
  const Tensor<double> x = random_tensor<double>(momnet::Shape{5, 4}, 30 + static_cast<std::uint64_t>(comm.rank()));
  const Tensor<double> y = random_tensor<double>(momnet::Shape{5, 1}, 40 + static_cast<std::uint64_t>(comm.rank()));

  for (const bool broadcast : {true, false}) {
    md::DataParallelOptions options;
    options.broadcast_buffers = broadcast;
    md::DistributedDataParallel<Sequential<double>> ddp(model, comm, options);
    md::check_replicas_equal(comm, model);  // construction broadcast everything
    momnet::SGD<double> sgd(momnet::parameters_of(model), {0.05});
    for (int s = 0; s < 2; ++s) {
      sgd.zero_grad();
      bool equal_at_start = true;
      ddp.step([&] {
        try {
          md::check_replicas_equal(comm, model);
        } catch (const std::logic_error& e) {
          equal_at_start = false;
          if (std::string(e.what()).find("buffer '1.running_mean' [3]") == std::string::npos) throw;
        }
        forward_backward(model, x, y);
      });
      sgd.step();
      // Each rank's batch moved its own statistics; the next step starts from the root's when broadcasting.
      CHECK(equal_at_start == (broadcast || s == 0 || comm.size() == 1));
      md::check_replicas_equal(comm, model, /*buffers=*/false);
    }
  }
}

TEST_CASE("DistributedDataParallel refuses bad options on every rank", "[distributed]") {
  const md::Communicator comm = world();
  Sequential<double> model = momentum_mlp<double>(1);
  md::DataParallelOptions options;
  options.root = comm.size();
  REQUIRE_THROWS_EXACT((md::DistributedDataParallel<Sequential<double>>(model, comm, options)), std::invalid_argument,
                       "momnet::distributed::DistributedDataParallel: root rank " + std::to_string(comm.size()) +
                           " is outside [0, " + std::to_string(comm.size()) + ")");
  options.root = 0;
  options.timeout_seconds = -2;
  REQUIRE_THROWS_EXACT((md::DistributedDataParallel<Sequential<double>>(model, comm, options)), std::invalid_argument,
                       "momnet::distributed::DistributedDataParallel: timeout_seconds must be >= 0 (0: no limit), "
                       "got -2");
}
