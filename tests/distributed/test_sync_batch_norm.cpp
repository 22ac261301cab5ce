// SyncBatchNorm: on P ranks with B / P samples each it computes what
// BatchNorm computes on the whole batch in one process (outputs, input
// gradients, parameter gradients summed over the ranks, running statistics),
// for ranks 2 and 4 inputs, in eval mode without communicating, and inside a
// momentum stack in exact mode, whose rebuild calls it again on every rank.
// BatchNorm's own gradients are checked by finite differences in
// tests/test_batch_norm.cpp; agreement with it carries that check over.
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
using momnet::Shape;
using momnet::Tensor;

namespace {

md::Communicator world() { return md::Communicator::world().duplicate(); }

// max |a - b| / max(1e-300, max |b|).
double relative(const double* a, const double* b, Eigen::Index n) {
  double difference = 0, scale = 1e-300;
  for (Eigen::Index i = 0; i < n; ++i) {
    difference = std::max(difference, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return difference / scale;
}

// Rows [first, first + count) of dimension 0.
Tensor<double> slice(const Tensor<double>& t, Eigen::Index first, Eigen::Index count) {
  const Shape& shape = t.shape();
  const Eigen::Index row = t.size() / shape.dim(0);
  std::vector<Eigen::Index> dims{count};
  for (int i = 1; i < shape.rank(); ++i) dims.push_back(shape.dim(i));
  Tensor<double> out{Shape(dims)};
  std::copy_n(t.data() + first * row, count * row, out.data());
  return out;
}

// One training forward and backward of sum(y * R).
template <class Layer>
void forward_backward(Layer& layer, const Tensor<double>& x, const Tensor<double>& r, Tensor<double>& y,
                      Tensor<double>& gx) {
  momnet::Tape<double> tape;
  const momnet::Var<double> input = tape.variable(x);
  const momnet::Var<double> out = layer.forward(tape, input);
  tape.backward(momnet::sum(momnet::mul(out, tape.constant(r))));
  y = Tensor<double>(out.shape());
  std::copy_n(out.data(), out.size(), y.data());
  gx = Tensor<double>(x.shape());
  std::copy_n(input.grad().data(), x.size(), gx.data());
}

}  // namespace

TEST_CASE("SyncBatchNorm on P ranks computes BatchNorm of the whole batch", "[distributed][sync_batch_norm]") {
  const md::Communicator comm = world();
  const Eigen::Index p = comm.size();
  for (const Shape local : {Shape{3, 4}, Shape{2, 3, 2, 2}}) {
    CAPTURE(local.to_string());
    const Eigen::Index n = local.dim(0), channels = local.dim(1);
    std::vector<Eigen::Index> dims{n * p};
    for (int i = 1; i < local.rank(); ++i) dims.push_back(local.dim(i));
    const Shape global{Shape(dims)};
    const Tensor<double> x = momnet_test::uniform(global, 1, -2.0, 3.0);
    const Tensor<double> r = momnet_test::uniform(global, 2);
    const Tensor<double> affine = momnet_test::uniform(Shape{2, channels}, 3, 0.5, 1.5);

    momnet::BatchNorm1d<double> bn1(channels);
    momnet::BatchNorm2d<double> bn2(channels);
    md::SyncBatchNorm<double> sync(channels, comm);
    const auto set_affine = [&](momnet::Parameter<double>& w, momnet::Parameter<double>& b) {
      std::copy_n(affine.data(), channels, w.value_data());
      std::copy_n(affine.data() + channels, channels, b.value_data());
    };
    set_affine(sync.weight(), sync.bias());
    set_affine(bn1.weight(), bn1.bias());
    set_affine(bn2.weight(), bn2.bias());

    Tensor<double> y_single, gx_single, y, gx;
    momnet::Parameter<double>* w_single = local.rank() == 4 ? &bn2.weight() : &bn1.weight();
    momnet::Parameter<double>* b_single = local.rank() == 4 ? &bn2.bias() : &bn1.bias();
    if (local.rank() == 4) {
      forward_backward(bn2, x, r, y_single, gx_single);
    } else {
      forward_backward(bn1, x, r, y_single, gx_single);
    }
    forward_backward(sync, slice(x, comm.rank() * n, n), slice(r, comm.rank() * n, n), y, gx);

    const Tensor<double> y_want = slice(y_single, comm.rank() * n, n);
    const Tensor<double> gx_want = slice(gx_single, comm.rank() * n, n);
    CHECK(relative(y.data(), y_want.data(), y.size()) <= 1e-12);
    CHECK(relative(gx.data(), gx_want.data(), gx.size()) <= 1e-12);
    // Parameter gradients: each rank's share, summing to the whole batch's.
    std::vector<double> grads(2 * static_cast<std::size_t>(channels));
    std::copy_n(sync.weight().grad_data(), channels, grads.data());
    std::copy_n(sync.bias().grad_data(), channels, grads.data() + channels);
    comm.allreduce_sum(grads.data(), grads.size(), "test");
    CHECK(relative(grads.data(), w_single->grad_data(), channels) <= 1e-12);
    CHECK(relative(grads.data() + channels, b_single->grad_data(), channels) <= 1e-12);
    // Running statistics: the whole batch's, on every rank (unbiased with the global count).
    Tensor<double>& mean_single = local.rank() == 4 ? bn2.running_mean() : bn1.running_mean();
    Tensor<double>& var_single = local.rank() == 4 ? bn2.running_var() : bn1.running_var();
    CHECK(relative(sync.running_mean().data(), mean_single.data(), channels) <= 1e-12);
    CHECK(relative(sync.running_var().data(), var_single.data(), channels) <= 1e-12);
    CHECK(sync.num_batches_tracked().data()[0] == 1);

    // Eval: the running statistics, no communication (rank 0 alone could call it).
    sync.set_training(false);
    bn1.set_training(false);
    bn2.set_training(false);
    if (comm.rank() == 0) {
      if (local.rank() == 4) {
        forward_backward(bn2, x, r, y_single, gx_single);
      } else {
        forward_backward(bn1, x, r, y_single, gx_single);
      }
      forward_backward(sync, slice(x, 0, n), slice(r, 0, n), y, gx);
      const Tensor<double> want = slice(y_single, 0, n);
      CHECK(relative(y.data(), want.data(), y.size()) <= 1e-12);
    }
    comm.barrier();
  }
}

TEST_CASE("SyncBatchNorm refuses bad arguments", "[distributed][sync_batch_norm]") {
  const md::Communicator comm = world();
  const std::string who = "momnet::distributed::SyncBatchNorm: ";
  REQUIRE_THROWS_EXACT(md::SyncBatchNorm<double>(0, comm), std::invalid_argument,
                       who + "num_features must be positive, got 0");
  momnet::BatchNormOptions options;
  options.eps = 0;
  REQUIRE_THROWS_EXACT(md::SyncBatchNorm<double>(2, comm, options), std::invalid_argument,
                       who + "eps must be positive and finite, got 0");
  options.eps = 1e-5;
  options.momentum = 1.5;
  REQUIRE_THROWS_EXACT(md::SyncBatchNorm<double>(2, comm, options), std::invalid_argument,
                       who + "momentum must lie in [0, 1] (or be std::nullopt), got 1.5");
  REQUIRE_THROWS_EXACT(md::SyncBatchNorm<double>(2, comm, {}, -1), std::invalid_argument,
                       who + "timeout_seconds must be >= 0 (0: no limit), got -1");

  md::SyncBatchNorm<double> layer(3, comm);
  momnet::Tape<double> tape;
  REQUIRE_THROWS_EXACT(layer.forward(tape, tape.constant(Tensor<double>(Shape{4, 2}))), std::invalid_argument,
                       who + "expected 3 channels (dimension 1), got an input of [4, 2]");
  REQUIRE_THROWS_AS(layer.forward(tape, tape.constant(Tensor<double>(Shape{4}))), std::invalid_argument);
  if (comm.size() == 1) {  // one value per channel over all ranks: every rank learns it from the sums
    REQUIRE_THROWS_EXACT(layer.forward(tape, tape.constant(Tensor<double>(Shape{1, 3}))), std::invalid_argument,
                         who + "Expected more than 1 value per channel when training, got 1 over the 1 rank(s) "
                               "(this rank's input is [1, 3])");
  }
  md::SyncBatchNorm<double> plain(3, comm, [] {
    momnet::BatchNormOptions o;
    o.affine = false;
    o.track_running_stats = false;
    return o;
  }());
  REQUIRE_THROWS_EXACT(plain.weight(), std::logic_error, who.substr(0, who.size() - 2) +
                                                             "::weight: this layer has affine = false");
  REQUIRE_THROWS_EXACT(plain.running_var(), std::logic_error,
                       who.substr(0, who.size() - 2) + "::running_var: this layer has track_running_stats = false");
  CHECK(momnet::named_parameters(plain).empty());
  CHECK(momnet::named_buffers(plain).empty());
}

namespace {

// A momentum stack of blocks Linear -> Norm -> tanh, in exact mode, and a head.
template <class Norm, class MakeNorm>
Sequential<double> normed_stack(std::uint64_t seed, MakeNorm make_norm) {
  momnet::Rng rng(seed);
  std::vector<Sequential<double>> blocks;
  for (int i = 0; i < 4; ++i) {
    Sequential<double> block;
    block.add(momnet::Linear<double>(4, 4, rng));
    block.add(make_norm());
    block.add(momnet::Activation<double>(momnet::ActivationKind::tanh));
    blocks.push_back(std::move(block));
  }
  momnet::MomentumOptions options;
  options.gamma = 0.9;
  options.mode = momnet::BackwardMode::exact;
  Sequential<double> model;
  model.add(momnet::MomentumResidual<Sequential<double>>(std::move(blocks), options));
  model.add(momnet::Linear<double>(4, 1, rng));
  return model;
}

}  // namespace

TEST_CASE("A momentum stack with SyncBatchNorm on P ranks takes the steps of one process with BatchNorm",
          "[distributed][sync_batch_norm][determinism]") {
  const md::Communicator comm = world();
  const Eigen::Index global_batch = 12, steps = 3;
  if (global_batch % comm.size() != 0) return;
  const Eigen::Index local = global_batch / comm.size();
  const Tensor<double> x = momnet_test::uniform(Shape{global_batch * steps, 4}, 5);
  const Tensor<double> y = momnet_test::uniform(Shape{global_batch * steps, 1}, 6);
  const momnet::SGDOptions sgd_options{0.1, 0.9};

  auto single = normed_stack<momnet::BatchNorm1d<double>>(9, [] { return momnet::BatchNorm1d<double>(4); });
  momnet::SGD<double> single_sgd(momnet::parameters_of(single), sgd_options);
  for (Eigen::Index s = 0; s < steps; ++s) {
    single_sgd.zero_grad();
    momnet::Tape<double> tape;
    const auto loss = momnet::mse(single(tape, tape.constant(slice(x, s * global_batch, global_batch))),
                                  tape.constant(slice(y, s * global_batch, global_batch)));
    tape.backward(loss);
    single_sgd.step();
  }

  auto model = normed_stack<md::SyncBatchNorm<double>>(9, [&] { return md::SyncBatchNorm<double>(4, comm); });
  md::DistributedDataParallel<Sequential<double>> ddp(model, comm);
  momnet::SGD<double> sgd(momnet::parameters_of(model), sgd_options);
  for (Eigen::Index s = 0; s < steps; ++s) {
    sgd.zero_grad();
    // Contiguous rows this time: rank r takes rows [r local, (r + 1) local) of step s's batch.
    const Eigen::Index first = s * global_batch + comm.rank() * local;
    ddp.step([&] {
      momnet::Tape<double> tape;
      const auto loss = momnet::mse(model(tape, tape.constant(slice(x, first, local))),
                                    tape.constant(slice(y, first, local)));
      tape.backward(loss);
    });
    sgd.step();
  }
  md::check_replicas_equal(comm, model);  // parameters and running statistics, on every rank
  const auto got = md::state_entries(model), want = md::state_entries(single);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(got[i].describe());
    REQUIRE(got[i].describe() == want[i].describe());
    if (got[i].integer != nullptr) {
      CHECK(got[i].integer[0] == want[i].integer[0]);
    } else {
      CHECK(relative(got[i].real, want[i].real, static_cast<Eigen::Index>(got[i].size())) <= 1e-12);
    }
  }
}
