// Batch normalisation: the batch_norm op against a direct double-precision
// reference on ranks 2, 3 and 4 (training and eval, affine or not), PyTorch's
// running-statistics sequence (unbiased variance, momentum and the cumulative
// average), finite-difference gradients through the batch statistics, names
// as nn.BatchNorm's state_dict, errors, and the replay rule inside
// MomentumResidual: exact and stored modes agree bitwise, and the running
// statistics move once per training step, never on the rebuild.
#include <catch2/catch.hpp>

#include <momnet/layers/batch_norm.hpp>
#include <momnet/momnet.hpp>
#include <momnet/ops/batch_norm.hpp>

#include "helpers.hpp"
#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using namespace momnet;
using namespace momnet_test;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

namespace {

// ---- the reference: direct loops in double ---------------------------------

struct Reference {
  std::vector<double> mean, biased, unbiased;
};

// Channel statistics of x read as [N, C, inner].
template <class T>
Reference reference_statistics(const Tensor<T>& x) {
  const Index n = x.shape().dim(0), c = x.shape().dim(1), inner = x.size() / (n * c);
  Reference r;
  for (Index k = 0; k < c; ++k) {
    double sum = 0, squares = 0;
    for (Index b = 0; b < n; ++b) {
      for (Index i = 0; i < inner; ++i) sum += static_cast<double>(x.data()[(b * c + k) * inner + i]);
    }
    const double mean = sum / static_cast<double>(n * inner);
    for (Index b = 0; b < n; ++b) {
      for (Index i = 0; i < inner; ++i) {
        const double d = static_cast<double>(x.data()[(b * c + k) * inner + i]) - mean;
        squares += d * d;
      }
    }
    r.mean.push_back(mean);
    r.biased.push_back(squares / static_cast<double>(n * inner));
    r.unbiased.push_back(squares / static_cast<double>(n * inner - 1));
  }
  return r;
}

// (x - mean) / sqrt(var + eps) * weight + bias, channel by channel.
template <class T>
std::vector<double> reference_output(const Tensor<T>& x, const std::vector<double>& mean,
                                     const std::vector<double>& var, const std::vector<double>& weight,
                                     const std::vector<double>& bias, double eps) {
  const Index n = x.shape().dim(0), c = x.shape().dim(1), inner = x.size() / (n * c);
  std::vector<double> y(static_cast<std::size_t>(x.size()));
  for (Index b = 0; b < n; ++b) {
    for (Index k = 0; k < c; ++k) {
      const std::size_t ck = static_cast<std::size_t>(k);
      for (Index i = 0; i < inner; ++i) {
        const Index at = (b * c + k) * inner + i;
        y[static_cast<std::size_t>(at)] =
            (static_cast<double>(x.data()[at]) - mean[ck]) / std::sqrt(var[ck] + eps) * weight[ck] + bias[ck];
      }
    }
  }
  return y;
}

template <class T>
Tensor<T> random_tensor(const Shape& shape, std::uint64_t seed, double low = -2.0, double high = 3.0) {
  const Tensor<double> d = uniform(shape, seed, low, high);
  Tensor<T> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(d.data()[i]);
  return t;
}

template <class T>
double max_difference(const Var<T>& y, const std::vector<double>& reference) {
  double worst = 0;
  for (Index i = 0; i < y.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(y.data()[i]) - reference[static_cast<std::size_t>(i)]));
  }
  return worst;
}

template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

const std::vector<Shape> shapes{Shape{7, 3}, Shape{4, 3, 5}, Shape{3, 2, 3, 4}};

// ---- a residual block with batch norm: f(x) = Linear(tanh(BatchNorm1d(x))) --

template <class T>
struct NormBlock {
  using Scalar = T;
  BatchNorm1d<T> bn;
  Linear<T> fc;

  NormBlock(Index dim, Rng& rng, BatchNormOptions options = {}) : bn(dim, options), fc(dim, dim, rng) {
    // Away from the initial ones and zeros, so their gradients are not special.
    for (Index i = 0; i < dim; ++i) {
      bn.weight().value_data()[i] = static_cast<T>(rng.uniform(0.5, 1.5));
      bn.bias().value_data()[i] = static_cast<T>(rng.uniform(-0.5, 0.5));
    }
  }
  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    return fc.forward(tape, tanh(bn.forward(tape, x, context)));
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("bn", bn);
    visit.child("fc", fc);
  }
};

template <class T>
std::vector<NormBlock<T>> norm_blocks(std::size_t depth, Index dim, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<NormBlock<T>> blocks;
  for (std::size_t i = 0; i < depth; ++i) blocks.emplace_back(dim, rng);
  return blocks;
}

// Every layer's running statistics and count, in layer order.
template <class Stack>
std::vector<std::vector<double>> running_state(Stack& stack) {
  std::vector<std::vector<double>> all;
  for (auto& block : stack.stack().blocks()) {
    auto& bn = block.bn;
    std::vector<double> s(bn.running_mean().data(), bn.running_mean().data() + bn.running_mean().size());
    s.insert(s.end(), bn.running_var().data(), bn.running_var().data() + bn.running_var().size());
    s.push_back(static_cast<double>(bn.num_batches_tracked().data()[0]));
    all.push_back(std::move(s));
  }
  return all;
}

double largest_difference(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    for (std::size_t k = 0; k < a[i].size(); ++k) worst = std::max(worst, std::abs(a[i][k] - b[i][k]));
  }
  return worst;
}

}  // namespace

// ---- forward values ---------------------------------------------------------------

TEMPLATE_TEST_CASE("batch_norm: training and eval outputs match a direct double reference on ranks 2, 3 and 4",
                   "[batch_norm]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  std::uint64_t seed = 1;
  for (const Shape& shape : shapes) {
    INFO("shape " << shape.to_string());
    const Index c = shape.dim(1);
    const Tensor<T> x = random_tensor<T>(shape, seed++);
    const Tensor<T> w = random_tensor<T>(Shape{c}, seed++, 0.5, 1.5), b = random_tensor<T>(Shape{c}, seed++);
    Tensor<T> running_mean = random_tensor<T>(Shape{c}, seed++);
    Tensor<T> running_var = random_tensor<T>(Shape{c}, seed++, 0.5, 2);
    const Reference batch = reference_statistics(x);
    std::vector<double> wd(w.data(), w.data() + c), bd(b.data(), b.data() + c), ones(c, 1.0), zeros(c, 0.0);
    const std::vector<double> rm(running_mean.data(), running_mean.data() + c),
        rv(running_var.data(), running_var.data() + c);
    const double eps = 1e-3;
    Tape<T> tape;
    const Var<T> xv = tape.constant(x), wv = tape.constant(w), bv = tape.constant(b);

    BatchNormStatistics stats;
    // Training: batch statistics (biased variance), the running ones ignored.
    CHECK(max_difference(batch_norm(xv, &running_mean, &running_var, wv, bv, true, eps, &stats),
                         reference_output(x, batch.mean, batch.biased, wd, bd, eps)) <= tolerance);
    CHECK(stats.count == shape.size() / c);
    for (Index k = 0; k < c; ++k) {
      CHECK(stats.mean[k] == Approx(batch.mean[k]).margin(1e-15).epsilon(1e-14));
      CHECK(stats.variance[k] == Approx(batch.biased[k]).epsilon(1e-14));
    }
    // Affine off.
    CHECK(max_difference(batch_norm(xv, &running_mean, &running_var, Var<T>(), Var<T>(), true, eps),
                         reference_output(x, batch.mean, batch.biased, ones, zeros, eps)) <= tolerance);
    // Eval: the running statistics; nothing to report.
    CHECK(max_difference(batch_norm(xv, &running_mean, &running_var, wv, bv, false, eps, &stats),
                         reference_output(x, rm, rv, wd, bd, eps)) <= tolerance);
    CHECK(stats.count == 0);
    CHECK(stats.mean.empty());
    // No running statistics: batch statistics in eval too (track_running_stats = false).
    CHECK(max_difference(batch_norm(xv, nullptr, nullptr, wv, Var<T>(), false, eps),
                         reference_output(x, batch.mean, batch.biased, wd, zeros, eps)) <= tolerance);
    // The op changes no state.
    CHECK(std::vector<double>(running_mean.data(), running_mean.data() + c) == rm);
  }
}

TEST_CASE("batch_norm: float statistics are accumulated in double, and recomputation gives the same bits",
          "[batch_norm]") {
  // A large offset and a small spread: float accumulation of E[x^2] - E[x]^2
  // would lose the variance entirely.
  Tensor<float> x(Shape{64, 2, 9});
  Rng rng(3);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(1000.0 + rng.uniform(-0.01, 0.01));
  const Reference r = reference_statistics(x);
  Tape<float> tape;
  const Var<float> xv = tape.constant(x);
  BatchNormStatistics stats;
  const Var<float> y = batch_norm(xv, nullptr, nullptr, Var<float>(), Var<float>(), true, 1e-12, &stats);
  for (Index k = 0; k < 2; ++k) {
    CHECK(stats.mean[k] == Approx(r.mean[k]).epsilon(1e-15));
    CHECK(stats.variance[k] == Approx(r.biased[k]).epsilon(1e-12));
  }
  const std::vector<double> ones(2, 1.0), zeros(2, 0.0);
  CHECK(max_difference(y, reference_output(x, r.mean, r.biased, ones, zeros, 1e-12)) <= 2e-6);

  // Recomputed from a copy elsewhere in memory: the same bits.
  const Var<float> again =
      batch_norm(tape.constant(x), nullptr, nullptr, Var<float>(), Var<float>(), true, 1e-12);
  CHECK(std::memcmp(y.data(), again.data(), sizeof(float) * static_cast<std::size_t>(y.size())) == 0);
}

TEST_CASE("batch_norm: an empty batch gives an empty output and no statistics", "[batch_norm]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{0, 3, 4}));
  Parameter<double> w(Shape{3}, "weight");
  BatchNormStatistics stats;
  const Var<double> y = batch_norm(x, nullptr, nullptr, tape.param(w), Var<double>(), true, 1e-5, &stats);
  CHECK(y.shape() == Shape{0, 3, 4});
  CHECK(stats.count == 0);
  tape.backward(sum(y));
  CHECK(w.grad_array().isZero(0.0));

  // The layer counts the batch, as PyTorch does, but leaves the statistics alone.
  BatchNorm1d<double> bn(3);
  Tape<double> t2;
  bn.forward(t2, t2.constant(Tensor<double>(Shape{0, 3})));
  CHECK(bn.num_batches_tracked().data()[0] == 1);
  CHECK(bn.running_mean().array().isZero(0.0));
  CHECK((bn.running_var().array() == 1.0).all());
}

// ---- running statistics -------------------------------------------------------------

TEST_CASE("BatchNorm1d: running statistics follow PyTorch's update, by hand", "[batch_norm][layer]") {
  // One channel, three steps. Batch mean m, unbiased variance u, momentum 0.1:
  //   {1, 3}:    m = 2, u = 2  ->  mean 0.1 * 2 = 0.2,               var 0.9 * 1 + 0.1 * 2 = 1.1
  //   {0, 4}:    m = 2, u = 8  ->  mean 0.9 * 0.2 + 0.2 = 0.38,      var 0.9 * 1.1 + 0.8 = 1.79
  //   {2, 2, 5}: m = 3, u = 3  ->  mean 0.9 * 0.38 + 0.3 = 0.642,    var 0.9 * 1.79 + 0.3 = 1.911
  const std::vector<std::vector<double>> batches{{1, 3}, {0, 4}, {2, 2, 5}};
  const std::vector<double> means{0.2, 0.38, 0.642}, vars{1.1, 1.79, 1.911};
  BatchNorm1d<double> bn(1);
  for (std::size_t step = 0; step < batches.size(); ++step) {
    const std::vector<double>& b = batches[step];
    Tensor<double> x(Shape{static_cast<Index>(b.size()), 1});
    std::copy(b.begin(), b.end(), x.data());
    Tape<double> tape;
    const Var<double> y = bn.forward(tape, tape.constant(x));
    CHECK(bn.running_mean().data()[0] == Approx(means[step]).epsilon(1e-15));
    CHECK(bn.running_var().data()[0] == Approx(vars[step]).epsilon(1e-15));
    CHECK(bn.num_batches_tracked().data()[0] == static_cast<std::int64_t>(step + 1));
    if (step == 0) {
      // Normalised with the biased variance 1: (1 - 2) / sqrt(1 + 1e-5).
      CHECK(y.data()[0] == Approx(-1.0 / std::sqrt(1.0 + 1e-5)).epsilon(1e-15));
    }
  }
  // Eval: the running statistics, and no update.
  eval(bn);
  Tensor<double> x(Shape{1, 1});
  x.data()[0] = 2.0;
  Tape<double> tape;
  const Var<double> y = bn.forward(tape, tape.constant(x));  // one value is fine in eval
  CHECK(y.item() == Approx((2.0 - 0.642) / std::sqrt(1.911 + 1e-5)).epsilon(1e-14));
  CHECK(bn.num_batches_tracked().data()[0] == 3);
  CHECK(bn.running_mean().data()[0] == Approx(0.642).epsilon(1e-15));
}

TEMPLATE_TEST_CASE("BatchNorm layers: running statistics over several steps, momentum and cumulative average",
                   "[batch_norm][layer]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  for (const Shape& shape : shapes) {
    INFO("shape " << shape.to_string());
    const Index c = shape.dim(1);
    BatchNormOptions cumulative;
    cumulative.momentum = std::nullopt;
    BatchNormOptions momentum;
    momentum.momentum = 0.25;
    for (const BatchNormOptions& options : {momentum, cumulative}) {
      INFO("momentum " << (options.momentum ? std::to_string(*options.momentum) : std::string("none")));
      // The layer for the rank: BatchNorm2d for rank 4, BatchNorm1d otherwise.
      BatchNorm1d<T> bn1(c, options);
      BatchNorm2d<T> bn2(c, options);
      using Layer = detail::BatchNormLayer<T>;
      Layer& layer = shape.rank() == 4 ? static_cast<Layer&>(bn2) : static_cast<Layer&>(bn1);
      std::vector<double> mean(c, 0.0), var(c, 1.0), mean_sum(c, 0.0), var_sum(c, 0.0);
      for (int step = 1; step <= 4; ++step) {
        const Tensor<T> x = random_tensor<T>(shape, 100 + step, -1.0 + step, 2.0 * step);
        Tape<T> tape;
        const Var<T> y = layer.forward(tape, tape.constant(x));
        const Reference r = reference_statistics(x);
        const double f = options.momentum ? *options.momentum : 1.0 / step;
        for (std::size_t k = 0; k < static_cast<std::size_t>(c); ++k) {
          mean[k] = (1 - f) * mean[k] + f * r.mean[k];
          var[k] = (1 - f) * var[k] + f * r.unbiased[k];
          mean_sum[k] += r.mean[k];
          var_sum[k] += r.unbiased[k];
        }
        const std::vector<double> ones(c, 1.0), zeros(c, 0.0);
        CHECK(max_difference(y, reference_output(x, r.mean, r.biased, ones, zeros, 1e-5)) <= 10 * tolerance);
      }
      Tensor<T>& rm = layer.running_mean();
      Tensor<T>& rv = layer.running_var();
      for (std::size_t k = 0; k < static_cast<std::size_t>(c); ++k) {
        CHECK(static_cast<double>(rm.data()[k]) == Approx(mean[k]).epsilon(tolerance));
        CHECK(static_cast<double>(rv.data()[k]) == Approx(var[k]).epsilon(tolerance));
        if (!options.momentum) {
          // The cumulative average is the plain average of the four batches.
          CHECK(static_cast<double>(rm.data()[k]) == Approx(mean_sum[k] / 4).epsilon(tolerance));
          CHECK(static_cast<double>(rv.data()[k]) == Approx(var_sum[k] / 4).epsilon(tolerance));
        }
      }
      CHECK(layer.num_batches_tracked().data()[0] == 4);

      // Eval normalises with the running statistics and updates nothing.
      layer.set_training(false);
      const Tensor<T> before_mean = rm, before_var = rv;
      const Tensor<T> x = random_tensor<T>(shape, 7);
      Tape<T> tape;
      const Var<T> y = layer.forward(tape, tape.constant(x));
      const std::vector<double> ones(c, 1.0), zeros(c, 0.0);
      CHECK(max_difference(y, reference_output(x, std::vector<double>(rm.data(), rm.data() + c),
                                               std::vector<double>(rv.data(), rv.data() + c), ones, zeros, 1e-5)) <=
            10 * tolerance);
      CHECK(same_bits(rm, before_mean));
      CHECK(same_bits(rv, before_var));
      CHECK(layer.num_batches_tracked().data()[0] == 4);
    }
  }
}

TEST_CASE("BatchNorm: a context that says replay, or eval, changes no state; momentum 0 keeps the start values",
          "[batch_norm][layer]") {
  BatchNorm2d<double> bn(2);
  const Tensor<double> x = uniform(Shape{2, 2, 3, 3}, 9);
  Tape<double> tape;
  CallContext<double> context;
  context.replay = true;
  const Var<double> replayed = bn.forward(tape, tape.constant(x), context);
  CHECK(bn.num_batches_tracked().data()[0] == 0);
  CHECK(bn.running_mean().array().isZero(0.0));
  context.replay = false;
  const Var<double> first = bn.forward(tape, tape.constant(x), context);
  CHECK(bn.num_batches_tracked().data()[0] == 1);
  CHECK(std::memcmp(replayed.data(), first.data(), sizeof(double) * 36) == 0);
  // The context's mode wins over the layer's own.
  bn.set_training(false);
  bn.forward(tape, tape.constant(x), context);
  CHECK(bn.num_batches_tracked().data()[0] == 2);
  context.training = false;
  bn.set_training(true);
  bn.forward(tape, tape.constant(x), context);
  CHECK(bn.num_batches_tracked().data()[0] == 2);

  BatchNormOptions frozen;
  frozen.momentum = 0.0;
  BatchNorm1d<double> still(3, frozen);
  still.forward(tape, tape.constant(uniform(Shape{4, 3}, 10)));
  CHECK(still.running_mean().array().isZero(0.0));
  CHECK((still.running_var().array() == 1.0).all());
  CHECK(still.num_batches_tracked().data()[0] == 1);

  // Without running statistics: batch statistics in eval too, and no state.
  BatchNormOptions untracked;
  untracked.track_running_stats = false;
  BatchNorm1d<double> plain(3, untracked);
  plain.set_training(false);
  const Tensor<double> v = uniform(Shape{5, 3}, 11);
  const Var<double> y = plain.forward(tape, tape.constant(v));
  const Reference r = reference_statistics(v);
  CHECK(max_difference(y, reference_output(v, r.mean, r.biased, {1, 1, 1}, {0, 0, 0}, 1e-5)) <= 1e-13);
}

// ---- gradients -----------------------------------------------------------------------

TEST_CASE("batch_norm: gradients of input, weight and bias pass the finite-difference check", "[batch_norm][grad]") {
  std::uint64_t seed = 20;
  for (const Shape& shape : shapes) {
    const Index c = shape.dim(1);
    const Tensor<double> x = uniform(shape, seed++, -2, 3), w = uniform(Shape{c}, seed++, 0.5, 1.5),
                         b = uniform(Shape{c}, seed++);
    const Tensor<double> rm = uniform(Shape{c}, seed++), rv = uniform(Shape{c}, seed++, 0.5, 2);
    for (bool training : {true, false}) {
      INFO("shape " << shape.to_string() << (training ? ", training" : ", eval"));
      const GradientCheckResult affine = check_gradients(
          [&](Tape<double>&, const Vars& v) { return batch_norm(v[0], &rm, &rv, v[1], v[2], training, 1e-3); },
          {x, w, b});
      INFO(affine.worst << " (error " << affine.max_error << ")");
      CHECK(affine.passed);
      const GradientCheckResult bare = check_gradients(
          [&](Tape<double>&, const Vars& v) {
            return batch_norm(v[0], &rm, &rv, Var<double>(), Var<double>(), training);
          },
          {x});
      INFO(bare.worst << " (error " << bare.max_error << ")");
      CHECK(bare.passed);
    }
  }
}

TEST_CASE("BatchNorm layers: block gradients in training and eval, ranks 2 and 4", "[batch_norm][grad]") {
  BatchNorm1d<double> bn1(3);
  BatchNorm2d<double> bn2(2);
  Rng rng(30);
  for (Parameter<double>* p : parameters_of(bn1)) p->array() += 0.3 * Eigen::ArrayXd::Ones(p->size());
  for (Parameter<double>* p : parameters_of(bn2)) p->array() -= 0.2 * Eigen::ArrayXd::Ones(p->size());
  // Some running statistics to use in eval.
  for (int i = 0; i < 3; ++i) {
    Tape<double> tape;
    bn1.forward(tape, tape.constant(uniform(Shape{6, 3}, 31 + i)));
    bn2.forward(tape, tape.constant(uniform(Shape{2, 2, 3, 2}, 41 + i)));
  }
  for (bool training : {true, false}) {
    INFO((training ? "training" : "eval"));
    CallContext<double> context;
    context.training = training;
    context.replay = true;  // the check calls forward many times; leave the statistics alone
    const GradientCheckResult r1 = check_block_gradients(bn1, uniform(Shape{6, 3}, 50), {}, context);
    INFO(r1.worst);
    CHECK(r1.passed);
    const GradientCheckResult r2 = check_block_gradients(bn2, uniform(Shape{2, 2, 3, 2}, 51), {}, context);
    INFO(r2.worst);
    CHECK(r2.passed);
  }
  CHECK(bn1.num_batches_tracked().data()[0] == 3);
}

TEST_CASE("The gradient check catches the eval-mode rule used with batch statistics", "[batch_norm][grad]") {
  // The forward normalises with batch statistics, the rule ignores that the
  // statistics depend on x: the check must fail.
  const auto broken = [](Tape<double>& tape, const Vars& v) {
    const Shape shape = v[0].shape();
    const kernels::BatchNormGeometry s{shape.dim(0), shape.dim(1), shape.split(1).inner};
    double* mean = tape.allocate_as<double>(s.channels);
    double* invstd = tape.allocate_as<double>(s.channels);
    kernels::batch_norm_statistics(v[0].data(), s, mean, invstd);
    for (Index c = 0; c < s.channels; ++c) invstd[c] = 1.0 / std::sqrt(invstd[c] + 1e-5);
    double* y = tape.allocate(shape.size());
    const double* px = v[0].data();
    kernels::batch_norm_forward(px, y, s, mean, invstd, static_cast<const double*>(nullptr),
                                static_cast<const double*>(nullptr));
    return tape.record_op({v[0]}, shape, y, [=](Gradients<double>& g) {
      kernels::batch_norm_backward(g.output(0), px, s, mean, invstd, static_cast<const double*>(nullptr), false,
                                   g.input(0), static_cast<double*>(nullptr), static_cast<double*>(nullptr));
    });
  };
  const GradientCheckResult result = check_gradients(broken, {uniform(Shape{5, 2, 3}, 60)});
  CHECK_FALSE(result.passed);
  CHECK(result.max_error > 1e-2);
}

// ---- names ---------------------------------------------------------------------------

TEST_CASE("BatchNorm names its state as nn.BatchNorm2d's state_dict", "[batch_norm][names]") {
  const auto parameter_names = [](auto& module) {
    std::vector<std::string> names;
    for (const auto& entry : named_parameters(module)) names.push_back(entry.first);
    return names;
  };
  const auto buffer_names = [](auto& module) {
    std::vector<std::string> names;
    for (const auto& entry : named_buffers(module)) names.push_back(entry.first);
    return names;
  };
  BatchNorm2d<double> bn(4);
  CHECK(parameter_names(bn) == std::vector<std::string>{"weight", "bias"});
  CHECK(buffer_names(bn) == std::vector<std::string>{"running_mean", "running_var", "num_batches_tracked"});
  const auto buffers = named_buffers(bn);
  CHECK(buffers[0].second.real == &bn.running_mean());
  CHECK(buffers[1].second.real == &bn.running_var());
  CHECK(buffers[2].second.integer == &bn.num_batches_tracked());
  CHECK(buffers[2].second.shape() == Shape{});  // an int64 scalar, shape []
  CHECK(buffers[0].second.shape() == Shape{4});
  CHECK(named_parameters(bn)[0].second == &bn.weight());
  CHECK((bn.weight().array() == 1.0).all());
  CHECK(bn.bias().array().isZero(0.0));
  CHECK(bn.running_mean().array().isZero(0.0));
  CHECK((bn.running_var().array() == 1.0).all());
  CHECK(bn.num_batches_tracked().data()[0] == 0);
  CHECK(bn.num_features() == 4);
  CHECK(bn.options().eps == 1e-5);

  BatchNormOptions no_affine;
  no_affine.affine = false;
  BatchNorm1d<double> plain(4, no_affine);
  CHECK(parameter_names(plain).empty());
  CHECK(buffer_names(plain) == std::vector<std::string>{"running_mean", "running_var", "num_batches_tracked"});
  REQUIRE_THROWS_EXACT(plain.weight(), std::logic_error, "momnet::BatchNorm1d::weight", "affine = false");

  BatchNormOptions untracked;
  untracked.track_running_stats = false;
  BatchNorm2d<double> batch_only(4, untracked);
  CHECK(parameter_names(batch_only) == std::vector<std::string>{"weight", "bias"});
  CHECK(buffer_names(batch_only).empty());
  REQUIRE_THROWS_EXACT(batch_only.running_var(), std::logic_error, "momnet::BatchNorm2d::running_var",
                       "track_running_stats = false");

  // Inside a composition, with hierarchical names.
  MomentumResidual<NormBlock<double>> net(norm_blocks<double>(2, 3, 70), options_for(0.9, BackwardMode::exact));
  CHECK(buffer_names(net) == std::vector<std::string>{"0.bn.running_mean", "0.bn.running_var",
                                                      "0.bn.num_batches_tracked", "1.bn.running_mean",
                                                      "1.bn.running_var", "1.bn.num_batches_tracked"});
  CHECK(parameter_names(net)[0] == "0.bn.weight");
  // train / eval reach the layer.
  eval(net);
  CHECK_FALSE(net.stack().blocks()[1].bn.training());
}

// ---- errors --------------------------------------------------------------------------

TEST_CASE("BatchNorm and batch_norm refuse bad arguments with clear errors", "[batch_norm][errors]") {
  Tape<double> tape;
  BatchNorm1d<double> bn1(3);
  BatchNorm2d<double> bn2(3);
  REQUIRE_THROWS_EXACT(bn1.forward(tape, tape.constant(Tensor<double>(Shape{1, 3}))), std::invalid_argument,
                       "momnet::BatchNorm1d", "Expected more than 1 value per channel when training",
                       "got input size [1, 3]");
  REQUIRE_THROWS_EXACT(bn2.forward(tape, tape.constant(Tensor<double>(Shape{1, 3, 1, 1}))), std::invalid_argument,
                       "momnet::BatchNorm2d", "Expected more than 1 value per channel when training",
                       "[1, 3, 1, 1]");
  CHECK(bn1.num_batches_tracked().data()[0] == 0);  // a refused call changes nothing
  bn1.set_training(false);
  CHECK_NOTHROW(bn1.forward(tape, tape.constant(Tensor<double>(Shape{1, 3}))));  // eval: running statistics
  bn1.set_training(true);
  CHECK_NOTHROW(bn1.forward(tape, tape.constant(Tensor<double>(Shape{1, 3, 2}))));  // two values per channel

  REQUIRE_THROWS_EXACT(bn1.forward(tape, tape.constant(Tensor<double>(Shape{4, 2}))), std::invalid_argument,
                       "momnet::BatchNorm1d: expected 3 channels (dimension 1), got an input of [4, 2]");
  REQUIRE_THROWS_EXACT(bn2.forward(tape, tape.constant(Tensor<double>(Shape{4, 5, 2, 2}))), std::invalid_argument,
                       "momnet::BatchNorm2d: expected 3 channels (dimension 1), got an input of [4, 5, 2, 2]");
  REQUIRE_THROWS_EXACT(bn1.forward(tape, tape.constant(Tensor<double>(Shape{4, 3, 2, 2}))), std::invalid_argument,
                       "momnet::BatchNorm1d: expected an input of rank 2 or 3 ([N, C] or [N, C, L]), got [4, 3, 2, 2]");
  REQUIRE_THROWS_EXACT(bn1.forward(tape, tape.constant(Tensor<double>(Shape{3}))), std::invalid_argument,
                       "momnet::BatchNorm1d: expected an input of rank 2 or 3", "got [3]");
  REQUIRE_THROWS_EXACT(bn2.forward(tape, tape.constant(Tensor<double>(Shape{4, 3, 2}))), std::invalid_argument,
                       "momnet::BatchNorm2d: expected an input of rank 4 ([N, C, H, W]), got [4, 3, 2]");
  REQUIRE_THROWS_EXACT(bn1.forward(tape, Var<double>()), std::invalid_argument, "momnet::BatchNorm1d", "empty Var");

  // Construction.
  BatchNormOptions o;
  o.eps = 0;
  REQUIRE_THROWS_EXACT(BatchNorm1d<double>(3, o), std::invalid_argument,
                       "momnet::BatchNorm1d: eps must be positive and finite, got 0");
  o.eps = -1e-5;
  REQUIRE_THROWS_EXACT(BatchNorm2d<float>(3, o), std::invalid_argument, "momnet::BatchNorm2d", "got -1e-05");
  o.eps = std::nan("");
  REQUIRE_THROWS_EXACT(BatchNorm2d<float>(3, o), std::invalid_argument, "eps must be positive and finite");
  o = BatchNormOptions();
  o.momentum = 1.5;
  REQUIRE_THROWS_EXACT(BatchNorm1d<double>(3, o), std::invalid_argument,
                       "momnet::BatchNorm1d: momentum must lie in [0, 1] (or be std::nullopt), got 1.5");
  o.momentum = -0.1;
  REQUIRE_THROWS_EXACT(BatchNorm1d<double>(3, o), std::invalid_argument, "momentum must lie in [0, 1]", "got -0.1");
  o.momentum = std::nan("");
  REQUIRE_THROWS_EXACT(BatchNorm1d<double>(3, o), std::invalid_argument, "momentum must lie in [0, 1]");
  o.momentum = 1.0;
  CHECK_NOTHROW(BatchNorm1d<double>(3, o));
  REQUIRE_THROWS_EXACT(BatchNorm2d<double>(0), std::invalid_argument,
                       "momnet::BatchNorm2d: num_features must be positive, got 0");

  // The op.
  const Var<double> x = tape.constant(uniform(Shape{4, 3}, 80));
  const Tensor<double> r3(Shape{3}), r2(Shape{2});
  REQUIRE_THROWS_EXACT(batch_norm(x, &r3, &r3, tape.constant(Tensor<double>(Shape{2}))), std::invalid_argument,
                       "momnet::batch_norm: the weight must be [C] = [3] for an input of [4, 3], got [2]");
  REQUIRE_THROWS_EXACT(batch_norm(x, &r3, &r3, Var<double>(), tape.constant(Tensor<double>(Shape{1, 3}))),
                       std::invalid_argument, "momnet::batch_norm: the bias must be [C] = [3]", "got [1, 3]");
  REQUIRE_THROWS_EXACT(batch_norm(x, &r2, &r2), std::invalid_argument,
                       "momnet::batch_norm: running_mean must be [C] = [3] for an input of [4, 3], got [2]");
  REQUIRE_THROWS_EXACT(batch_norm(x, &r3, static_cast<const Tensor<double>*>(nullptr)), std::invalid_argument,
                       "momnet::batch_norm: running_mean and running_var must be given together");
  REQUIRE_THROWS_EXACT(batch_norm(tape.constant(Tensor<double>(Shape{3})), &r3, &r3), std::invalid_argument,
                       "momnet::batch_norm: expected an input of rank 2, 3 or 4", "got [3]");
  REQUIRE_THROWS_EXACT(batch_norm(x, &r3, &r3, Var<double>(), Var<double>(), false, 0.0), std::invalid_argument,
                       "momnet::batch_norm: eps must be positive and finite, got 0");
  REQUIRE_THROWS_EXACT(batch_norm(tape.constant(Tensor<double>(Shape{1, 3})), nullptr, nullptr),
                       std::invalid_argument, "momnet::batch_norm: Expected more than 1 value per channel");
  Tape<double> other;
  REQUIRE_THROWS_EXACT(batch_norm(x, &r3, &r3, other.constant(Tensor<double>(Shape{3}))), std::invalid_argument,
                       "momnet::batch_norm: the operands belong to different tapes");
}

// ---- inside the stacks: the replay rule ------------------------------------------------

TEST_CASE("BatchNorm in a MomentumResidual of depth 64: bitwise rebuild, exact gradients equal stored ones",
          "[batch_norm][momentum][exact]") {
  const std::size_t depth = 64;
  const Mat<double> input = random_input<double>(8, 4, 90);
  const std::vector<NormBlock<double>> blocks = norm_blocks<double>(depth, 4, 91);
  for (bool training : {true, false}) {
    INFO((training ? "training" : "eval"));
    MomentumResidual<NormBlock<double>> exact(blocks, options_for(0.9, BackwardMode::exact));
    MomentumResidual<NormBlock<double>> stored(blocks, options_for(0.9, BackwardMode::stored));
    set_training(exact, training);
    set_training(stored, training);
    // The rebuild (the block called again with context.replay = true) gives
    // the bits of the forward pass at every layer.
    require_bitwise_rebuild<double>(exact, input);
    CHECK(relative_error(gradients_of(exact, input), gradients_of(stored, input)) <= 1e-12);
  }
  // The weight-tied stack: one BatchNorm shared by every layer.
  MomentumResidual<NormBlock<double>> tied(blocks[0], depth, options_for(0.5, BackwardMode::exact));
  require_bitwise_rebuild<double>(tied, input);
  CHECK(tied.stack().blocks()[0].bn.num_batches_tracked().data()[0] == static_cast<std::int64_t>(depth));

  // Float: the statistics accumulated in double rebuild bitwise as well.
  MomentumResidual<NormBlock<float>> single(norm_blocks<float>(depth, 4, 92), options_for(0.9, BackwardMode::exact));
  require_bitwise_rebuild<float>(single, random_input<float>(8, 4, 93));
}

TEST_CASE("BatchNorm in the stacks: running statistics move once per training step, in every mode",
          "[batch_norm][momentum]") {
  const std::size_t depth = 50;
  const std::vector<NormBlock<double>> blocks = norm_blocks<double>(depth, 4, 100);
  std::vector<Mat<double>> inputs;
  for (int step = 0; step < 3; ++step) inputs.push_back(random_input<double>(6, 4, 101 + step, 1.5));

  MomentumResidual<NormBlock<double>> exact(blocks, options_for(0.9, BackwardMode::exact));
  MomentumResidual<NormBlock<double>> stored(blocks, options_for(0.9, BackwardMode::stored));
  MomentumResidual<NormBlock<double>> inverse(blocks, options_for(0.9, BackwardMode::float_inverse));
  Residual<NormBlock<double>> residual(blocks);
  MomentumResidual<NormBlock<double>> resnet(blocks, options_for(0.0, BackwardMode::stored));  // gamma 0: a ResNet
  for (const Mat<double>& input : inputs) {
    gradients_of(exact, input);  // forward and backward: each layer called twice, once as a replay
    gradients_of(stored, input);
    gradients_of(inverse, input);
    gradients_of(residual, input);
    gradients_of(resnet, input);
  }
  const auto exact_state = running_state(exact), stored_state = running_state(stored);
  // The same fixed-point forward, so the same bits, and one update per step.
  CHECK(largest_difference(exact_state, stored_state) == 0.0);
  for (const auto& layer : exact_state) CHECK(layer.back() == 3.0);
  for (const auto& layer : running_state(inverse)) CHECK(layer.back() == 3.0);
  for (const auto& layer : running_state(residual)) CHECK(layer.back() == 3.0);
  // The float forward differs from the fixed-point one only by rounding; so
  // does the Residual from the momentum stack at gamma = 0, its fixed-point twin.
  CHECK(largest_difference(running_state(inverse), exact_state) <= 1e-10);
  CHECK(largest_difference(running_state(residual), running_state(resnet)) <= 1e-10);

  // An independent reference: every step's forward recomputed by hand, layer
  // by layer, on fresh copies of the blocks, each called once per step.
  std::vector<NormBlock<double>> mine = blocks, theirs = blocks;
  const double gamma = exact.gamma().value();
  for (std::size_t step = 0; step < inputs.size(); ++step) {
    Tape<double> tape;
    Var<double> xm = tape.constant(inputs[step]), v = tape.constant(Mat<double>::Zero(6, 4).eval());
    Var<double> xr = xm;
    CallContext<double> context;
    for (std::size_t n = 0; n < depth; ++n) {
      context.layer = n;
      v = add(scale(v, gamma), scale(mine[n].forward(tape, xm, context), 1 - gamma));
      xm = add(xm, v);
      xr = add(xr, theirs[n].forward(tape, xr, context));
    }
  }
  double momentum_gap = 0, residual_gap = 0;
  const auto residual_state = running_state(residual);
  for (std::size_t n = 0; n < depth; ++n) {
    for (Index k = 0; k < 4; ++k) {
      momentum_gap = std::max({momentum_gap, std::abs(mine[n].bn.running_mean().data()[k] - exact_state[n][k]),
                               std::abs(mine[n].bn.running_var().data()[k] - exact_state[n][4 + k])});
      residual_gap = std::max({residual_gap, std::abs(theirs[n].bn.running_mean().data()[k] - residual_state[n][k]),
                               std::abs(theirs[n].bn.running_var().data()[k] - residual_state[n][4 + k])});
    }
  }
  CHECK(momentum_gap <= 1e-10);  // fixed-point rounding of x and v only
  CHECK(residual_gap == 0.0);    // the same arithmetic, bit for bit

  // Eval: the running statistics are used and nothing moves, in the forward
  // pass or the rebuild.
  eval(exact);
  eval(stored);
  const auto before = running_state(exact);
  const std::vector<double> exact_gradients = gradients_of(exact, inputs[0]);
  CHECK(relative_error(exact_gradients, gradients_of(stored, inputs[0])) <= 1e-12);
  CHECK(largest_difference(running_state(exact), before) == 0.0);
  CHECK(largest_difference(running_state(stored), before) == 0.0);
  // With running statistics each sample is normalised on its own: the first
  // row alone (a batch of one, which training would refuse) gives what it
  // gave inside the batch.
  Tape<double> tape;
  const Var<double> whole = exact(tape, tape.constant(inputs[0]));
  const Var<double> first = exact(tape, tape.constant(inputs[0].topRows(1).eval()));
  for (Index k = 0; k < 4; ++k) CHECK(first.data()[k] == Approx(whole.data()[k]).margin(1e-12));
  train(exact);
  REQUIRE_THROWS_EXACT(exact(tape, tape.constant(inputs[0].topRows(1).eval())), std::invalid_argument,
                       "momnet::BatchNorm1d: Expected more than 1 value per channel when training");
}

TEST_CASE("A second backward through an exact node runs the forward again as a replay, after success or failure",
          "[batch_norm][momentum][exact]") {
  // The exact backward rewinds the node's fixed-point state in place; a later
  // backward through the same node must bring it back to the output first,
  // without moving the running statistics again.
  const std::size_t depth = 30;
  MomentumResidual<NormBlock<double>> net(norm_blocks<double>(depth, 4, 110), options_for(0.9, BackwardMode::exact));
  const Mat<double> input = random_input<double>(6, 4, 111, 1.5);
  Tape<double> tape;
  const Var<double> x = tape.variable(input);
  const Var<double> loss = mean(square(net(tape, x)));
  const auto statistics = running_state(net);
  const auto gradients = [&] {
    std::vector<double> all;
    for (Parameter<double>* p : parameters_of(net)) all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
    all.insert(all.end(), x.grad().data(), x.grad().data() + x.size());
    return all;
  };
  zero_grad(net);
  tape.backward(loss);
  const std::vector<double> first = gradients();
  CHECK(first == gradients_of(net, input));  // a fresh tape's forward: the same numbers
  const auto after_fresh = running_state(net);

  zero_grad(net);
  tape.backward(loss);  // the state stands at x_0: the forward runs again first
  CHECK(gradients() == first);
  CHECK(running_state(net) == after_fresh);  // the replay moved no statistics

  // A backward that fails part-way leaves the state between two layers.
  net.set_observer([](const LayerEvent<double>& event) {
    if (event.phase == LayerEvent<double>::Phase::backward && event.layer == depth / 2) {
      throw std::runtime_error("stop here");
    }
  });
  zero_grad(net);
  REQUIRE_THROWS_WITH(tape.backward(loss), "stop here");
  net.set_observer(nullptr);
  zero_grad(net);
  tape.backward(loss);
  CHECK(gradients() == first);
  CHECK(running_state(net) == after_fresh);
  CHECK(statistics != after_fresh);  // the forward and gradients_of did move them, once each
}

TEST_CASE("BatchNorm as a member of a Sequential block: bitwise rebuild, one update per step, nested names",
          "[batch_norm][momentum][sequential]") {
  Rng rng(110);
  std::vector<Sequential<double>> bodies(8);
  for (Sequential<double>& body : bodies) {
    body.add(BatchNorm1d<double>(4));
    body.add(Activation<double>(ActivationKind::tanh));
    body.add(Linear<double>(4, 4, rng));
  }
  MomentumResidual<Sequential<double>> net(bodies, options_for(0.9, BackwardMode::exact));
  CHECK(named_buffers(net)[0].first == "0.0.running_mean");
  CHECK(named_buffers(net)[2].first == "0.0.num_batches_tracked");
  const Mat<double> input = random_input<double>(5, 4, 111);
  require_bitwise_rebuild<double>(net, input);
  gradients_of(net, input);
  for (Sequential<double>& body : net.stack().blocks()) {
    CHECK(body.get<BatchNorm1d<double>>(0).num_batches_tracked().data()[0] == 2);
  }
}
