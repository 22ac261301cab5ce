// Layers (Linear, Activation, MLPBlock), the initialisers and the seeded
// random generator.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <typeinfo>
#include <vector>

namespace {

using momnet_test::uniform;

using momnet::ActivationKind;
using momnet::Parameter;
using momnet::Rng;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using Matrix = Eigen::MatrixXd;


const ActivationKind all_activations[] = {ActivationKind::identity, ActivationKind::tanh,
                                          ActivationKind::relu,     ActivationKind::sigmoid,
                                          ActivationKind::gelu,     ActivationKind::softplus};


struct Moments {
  double mean, variance, min, max;
};
template <class T>
Moments moments_of(const Parameter<T>& p) {
  const Eigen::ArrayXd a = p.array().template cast<double>();
  const double mean = a.mean();
  return {mean, (a - mean).square().sum() / static_cast<double>(a.size() - 1), a.minCoeff(), a.maxCoeff()};
}

// A sample of n draws of U(-bound, bound): inside the bounds, reaching near
// both ends, centred, with the uniform's variance bound^2 / 3.
void check_uniform(const Moments& m, double bound, double n) {
  CHECK(m.min >= -bound);
  CHECK(m.max <= bound);
  CHECK(m.min < -0.99 * bound);
  CHECK(m.max > 0.99 * bound);
  CHECK(std::abs(m.mean) < 4.0 * bound / std::sqrt(3.0 * n));
  CHECK(m.variance == Approx(bound * bound / 3.0).epsilon(0.03));
}

// How many elements two parameters share exactly.
template <class T>
Eigen::Index equal_elements(const Parameter<T>& a, const Parameter<T>& b) {
  return (a.array() == b.array()).count();
}

}  // namespace

// ---- random generator ---------------------------------------------------------

TEST_CASE("Rng reproduces fixed streams", "[layers][random]") {
  // SplitMix64's published reference outputs for seed 1234567 and seed 0.
  Rng reference(1234567);
  CHECK(reference.next() == 6457827717110365317ULL);
  CHECK(reference.next() == 3203168211198807973ULL);
  CHECK(reference.next() == 9817491932198370423ULL);
  CHECK(reference.next() == 4593380528125082431ULL);
  CHECK(reference.next() == 16408922859458223821ULL);
  CHECK(Rng(0).next() == 0xE220A8397B1DCDAFULL);

  // Derived streams: 53-bit uniforms and Box-Muller normals, fixed values.
  Rng u(42);
  CHECK(u.uniform() == 0.74156487877182331);
  CHECK(u.uniform() == 0.1599103928769201);
  CHECK(u.uniform() == 0.27860113025513866);
  Rng n(42);
  CHECK(n.normal() == Approx(0.88224890622226881).epsilon(1e-15));
  CHECK(n.normal() == Approx(-0.45084987571886009).epsilon(1e-15));
  CHECK(n.normal() == Approx(0.18835263411593151).epsilon(1e-15));
  Rng w(42);
  CHECK(w.uniform(-2.0, 3.0) == Approx(-2.0 + 5.0 * 0.74156487877182331).epsilon(1e-15));
  Rng m(42);
  CHECK(m.normal(10.0, 2.0) == Approx(10.0 + 2.0 * 0.88224890622226881).epsilon(1e-15));

  Rng a(7), b(7), c(8);
  bool all_same = true, any_same = false;
  for (int i = 0; i < 100; ++i) {
    const std::uint64_t x = a.next();
    all_same = all_same && x == b.next();
    any_same = any_same || x == c.next();
  }
  CHECK(all_same);
  CHECK_FALSE(any_same);
}

TEST_CASE("Rng's uniforms lie between 0 (included) and 1 (excluded), its normals are standard", "[layers][random]") {
  Rng rng(2024);
  const int n = 20000;
  double u_min = 1.0, u_max = 0.0, sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    u_min = std::min(u_min, u);
    u_max = std::max(u_max, u);
  }
  CHECK(u_min >= 0.0);
  CHECK(u_max < 1.0);
  CHECK(u_min < 1e-3);
  CHECK(u_max > 0.999);
  int within_one = 0, not_finite = 0;
  for (int i = 0; i < n; ++i) {
    const double z = rng.normal();
    not_finite += !std::isfinite(z);
    sum += z;
    sum_sq += z * z;
    within_one += std::abs(z) < 1.0;
  }
  CHECK(not_finite == 0);
  CHECK(std::abs(sum / n) < 4.0 / std::sqrt(n));
  CHECK(sum_sq / n == Approx(1.0).epsilon(0.04));
  CHECK(static_cast<double>(within_one) / n == Approx(0.6827).margin(0.015));
}

// ---- initialisers -------------------------------------------------------------

TEST_CASE("kaiming and xavier initialisers: bounds, moments, seeds", "[layers][init]") {
  const Eigen::Index fan_in = 100, fan_out = 200;
  Parameter<double> p(Shape{fan_out, fan_in}, "w");
  Parameter<double> q(Shape{fan_out, fan_in}, "w");
  const double n = static_cast<double>(p.size());

  SECTION("kaiming_uniform: U(-b, b), b = sqrt(2) sqrt(3 / fan_in)") {
    Rng rng(1);
    momnet::init::kaiming_uniform(p, fan_in, rng);
    const double bound = std::sqrt(2.0) * std::sqrt(3.0 / fan_in);
    check_uniform(moments_of(p), bound, n);
    Rng gain_one(1);
    momnet::init::kaiming_uniform(q, fan_in, gain_one, 1.0);
    CHECK(q.value().isApprox(p.value() / std::sqrt(2.0), 1e-12));  // same draws, other bound
  }
  SECTION("kaiming_normal: N(0, 2 / fan_in)") {
    Rng rng(2);
    momnet::init::kaiming_normal(p, fan_in, rng);
    const Moments m = moments_of(p);
    const double stddev = std::sqrt(2.0 / fan_in);
    CHECK(std::abs(m.mean) < 4.0 * stddev / std::sqrt(n));
    CHECK(m.variance == Approx(stddev * stddev).epsilon(0.04));
    CHECK(m.max > 3.0 * stddev);  // tails a uniform would not have
    CHECK(m.min < -3.0 * stddev);
  }
  SECTION("xavier_uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out))") {
    Rng rng(3);
    momnet::init::xavier_uniform(p, fan_in, fan_out, rng);
    const double bound = std::sqrt(6.0 / (fan_in + fan_out));
    check_uniform(moments_of(p), bound, n);
  }
  SECTION("xavier_normal: N(0, 2 / (fan_in + fan_out)), times the gain") {
    Rng rng(4);
    momnet::init::xavier_normal(p, fan_in, fan_out, rng, 2.0);
    const double stddev = 2.0 * std::sqrt(2.0 / (fan_in + fan_out));
    const Moments m = moments_of(p);
    CHECK(std::abs(m.mean) < 4.0 * stddev / std::sqrt(n));
    CHECK(m.variance == Approx(stddev * stddev).epsilon(0.04));
  }
  SECTION("the same seed gives the same values, another seed other values") {
    using Init = void (*)(Parameter<double>&, Rng&);
    const Init inits[] = {
        [](Parameter<double>& x, Rng& r) { momnet::init::kaiming_uniform(x, 100, r); },
        [](Parameter<double>& x, Rng& r) { momnet::init::kaiming_normal(x, 100, r); },
        [](Parameter<double>& x, Rng& r) { momnet::init::xavier_uniform(x, 100, 200, r); },
        [](Parameter<double>& x, Rng& r) { momnet::init::xavier_normal(x, 100, 200, r); },
        [](Parameter<double>& x, Rng& r) { momnet::init::pytorch_linear(x, 100, r); },
    };
    for (Init init : inits) {
      Rng r1(99), r2(99), r3(100);
      init(p, r1);
      init(q, r2);
      CHECK(equal_elements(p, q) == p.size());
      init(q, r3);
      CHECK(equal_elements(p, q) == 0);
    }
  }
  SECTION("fans must be positive") {
    Rng rng(5);
    REQUIRE_THROWS_EXACT(momnet::init::kaiming_uniform(p, 0, rng), std::invalid_argument,
                         "momnet::init::kaiming_uniform", "fan must be positive, got 0");
    REQUIRE_THROWS_EXACT(momnet::init::kaiming_normal(p, -3, rng), std::invalid_argument,
                         "momnet::init::kaiming_normal", "got -3");
    REQUIRE_THROWS_EXACT(momnet::init::xavier_uniform(p, 0, 0, rng), std::invalid_argument,
                         "momnet::init::xavier_uniform", "got 0");
    REQUIRE_THROWS_EXACT(momnet::init::xavier_normal(p, 0, 0, rng), std::invalid_argument,
                         "momnet::init::xavier_normal");
    REQUIRE_THROWS_EXACT(momnet::init::pytorch_linear(p, 0, rng), std::invalid_argument,
                         "momnet::init::pytorch_linear");
  }
}

// ---- Linear -------------------------------------------------------------------

TEST_CASE("Linear uses PyTorch's default initialisation", "[layers][linear]") {
  const Eigen::Index in = 50, out = 40;
  Rng rng(11);
  momnet::Linear<double> layer(in, out, rng);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  CHECK(layer.weight().shape() == Shape{out, in});
  CHECK(layer.bias().shape() == Shape{out});

  const Moments w = moments_of(layer.weight());
  CHECK(w.min >= -bound);
  CHECK(w.max <= bound);
  CHECK(w.min < -0.99 * bound);  // 2000 draws cover the range
  CHECK(w.max > 0.99 * bound);
  CHECK(w.variance == Approx(bound * bound / 3.0).epsilon(0.1));
  const Moments b = moments_of(layer.bias());
  CHECK(b.min >= -bound);
  CHECK(b.max <= bound);
  CHECK(b.min < -0.7 * bound);  // 40 draws
  CHECK(b.max > 0.7 * bound);
  CHECK(layer.weight().grad().isZero());

  // Same seed, same layer; float layers get the same draws rounded.
  Rng again(11);
  momnet::Linear<double> twin(in, out, again);
  CHECK(twin.weight().value() == layer.weight().value());
  CHECK(twin.bias().value() == layer.bias().value());
  Rng single(11);
  momnet::Linear<float> layer_f(in, out, single);
  CHECK(layer_f.weight().value() == layer.weight().value().cast<float>());
  Rng other(12);
  momnet::Linear<double> different(in, out, other);
  CHECK(equal_elements(different.weight(), layer.weight()) == 0);
}

TEST_CASE("Linear computes x W^T + b, exposes its parameters and passes the gradient check",
          "[layers][linear]") {
  Rng rng(21);
  momnet::Linear<double> layer(3, 2, rng, true, "fc");
  momnet::Linear<double> no_bias(3, 2, rng, false);
  CHECK(layer.in_features() == 3);
  CHECK(layer.out_features() == 2);
  CHECK(layer.has_bias());
  CHECK_FALSE(no_bias.has_bias());

  const auto params = momnet::parameters_of(layer);
  REQUIRE(params.size() == 2);
  CHECK(params[0]->name() == "fc.weight");
  CHECK(params[1]->name() == "fc.bias");
  CHECK(momnet::parameter_count(layer) == 8);
  REQUIRE(momnet::parameters_of(no_bias).size() == 1);
  CHECK(momnet::parameters_of(no_bias)[0]->name() == "linear.weight");
  CHECK(momnet::parameter_count(no_bias) == 6);

  const Tensor<double> x = uniform(Shape{4, 3}, 22);
  Tape<double> tape;
  const Var<double> y = layer.forward(tape, tape.constant(x));
  const Matrix w = layer.weight().value();
  const Eigen::RowVectorXd b = layer.bias().value();
  CHECK(y.shape() == Shape{4, 2});
  CHECK(y.value().isApprox(Matrix((x.matrix() * w.transpose()).rowwise() + b), 1e-14));
  CHECK(no_bias.forward(tape, tape.constant(x)).value().isApprox(
      Matrix(x.matrix() * no_bias.weight().value().transpose()), 1e-14));

  tape.backward(momnet::sum(y));
  CHECK(layer.weight().grad().isApprox(Matrix(Matrix::Ones(2, 4) * x.matrix()), 1e-14));
  CHECK(layer.bias().grad().isApprox(Matrix::Constant(1, 2, 4.0)));
  momnet::zero_grad(layer);
  CHECK(layer.weight().grad().isZero());
  CHECK(layer.bias().grad().isZero());

  const auto result = momnet::check_block_gradients(layer, x);
  INFO(result.worst);
  CHECK(result.passed);
  CHECK(result.checked == 12 + 8);
  const auto result_no_bias = momnet::check_block_gradients(no_bias, x);
  INFO(result_no_bias.worst);
  CHECK(result_no_bias.passed);
  CHECK(result_no_bias.checked == 12 + 6);
}

TEST_CASE("Linear rejects bad sizes and inputs", "[layers][linear][errors]") {
  Rng rng(31);
  REQUIRE_THROWS_EXACT(momnet::Linear<double>(0, 3, rng), std::invalid_argument, "momnet::Linear",
                       "features must be positive", "in=0, out=3");
  REQUIRE_THROWS_EXACT(momnet::Linear<double>(3, -1, rng), std::invalid_argument, "momnet::Linear",
                       "in=3, out=-1");
  momnet::Linear<double> layer(3, 2, rng);
  momnet::Linear<double> no_bias(3, 2, rng, false);
  REQUIRE_THROWS_EXACT(no_bias.bias(), std::logic_error, "momnet::Linear::bias", "no bias");
  Tape<double> tape;
  REQUIRE_THROWS_EXACT(layer.forward(tape, tape.constant(Tensor<double>(Shape{4, 5}))), std::invalid_argument,
                       "momnet::linear", "[4, 5] and [2, 3]");
  REQUIRE_THROWS_EXACT(layer.forward(tape, tape.constant(Tensor<double>(Shape{}))), std::invalid_argument,
                       "momnet::linear", "rank 1 or more", "[] and [2, 3]");
}

// ---- activations and MLPBlock -------------------------------------------------

TEST_CASE("the Activation layer applies every ActivationKind", "[layers][activation]") {
  CHECK(std::string(momnet::to_string(ActivationKind::identity)) == "identity");
  CHECK(std::string(momnet::to_string(ActivationKind::tanh)) == "tanh");
  CHECK(std::string(momnet::to_string(ActivationKind::relu)) == "relu");
  CHECK(std::string(momnet::to_string(ActivationKind::sigmoid)) == "sigmoid");
  CHECK(std::string(momnet::to_string(ActivationKind::gelu)) == "gelu");
  CHECK(std::string(momnet::to_string(ActivationKind::softplus)) == "softplus");

  // Away from zero, where relu has its kink.
  Tensor<double> x = uniform(Shape{3, 4}, 41, 0.1, 2.0);
  for (Eigen::Index i = 0; i < x.size(); i += 2) x.data()[i] = -x.data()[i];
  const Eigen::ArrayXXd xa = x.matrix().array();
  for (const ActivationKind kind : all_activations) {
    INFO("activation " << momnet::to_string(kind));
    momnet::Activation<double> layer(kind);
    CHECK(layer.kind() == kind);
    CHECK(momnet::parameter_count(layer) == 0);
    Tape<double> tape;
    const Var<double> in = tape.variable(x);
    const Var<double> out = layer.forward(tape, in);
    CHECK(out.shape() == x.shape());
    Eigen::ArrayXXd expected;
    switch (kind) {
      case ActivationKind::identity: expected = xa; break;
      case ActivationKind::tanh: expected = xa.tanh(); break;
      case ActivationKind::relu: expected = xa.max(0.0); break;
      case ActivationKind::sigmoid: expected = 1.0 / (1.0 + (-xa).exp()); break;
      case ActivationKind::gelu: expected = 0.5 * xa * (1.0 + (xa / std::sqrt(2.0)).erf()); break;
      case ActivationKind::softplus: expected = (1.0 + xa.exp()).log(); break;
    }
    CHECK(out.value().isApprox(expected.matrix(), 1e-14));
    if (kind == ActivationKind::identity) CHECK(out.index() == in.index());  // no node recorded
    const auto result = momnet::check_block_gradients(layer, x);
    INFO(result.worst);
    CHECK(result.passed);
  }
  Tape<double> tape;
  const Var<double> v = tape.variable(x);
  REQUIRE_THROWS_EXACT(momnet::activate(v, static_cast<ActivationKind>(99)), std::invalid_argument,
                       "momnet::activate", "unknown activation kind 99");
  CHECK(std::string(momnet::to_string(static_cast<ActivationKind>(99))) == "unknown");
}

TEST_CASE("MLPBlock passes the gradient check for every activation", "[layers][mlp]") {
  const Tensor<double> x = uniform(Shape{4, 3}, 51, -1.5, 1.5);
  for (const ActivationKind kind : all_activations) {
    INFO("activation " << momnet::to_string(kind));
    Rng rng(52);
    momnet::MLPBlock<double> block(3, 5, rng, kind);
    CHECK(block.dim() == 3);
    CHECK(block.hidden() == 5);
    CHECK(block.activation() == kind);
    CHECK(momnet::parameter_count(block) == 3 * 5 + 5 + 5 * 3 + 3);
    const auto params = momnet::parameters_of(block);
    REQUIRE(params.size() == 4);
    CHECK(params[0]->name() == "fc1.weight");
    CHECK(params[3]->name() == "fc2.bias");

    Tape<double> tape;
    const Var<double> y = block.forward(tape, tape.constant(x));
    CHECK(y.shape() == Shape{4, 3});
    // The same composition written out with the block's own layers.
    const Var<double> h = momnet::activate(block.first().forward(tape, tape.constant(x)), kind);
    CHECK(y.value() == block.second().forward(tape, h).value());

    const auto result = momnet::check_block_gradients(block, x);
    INFO(result.worst << " (error " << result.max_error << ")");
    CHECK(result.passed);
    CHECK(result.checked == 12 + 38);
  }
}

TEST_CASE("MLPBlock rejects an input of the wrong width", "[layers][mlp][errors]") {
  Rng rng(61);
  momnet::MLPBlock<double> block(3, 5, rng);
  Tape<double> tape;
  REQUIRE_THROWS_EXACT(block.forward(tape, tape.constant(Tensor<double>(Shape{2, 4}))), std::invalid_argument,
                       "momnet::MLPBlock", "expects [..., 3], got [2, 4]");
  REQUIRE_THROWS_EXACT(block.forward(tape, tape.constant(Tensor<double>(Shape{4}))), std::invalid_argument,
                       "momnet::MLPBlock", "got [4]");
  REQUIRE_THROWS_EXACT(block.forward(tape, tape.constant(Tensor<double>(Shape{}))), std::invalid_argument,
                       "momnet::MLPBlock", "got []");
}

TEST_CASE("MLPBlock acts on the last axis of any rank, as a Transformer's feed-forward", "[layers][mlp]") {
  Rng rng(62);
  momnet::MLPBlock<double> block(3, 5, rng);
  for (const Shape& shape : {Shape{3}, Shape{2, 3}, Shape{2, 4, 3}, Shape{2, 2, 2, 3}}) {
    INFO(shape.to_string());
    const auto result = momnet::check_block_gradients(block, momnet_test::uniform(shape, 63));
    INFO(result.worst);
    CHECK(result.passed);
  }
  // A momentum stack over [batch, tokens, dim] rebuilds it exactly.
  momnet::MomentumResidual<momnet::MLPBlock<double>> net(block, 50);
  const Tensor<double> x = momnet_test::uniform(Shape{2, 4, 3}, 64);
  momnet::MomentumState<double> state = net.evaluate(x);
  net.inverse(state);
  CHECK((state.x().array() - x.array()).abs().maxCoeff() < 1e-12);
}
