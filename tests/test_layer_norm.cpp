// Layer normalisation: the layer_norm op against values computed by hand and
// a direct double-precision loop on ranks 2, 3 and 4 (one and two normalised
// axes, with and without weight and bias), float statistics accumulated in
// double, finite-difference gradients of input, weight and bias, one lean
// tape node, errors with their exact messages, nn.LayerNorm's parameters,
// names and initialisation, and a bitwise rebuild inside MomentumResidual.
#include <catch2/catch.hpp>

#include <momnet/layers/layer_norm.hpp>
#include <momnet/momnet.hpp>
#include <momnet/ops/layer_norm.hpp>

#include "helpers.hpp"
#include "support.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace momnet;
using namespace momnet_test;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

namespace {

// Direct loops in double: row r is the values sharing the leading indices.
template <class T>
std::vector<double> reference_layer_norm(const Tensor<T>& x, Index cols, const std::vector<double>& weight,
                                         const std::vector<double>& bias, double eps) {
  const Index rows = cols == 0 ? 0 : x.size() / cols;
  std::vector<double> y(static_cast<std::size_t>(x.size()));
  for (Index r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (Index j = 0; j < cols; ++j) sum += static_cast<double>(x.data()[r * cols + j]);
    const double mean = sum / static_cast<double>(cols);
    double squares = 0.0;
    for (Index j = 0; j < cols; ++j) {
      const double d = static_cast<double>(x.data()[r * cols + j]) - mean;
      squares += d * d;
    }
    const double invstd = 1.0 / std::sqrt(squares / static_cast<double>(cols) + eps);
    for (Index j = 0; j < cols; ++j) {
      const std::size_t at = static_cast<std::size_t>(r * cols + j);
      const double w = weight.empty() ? 1.0 : weight[static_cast<std::size_t>(j)];
      const double b = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(j)];
      y[at] = (static_cast<double>(x.data()[at]) - mean) * invstd * w + b;
    }
  }
  return y;
}

template <class T>
Tensor<T> converted(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

template <class T>
Tensor<T> tensor_of(const Shape& shape, const std::vector<double>& values) {
  Tensor<T> t(shape);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(values[static_cast<std::size_t>(i)]);
  return t;
}

// The trailing `k` dimensions of `shape`.
Shape trailing(const Shape& shape, int k) {
  std::vector<Index> dims = shape.dims();
  return Shape(std::vector<Index>(dims.end() - k, dims.end()));
}

struct Case {
  Shape input;
  int axes;  // normalised trailing axes
};

// Ranks 2, 3 and 4 with one and two normalised axes; small, for the gradient check.
const std::vector<Case> cases = {{Shape{3, 5}, 1}, {Shape{3, 5}, 2},       {Shape{2, 3, 4}, 1},
                                 {Shape{2, 3, 4}, 2}, {Shape{2, 2, 3, 3}, 1}, {Shape{2, 2, 2, 3}, 2}};

}  // namespace

TEST_CASE("layer_norm: values computed by hand (biased variance, eps inside the square root)",
          "[layer_norm]") {
  Tape<double> tape;
  // Row [1, 3]: mean 2, biased variance 1 (the unbiased one would be 2).
  // eps = 3 inside the root gives 1 / sqrt(1 + 3) = 1/2; outside it would give 1 / (1 + 3).
  {
    const Var<double> x = tape.constant(tensor_of<double>(Shape{1, 2}, {1, 3}));
    const Var<double> y = layer_norm(x, Shape{2}, Var<double>(), Var<double>(), 3.0);
    CHECK(y.data()[0] == -0.5);
    CHECK(y.data()[1] == 0.5);
    const Var<double> z = layer_norm(x, Shape{2}, Var<double>(), Var<double>(), 0.0);
    CHECK(z.data()[0] == -1.0);
    CHECK(z.data()[1] == 1.0);
  }
  // Rows [2, 4, 6, 8] and [5, 5, 5, 5] with weight [1, 2, 3, 4] and bias [0.5, 0, 0, -1], eps 0.25:
  // row 0: mean 5, variance (9 + 1 + 1 + 9) / 4 = 5, so x̂ = (x - 5) / sqrt(5.25);
  // row 1: variance 0, x̂ = 0 / sqrt(0.25) = 0, the output is the bias.
  {
    const Var<double> x = tape.constant(tensor_of<double>(Shape{2, 4}, {2, 4, 6, 8, 5, 5, 5, 5}));
    const Var<double> w = tape.constant(tensor_of<double>(Shape{4}, {1, 2, 3, 4}));
    const Var<double> b = tape.constant(tensor_of<double>(Shape{4}, {0.5, 0, 0, -1}));
    const Var<double> y = layer_norm(x, Shape{4}, w, b, 0.25);
    const double s = std::sqrt(5.25);
    const std::vector<double> expected = {-3 / s + 0.5, -2 / s, 3 / s, 12 / s - 1, 0.5, 0, 0, -1};
    for (std::size_t i = 0; i < expected.size(); ++i) CHECK(y.data()[i] == Approx(expected[i]).epsilon(1e-15));
  }
  // Two normalised axes: [1, 2, 2] normalised over [2, 2] is one row [0, 2, 4, 6]: mean 3, variance 5.
  {
    const Var<double> x = tape.constant(tensor_of<double>(Shape{1, 2, 2}, {0, 2, 4, 6}));
    const Var<double> y = layer_norm(x, Shape{2, 2}, Var<double>(), Var<double>(), 0.0);
    CHECK(y.shape() == Shape{1, 2, 2});
    const double s = std::sqrt(5.0);
    const std::vector<double> expected = {-3 / s, -1 / s, 1 / s, 3 / s};
    for (std::size_t i = 0; i < expected.size(); ++i) CHECK(y.data()[i] == Approx(expected[i]).epsilon(1e-15));
    // Over the last axis alone the rows are [0, 2] and [4, 6]: each (-1, 1).
    const Var<double> z = layer_norm(x, Shape{2}, Var<double>(), Var<double>(), 0.0);
    for (std::size_t i = 0; i < 4; ++i) CHECK(z.data()[i] == (i % 2 == 0 ? -1.0 : 1.0));
  }
}

TEMPLATE_TEST_CASE("layer_norm: outputs match a direct double loop on ranks 2, 3 and 4", "[layer_norm]", float,
                   double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  std::uint64_t seed = 10;
  for (const Case& c : cases) {
    for (int affine = 0; affine < 4; ++affine) {  // none, weight, bias, both
      const Shape normalized = trailing(c.input, c.axes);
      INFO("input " << c.input.to_string() << ", normalized_shape " << normalized.to_string() << ", affine "
                    << affine);
      const Tensor<T> x = converted<T>(uniform(c.input, ++seed, -2.0, 3.0));
      const Tensor<double> w = uniform(normalized, ++seed, 0.5, 1.5);
      const Tensor<double> b = uniform(normalized, ++seed);
      Tape<T> tape;
      const Var<T> wv = (affine & 1) ? tape.constant(converted<T>(w)) : Var<T>();
      const Var<T> bv = (affine & 2) ? tape.constant(converted<T>(b)) : Var<T>();
      const Var<T> y = layer_norm(tape.constant(x), normalized, wv, bv, 1e-3);
      REQUIRE(y.shape() == c.input);
      // The reference reads the weight and bias as T rounded them.
      std::vector<double> wr, br;
      for (Index i = 0; (affine & 1) && i < w.size(); ++i) wr.push_back(static_cast<double>(static_cast<T>(w.data()[i])));
      for (Index i = 0; (affine & 2) && i < b.size(); ++i) br.push_back(static_cast<double>(static_cast<T>(b.data()[i])));
      const std::vector<double> expected = reference_layer_norm(x, normalized.size(), wr, br, 1e-3);
      for (Index i = 0; i < x.size(); ++i) {
        CHECK(static_cast<double>(y.data()[i]) == Approx(expected[static_cast<std::size_t>(i)]).margin(tolerance));
      }
    }
  }
}

TEST_CASE("layer_norm: float rows are summed in double, and recomputation gives the same bits", "[layer_norm]") {
  // 1000 values near 10^4: a float running sum would be off by about 1 in
  // the mean, ruining x - mean (spread of order 1). Summed in double and
  // rounded once, each output is within one float rounding of the double
  // result on the same float inputs.
  const Tensor<double> noise = uniform(Shape{2, 1000}, 21);
  Tensor<float> x(Shape{2, 1000});
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(1e4 + noise.data()[i]);
  Tape<float> tape;
  const Var<float> xv = tape.constant(x);
  const Var<float> y = layer_norm(xv, Shape{1000});
  const std::vector<double> expected = reference_layer_norm(x, 1000, {}, {}, 1e-5);
  double worst = 0.0;
  for (Index i = 0; i < x.size(); ++i) {
    const double e = expected[static_cast<std::size_t>(i)];
    worst = std::max(worst, std::abs(static_cast<double>(y.data()[i]) - e) / std::max(1.0, std::abs(e)));
  }
  CHECK(worst <= 2.0 * std::numeric_limits<float>::epsilon());
  const Var<float> again = layer_norm(xv, Shape{1000});
  CHECK(std::memcmp(y.data(), again.data(), sizeof(float) * 2000) == 0);
}

TEST_CASE("layer_norm: gradients of input, weight and bias pass the finite-difference check on ranks 2, 3, 4",
          "[layer_norm][grad]") {
  std::uint64_t seed = 30;
  for (const Case& c : cases) {
    const Shape normalized = trailing(c.input, c.axes);
    const std::vector<Tensor<double>> inputs = {uniform(c.input, ++seed, -2.0, 2.0),
                                                uniform(normalized, ++seed, 0.5, 1.5), uniform(normalized, ++seed)};
    for (int affine = 0; affine < 4; ++affine) {  // none, weight, bias, both
      INFO("input " << c.input.to_string() << ", normalized_shape " << normalized.to_string() << ", affine "
                    << affine);
      const GradientCheckResult result = check_gradients(
          [&](Tape<double>&, const Vars& v) {
            return layer_norm(v[0], normalized, (affine & 1) ? v[1] : Var<double>(), (affine & 2) ? v[2] : Var<double>());
          },
          inputs);
      INFO(result.worst << " (error " << result.max_error << ")");
      CHECK(result.passed);
    }
  }
  // The same Var as input and (through the graph) weight: contributions add up.
  const GradientCheckResult shared = check_gradients(
      [](Tape<double>&, const Vars& v) { return layer_norm(v[0], Shape{4}, v[0], v[0]); },
      {uniform(Shape{4}, 40, 0.5, 2.0)});
  INFO(shared.worst);
  CHECK(shared.passed);
}

TEST_CASE("layer_norm: the gradient check catches a reverse rule that forgets the statistics' dependence on x",
          "[layer_norm][grad]") {
  // The affine map's rule alone (gx = rstd w g), as if mean and 1/std were
  // constants: the check must fail, or it could not tell a wrong rule.
  const Shape shape{3, 4};
  const GradientCheckResult result = check_gradients(
      [&](Tape<double>& tape, const Vars& v) {
        const Var<double> x = v[0];
        const Var<double> y = layer_norm(x, Shape{4});
        const double* px = x.data();
        double* out = tape.allocate(shape.size());
        std::copy(y.data(), y.data() + shape.size(), out);
        return tape.record_op({x}, shape, out, [=](Gradients<double>& g) {
          for (Index r = 0; r < 3; ++r) {
            double mean = 0.0, squares = 0.0;
            for (Index j = 0; j < 4; ++j) mean += px[r * 4 + j] / 4.0;
            for (Index j = 0; j < 4; ++j) squares += (px[r * 4 + j] - mean) * (px[r * 4 + j] - mean) / 4.0;
            for (Index j = 0; j < 4; ++j) g.input(0)[r * 4 + j] += g.output(0)[r * 4 + j] / std::sqrt(squares + 1e-5);
          }
        });
      },
      {uniform(shape, 41)});
  CHECK_FALSE(result.passed);
}

TEST_CASE("layer_norm: one tape node that keeps its output and two doubles per row", "[layer_norm][memory]") {
  Tape<float> tape;
  const Shape shape{4, 8, 32};
  const Var<float> x = tape.variable(converted<float>(uniform(shape, 50)));
  const Var<float> w = tape.variable(converted<float>(uniform(Shape{32}, 51)));
  const Var<float> b = tape.variable(converted<float>(uniform(Shape{32}, 52)));
  const std::size_t nodes = tape.size(), bytes = tape.arena_bytes_in_use();
  const Var<float> y = layer_norm(x, Shape{32}, w, b);
  CHECK(tape.size() == nodes + 1);
  const std::size_t output = sizeof(float) * static_cast<std::size_t>(shape.size());
  const std::size_t statistics = 2 * sizeof(double) * 4 * 8;  // mean and 1/std of each of the 4 * 8 rows
  // The rest: the three input handles and the reverse step, with alignment.
  CHECK(tape.arena_bytes_in_use() - bytes <= output + statistics + 1024);
  tape.backward(sum(y));
  for (Index j = 0; j < 32; ++j) CHECK(b.grad().data()[j] == 32.0f);  // 1 from each of the 4 * 8 rows
  // Without a weight, each row of x̂ sums to 0 whatever x: sum(y) does not depend on x.
  tape.backward(sum(layer_norm(x, Shape{32})));
  CHECK(x.grad().cwiseAbs().maxCoeff() < 1e-6f);
}

TEST_CASE("layer_norm: empty values run forward and backward", "[layer_norm]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{0, 4}));
  const Var<double> w = tape.variable(uniform(Shape{4}, 60));
  const Var<double> b = tape.variable(uniform(Shape{4}, 61));
  const Var<double> y = layer_norm(x, Shape{4}, w, b);
  CHECK(y.shape() == Shape{0, 4});
  tape.backward(sum(y));
  CHECK(w.grad().isZero());
  CHECK(b.grad().isZero());
  // A normalised axis of size 0: rows of no values, an empty output.
  const Var<double> e = tape.variable(Tensor<double>(Shape{3, 0}));
  const Var<double> z = layer_norm(e, Shape{0});
  CHECK(z.shape() == Shape{3, 0});
  tape.backward(sum(z));
}

TEST_CASE("layer_norm and LayerNorm refuse bad arguments with clear errors", "[layer_norm][errors]") {
  Tape<double> tape;
  const Var<double> x = tape.constant(Tensor<double>(Shape{2, 3, 4}));
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{3}), std::invalid_argument,
                       "momnet::layer_norm: normalized_shape [3] must equal the trailing dimensions of the input, "
                       "got an input of [2, 3, 4]");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{4, 4}), std::invalid_argument, "normalized_shape [4, 4]",
                       "[2, 3, 4]");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{2, 2, 3, 4}), std::invalid_argument, "normalized_shape [2, 2, 3, 4]",
                       "got an input of [2, 3, 4]");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{}), std::invalid_argument,
                       "momnet::layer_norm: normalized_shape must have at least one dimension, got []");
  REQUIRE_THROWS_EXACT(layer_norm(tape.constant(Tensor<double>(Shape{})), Shape{1}), std::invalid_argument,
                       "normalized_shape [1] must equal the trailing dimensions of the input, got an input of []");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{3, 4}, tape.constant(Tensor<double>(Shape{12}))), std::invalid_argument,
                       "momnet::layer_norm: the weight must have normalized_shape [3, 4], got [12]");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{4}, Var<double>(), tape.constant(Tensor<double>(Shape{3}))),
                       std::invalid_argument, "momnet::layer_norm: the bias must have normalized_shape [4], got [3]");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{4}, Var<double>(), Var<double>(), -1e-5), std::invalid_argument,
                       "momnet::layer_norm: eps must be finite and >= 0, got -1e-05");
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{4}, Var<double>(), Var<double>(), std::nan("")), std::invalid_argument,
                       "momnet::layer_norm: eps must be finite and >= 0, got nan");
  REQUIRE_THROWS_EXACT(layer_norm(Var<double>(), Shape{4}), std::invalid_argument,
                       "momnet::layer_norm: empty Var");
  Tape<double> other;
  REQUIRE_THROWS_EXACT(layer_norm(x, Shape{4}, other.constant(Tensor<double>(Shape{4}))), std::invalid_argument,
                       "momnet::layer_norm: the operands belong to different tapes");

  REQUIRE_THROWS_EXACT(LayerNorm<double>(0), std::invalid_argument,
                       "momnet::LayerNorm: normalized_size must be positive, got 0");
  REQUIRE_THROWS_EXACT(LayerNorm<double>(Shape{3, 0}), std::invalid_argument,
                       "momnet::LayerNorm: normalized_shape must have at least one dimension, all positive, got [3, 0]");
  REQUIRE_THROWS_EXACT(LayerNorm<double>(Shape{}), std::invalid_argument, "got []");
  LayerNormOptions negative;
  negative.eps = -1.0;
  REQUIRE_THROWS_EXACT(LayerNorm<double>(4, negative), std::invalid_argument,
                       "momnet::LayerNorm: eps must be finite and >= 0, got -1");
  LayerNorm<double> norm(Shape{3, 4});
  REQUIRE_THROWS_EXACT(norm.forward(tape, tape.constant(Tensor<double>(Shape{2, 4, 3}))), std::invalid_argument,
                       "normalized_shape [3, 4] must equal the trailing dimensions of the input, got an input of "
                       "[2, 4, 3]");
  LayerNormOptions plain;
  plain.elementwise_affine = false;
  LayerNorm<double> bare(4, plain);
  REQUIRE_THROWS_EXACT(bare.weight(), std::logic_error,
                       "momnet::LayerNorm::weight: this layer has elementwise_affine = false");
  REQUIRE_THROWS_EXACT(bare.bias(), std::logic_error,
                       "momnet::LayerNorm::bias: this layer has elementwise_affine = false");
  LayerNormOptions no_bias;
  no_bias.bias = false;
  LayerNorm<double> weight_only(4, no_bias);
  REQUIRE_THROWS_EXACT(weight_only.bias(), std::logic_error, "momnet::LayerNorm::bias: this layer has bias = false");
}

TEST_CASE("LayerNorm: nn.LayerNorm's parameters, names and initialisation", "[layer_norm][names]") {
  LayerNorm<float> norm(8);
  auto named = named_parameters(norm);
  REQUIRE(named.size() == 2);
  CHECK(named[0].first == "weight");
  CHECK(named[1].first == "bias");
  CHECK(norm.weight().shape() == Shape{8});
  CHECK(norm.bias().shape() == Shape{8});
  CHECK((norm.weight().array() == 1.0f).all());
  CHECK((norm.bias().array() == 0.0f).all());
  CHECK(norm.eps() == 1e-5);

  LayerNorm<float> two(Shape{3, 8});
  CHECK(two.weight().shape() == Shape{3, 8});
  CHECK(two.normalized_shape() == Shape{3, 8});

  LayerNormOptions no_bias;
  no_bias.bias = false;
  LayerNorm<float> weight_only(8, no_bias);
  named = named_parameters(weight_only);
  REQUIRE(named.size() == 1);
  CHECK(named[0].first == "weight");

  LayerNormOptions plain;
  plain.elementwise_affine = false;
  LayerNorm<float> bare(8, plain);
  CHECK(named_parameters(bare).empty());
  CHECK(named_buffers(bare).empty());
}

TEST_CASE("LayerNorm: block gradients with one and two normalised axes, with and without affine parameters",
          "[layer_norm][grad]") {
  LayerNormOptions options;
  for (int variant = 0; variant < 3; ++variant) {  // affine with bias, weight only, none
    options.elementwise_affine = variant < 2;
    options.bias = variant == 0;
    for (int axes = 1; axes <= 2; ++axes) {
      INFO("variant " << variant << ", axes " << axes);
      LayerNorm<double> norm = axes == 1 ? LayerNorm<double>(4, options) : LayerNorm<double>(Shape{3, 4}, options);
      // Weights away from ones and zeros, so that a rule ignoring them fails.
      Rng rng(70 + static_cast<std::uint64_t>(axes));
      for (Parameter<double>* p : parameters_of(norm)) init::uniform(*p, 0.5, 1.5, rng);
      const GradientCheckResult result = check_block_gradients(norm, uniform(Shape{2, 3, 4}, 72, -2.0, 2.0));
      INFO(result.worst << " (error " << result.max_error << ")");
      CHECK(result.passed);
      CHECK(result.checked == static_cast<std::size_t>(24 + (variant == 0 ? 2 : variant == 1 ? 1 : 0) *
                                                                 (axes == 1 ? 4 : 12)));
    }
  }
}

TEMPLATE_TEST_CASE("LayerNorm as the blocks of a MomentumResidual: the rebuild gives the forward's bits",
                   "[layer_norm][momentum][exact]", float, double) {
  using T = TestType;
  std::vector<LayerNorm<T>> blocks;
  Rng rng(80);
  for (int n = 0; n < 16; ++n) {
    blocks.emplace_back(6);
    init::uniform(blocks.back().weight(), 0.5, 1.5, rng);
    init::uniform(blocks.back().bias(), -0.5, 0.5, rng);
  }
  MomentumResidual<LayerNorm<T>> exact(blocks, options_for(0.9, BackwardMode::exact));
  require_bitwise_rebuild<T>(exact, random_input<T>(5, 6, 81));
  if constexpr (std::is_same_v<T, double>) {
    MomentumResidual<LayerNorm<T>> stored(blocks, options_for(0.9, BackwardMode::stored));
    const Mat<T> input = random_input<T>(5, 6, 82);
    CHECK(relative_error(gradients_of(exact, input), gradients_of(stored, input)) <= 1e-10);
  }
}
