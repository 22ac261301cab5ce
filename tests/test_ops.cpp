// Every tape operation: gradients against finite differences (double), float
// gradients against double gradients, forward values against direct Eigen or
// hand computations, and the errors each operation raises.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace {

using momnet_test::uniform;

using momnet::GradientCheckOptions;
using momnet::Rng;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Transpose;
using momnet::Var;

// The scalar type of a std::vector<Var<T>> handed to an operation lambda.
template <class Vars>
using scalar_of = typename std::decay_t<Vars>::value_type::Scalar;


// Uniform values in [low, high).

// Values of magnitude in [low, high) with random signs: away from zero (relu's
// kink, a divisor).
Tensor<double> away_from_zero(const Shape& shape, std::uint64_t seed, double low = 0.2, double high = 2.0) {
  Tensor<double> t = uniform(shape, seed, low, high);
  Rng signs(seed + 1000);
  for (Eigen::Index i = 0; i < t.size(); ++i) {
    if (signs.uniform() < 0.5) t.data()[i] = -t.data()[i];
  }
  return t;
}

Tensor<double> values(const Shape& shape, std::initializer_list<double> list) {
  Tensor<double> t(shape);
  REQUIRE(static_cast<Eigen::Index>(list.size()) == t.size());
  std::copy(list.begin(), list.end(), t.data());
  return t;
}

template <class T>
Tensor<T> to_precision(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  out.array() = t.array().template cast<T>();
  return out;
}

// The analytic gradients, in precision T, of <R, f(inputs)> for a fixed
// random R (of the output's shape; R = 1 for a scalar output) with respect to
// every input. Uses backward with a seed for non-scalar outputs.
template <class T, class F>
std::vector<Eigen::ArrayXd> analytic_gradients(F& f, const std::vector<Tensor<double>>& inputs) {
  Tape<T> tape;
  std::vector<Var<T>> vars;
  for (const auto& input : inputs) vars.push_back(tape.variable(to_precision<T>(input)));
  const Var<T> out = f(tape, static_cast<const std::vector<Var<T>>&>(vars));
  if (out.size() == 1) {
    tape.backward(out);
  } else {
    // The seed lives in a Tensor: backward reads it through a 64-byte aligned
    // view (an Eigen vector's data would trip Eigen's alignment assertion).
    Rng rng(12345);
    Tensor<T> seed(out.shape());
    for (Eigen::Index i = 0; i < seed.size(); ++i) seed.data()[i] = static_cast<T>(rng.uniform(-1.0, 1.0));
    tape.backward(out, seed.data());
  }
  std::vector<Eigen::ArrayXd> grads;
  for (const Var<T>& v : vars) {
    const auto g = v.grad();
    grads.push_back(Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(g.data(), g.size()).template cast<double>());
  }
  return grads;
}

// The largest elementwise error of `approx` against `exact`, each error taken
// relative to max(|exact|, 1e-3 * largest |exact|) as the gradient checker does.
double gradient_difference(const std::vector<Eigen::ArrayXd>& approx, const std::vector<Eigen::ArrayXd>& exact,
                           std::string& worst) {
  double scale = 0.0;
  for (const auto& g : exact) scale = std::max(scale, g.abs().maxCoeff());
  REQUIRE(scale > 0.0);  // a check of all-zero gradients would prove nothing
  double max_error = 0.0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    for (Eigen::Index e = 0; e < exact[i].size(); ++e) {
      const double error =
          std::abs(approx[i][e] - exact[i][e]) / std::max(std::abs(exact[i][e]), 1e-3 * scale);
      if (!(error <= max_error)) {
        max_error = error;
        std::ostringstream where;
        where.precision(10);
        where << "input " << i << " element " << e << ": float " << approx[i][e] << ", double " << exact[i][e];
        worst = where.str();
      }
    }
  }
  return max_error;
}

// Checks an operation given as a generic lambda (Tape<T>&, const
// std::vector<Var<T>>&) -> Var<T>: double gradients against finite
// differences (the default tolerance, 1e-6, passes every operation; the worst
// is about 1e-7), then float gradients against double gradients. Float
// errors reach about 1.4e-5 (gelu: its derivative crosses zero near x = -0.75,
// where two terms of 0.2 cancel), 8e-6 (matmul with transposes: entries that
// are small sums of cancelling products) and 6e-6 (sigmoid: y (1 - y) loses
// digits as y nears 1), hence 1e-4.
template <class F>
void check_op(const std::string& name, F f, const std::vector<Tensor<double>>& inputs,
              double float_tolerance = 1e-4, const GradientCheckOptions& options = {}) {
  INFO("operation: " << name);
  const momnet::GradientCheckResult result = momnet::check_gradients(f, inputs, {}, options);
  INFO("finite differences, worst: " << result.worst << " (error " << result.max_error << ")");
  std::size_t elements = 0;
  for (const auto& input : inputs) elements += static_cast<std::size_t>(input.size());
  CHECK(result.checked == elements);
  CHECK(result.passed);

  const auto exact = analytic_gradients<double>(f, inputs);
  const auto single = analytic_gradients<float>(f, inputs);
  std::string worst;
  const double error = gradient_difference(single, exact, worst);
  INFO("float against double, worst: " << worst << " (error " << error << ")");
  CHECK(error <= float_tolerance);
}

template <class T>
Var<T> binary(int op, const Var<T>& a, const Var<T>& b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b;
  }
}
const char* const binary_names[] = {"add", "sub", "mul", "div"};

}  // namespace

// ---- gradients ----------------------------------------------------------------

TEST_CASE("matmul gradients, every transpose combination", "[ops][gradients]") {
  struct Case {
    Transpose ta, tb;
    Shape a, b;
  };
  const Case cases[] = {{Transpose::no, Transpose::no, Shape{2, 3}, Shape{3, 4}},
                        {Transpose::no, Transpose::yes, Shape{2, 3}, Shape{4, 3}},
                        {Transpose::yes, Transpose::no, Shape{3, 2}, Shape{3, 4}},
                        {Transpose::yes, Transpose::yes, Shape{3, 2}, Shape{4, 3}}};
  for (const Case& c : cases) {
    const std::string name = std::string("matmul ") + (c.ta == Transpose::yes ? "T" : "N") +
                             (c.tb == Transpose::yes ? "T" : "N");
    check_op(
        name, [&c](auto&, const auto& v) { return momnet::matmul(v[0], v[1], c.ta, c.tb); },
        {uniform(c.a, 1), uniform(c.b, 2)});
  }
}

TEST_CASE("linear gradients, with and without bias", "[ops][gradients]") {
  check_op(
      "linear with bias", [](auto&, const auto& v) { return momnet::linear(v[0], v[1], v[2]); },
      {uniform(Shape{3, 4}, 3), uniform(Shape{2, 4}, 4), uniform(Shape{2}, 5)});
  check_op(
      "linear with a [1, out] bias", [](auto&, const auto& v) { return momnet::linear(v[0], v[1], v[2]); },
      {uniform(Shape{3, 4}, 3), uniform(Shape{2, 4}, 4), uniform(Shape{1, 2}, 5)});
  check_op(
      "linear without bias", [](auto&, const auto& v) { return momnet::linear(v[0], v[1]); },
      {uniform(Shape{3, 4}, 6), uniform(Shape{2, 4}, 7)});
}

TEST_CASE("add, sub, mul, div gradients with every broadcast", "[ops][gradients]") {
  struct Case {
    const char* name;
    Shape a, b;
  };
  const Case cases[] = {
      {"same shape", Shape{2, 3}, Shape{2, 3}},
      {"row [3] on the right", Shape{2, 3}, Shape{3}},
      {"row [1, 3] on the right", Shape{2, 3}, Shape{1, 3}},
      {"row [3] on the left", Shape{3}, Shape{2, 3}},
      {"row [1, 3] on the left", Shape{1, 3}, Shape{2, 3}},
      {"row [3] of an image batch on the right", Shape{2, 2, 1, 3}, Shape{3}},
      {"scalar on the right", Shape{2, 3}, Shape{}},
      {"scalar [1, 1] on the left", Shape{1, 1}, Shape{2, 3}},
      {"scalar [1] on the left", Shape{1}, Shape{2, 3}},
  };
  for (int op = 0; op < 4; ++op) {
    for (const Case& c : cases) {
      // The divisor stays away from zero; mul and div use it too for variety.
      check_op(
          std::string(binary_names[op]) + ", " + c.name,
          [op](auto&, const auto& v) { return binary(op, v[0], v[1]); },
          {uniform(c.a, 10 + static_cast<std::uint64_t>(op)), away_from_zero(c.b, 20, 0.5, 2.0)});
    }
  }
}

TEST_CASE("unary operation gradients", "[ops][gradients]") {
  const Tensor<double> x = uniform(Shape{3, 4}, 30, -2.0, 2.0);
  check_op("scale", [](auto&, const auto& v) { return momnet::scale(v[0], scalar_of<decltype(v)>(2.5)); }, {x});
  check_op("scalar * Var", [](auto&, const auto& v) { return scalar_of<decltype(v)>(-1.5) * v[0]; }, {x});
  check_op("Var * scalar", [](auto&, const auto& v) { return v[0] * scalar_of<decltype(v)>(0.25); }, {x});
  check_op("unary minus", [](auto&, const auto& v) { return -v[0]; }, {x});
  check_op("square", [](auto&, const auto& v) { return momnet::square(v[0]); }, {x});
  check_op("exp", [](auto&, const auto& v) { return momnet::exp(v[0]); }, {x});
  check_op("log", [](auto&, const auto& v) { return momnet::log(v[0]); }, {uniform(Shape{3, 4}, 31, 0.2, 3.0)});
  check_op("tanh", [](auto&, const auto& v) { return momnet::tanh(v[0]); }, {x});
  // Both signs, small and large magnitudes, none within a finite-difference step of the kink.
  check_op("relu", [](auto&, const auto& v) { return momnet::relu(v[0]); },
           {values(Shape{3, 4}, {-2.0, -0.5, -0.05, -1e-3, 1e-3, 0.05, 0.5, 2.0, -1.2, 0.3, -0.3, 1.1})});
  check_op("sigmoid", [](auto&, const auto& v) { return momnet::sigmoid(v[0]); },
           {uniform(Shape{3, 4}, 33, -6.0, 6.0)});
  check_op("gelu", [](auto&, const auto& v) { return momnet::gelu(v[0]); }, {uniform(Shape{3, 4}, 34, -4.0, 4.0)});
  check_op("softplus", [](auto&, const auto& v) { return momnet::softplus(v[0]); },
           {values(Shape{2, 4}, {-30.0, -5.0, -1.0, -0.1, 0.2, 1.5, 6.0, 30.0})});
}

TEST_CASE("reduction gradients", "[ops][gradients]") {
  check_op("sum", [](auto&, const auto& v) { return momnet::sum(v[0]); }, {uniform(Shape{3, 4}, 40)});
  check_op("sum of a rank-4 value", [](auto&, const auto& v) { return momnet::sum(v[0]); },
           {uniform(Shape{2, 1, 2, 3}, 41)});
  check_op("mean", [](auto&, const auto& v) { return momnet::mean(v[0]); }, {uniform(Shape{3, 4}, 42)});
}

TEST_CASE("softmax and log_softmax gradients", "[ops][gradients]") {
  check_op("softmax", [](auto&, const auto& v) { return momnet::softmax(v[0]); }, {uniform(Shape{3, 5}, 50, -3, 3)});
  check_op("softmax of one row [5]", [](auto&, const auto& v) { return momnet::softmax(v[0]); },
           {uniform(Shape{5}, 51, -3, 3)});
  check_op("log_softmax", [](auto&, const auto& v) { return momnet::log_softmax(v[0]); },
           {uniform(Shape{3, 5}, 52, -3, 3)});
}

TEST_CASE("loss gradients", "[ops][gradients]") {
  const std::vector<int> labels{0, 2, 1, 2};
  check_op("cross_entropy", [&labels](auto&, const auto& v) { return momnet::cross_entropy(v[0], labels); },
           {uniform(Shape{4, 3}, 60, -2, 2)});
  check_op("mse", [](auto&, const auto& v) { return momnet::mse(v[0], v[1]); },
           {uniform(Shape{3, 2}, 61), uniform(Shape{3, 2}, 62)});
  check_op("mse of rank-4 values", [](auto&, const auto& v) { return momnet::mse(v[0], v[1]); },
           {uniform(Shape{2, 1, 2, 2}, 63), uniform(Shape{2, 1, 2, 2}, 64)});
}

TEST_CASE("shape operation gradients", "[ops][gradients]") {
  check_op("reshape [2, 6] -> [3, 4]",
           [](auto&, const auto& v) { return momnet::reshape(v[0], Shape{3, 4}); }, {uniform(Shape{2, 6}, 70)});
  // A reshape between two operations, so its gradient is not just the seed.
  check_op(
      "tanh(reshape [2, 6] -> [2, 3, 2]) * reshape",
      [](auto&, const auto& v) {
        const auto r = momnet::reshape(v[0], Shape{2, 3, 2});
        return momnet::mul(momnet::tanh(r), r);
      },
      {uniform(Shape{2, 6}, 71)});
  check_op("concat of 2", [](auto&, const auto& v) { return momnet::concat(v[0], v[1]); },
           {uniform(Shape{2, 3}, 72), uniform(Shape{2, 2}, 73)});
  check_op(
      "concat of 3",
      [](auto&, const auto& v) {
        using T = scalar_of<decltype(v)>;
        return momnet::concat(std::vector<Var<T>>{v[0], v[1], v[2]});
      },
      {uniform(Shape{2, 1}, 74), uniform(Shape{2, 3}, 75), uniform(Shape{2, 2}, 76)});
  check_op(
      "concat of 3 with a part used twice",
      [](auto&, const auto& v) {
        using T = scalar_of<decltype(v)>;
        return momnet::concat(std::vector<Var<T>>{v[0], v[1], v[0]});
      },
      {uniform(Shape{2, 2}, 77), uniform(Shape{2, 3}, 78)});
  check_op("slice", [](auto&, const auto& v) { return momnet::slice(v[0], 1, 3); }, {uniform(Shape{3, 5}, 79)});
  check_op("slice of a rank-1 value", [](auto&, const auto& v) { return momnet::slice(v[0], 0, 2); },
           {uniform(Shape{5}, 80)});
}

TEST_CASE("a composite network's gradients", "[ops][gradients]") {
  // Every input is used more than once or through several operations.
  const std::vector<int> labels{1, 0, 2};
  check_op(
      "cross_entropy(linear(gelu(linear(x))) + x W)",
      [&labels](auto&, const auto& v) {
        const auto h = momnet::gelu(momnet::linear(v[0], v[1], v[2]));
        const auto logits = momnet::linear(h, v[3]) + momnet::matmul(v[0], v[3], Transpose::no, Transpose::yes);
        return momnet::cross_entropy(logits, labels) + momnet::mean(momnet::square(v[2]));
      },
      {uniform(Shape{3, 3}, 90), uniform(Shape{3, 3}, 91), uniform(Shape{3}, 92), uniform(Shape{3, 3}, 93)});
}

// ---- forward values -----------------------------------------------------------

TEMPLATE_TEST_CASE("forward values match direct computations", "[ops][values]", float, double) {
  using T = TestType;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const double tolerance = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  Tape<T> tape;
  const Matrix a = to_precision<T>(uniform(Shape{2, 3}, 100, -3, 3)).matrix();
  const Matrix b = to_precision<T>(uniform(Shape{3, 4}, 101)).matrix();
  const Var<T> va = tape.constant(a);
  const Var<T> vb = tape.constant(b);

  SECTION("matmul, all transposes") {
    const Matrix expected = a * b;
    CHECK(momnet::matmul(va, vb).value().isApprox(expected, T(tolerance)));
    const Var<T> at = tape.constant(Matrix(a.transpose()));
    const Var<T> bt = tape.constant(Matrix(b.transpose()));
    CHECK(momnet::matmul(va, bt, Transpose::no, Transpose::yes).value().isApprox(expected, T(tolerance)));
    CHECK(momnet::matmul(at, vb, Transpose::yes, Transpose::no).value().isApprox(expected, T(tolerance)));
    CHECK(momnet::matmul(at, bt, Transpose::yes, Transpose::yes).value().isApprox(expected, T(tolerance)));
  }
  SECTION("linear is x W^T + b, a row broadcast add is x + b") {
    const Matrix w = to_precision<T>(uniform(Shape{4, 3}, 102)).matrix();
    const Eigen::Matrix<T, 1, Eigen::Dynamic> bias = to_precision<T>(uniform(Shape{1, 4}, 103)).matrix();
    const Matrix expected = (a * w.transpose()).rowwise() + bias;
    const Var<T> y = momnet::linear(va, tape.constant(w), tape.constant(bias));
    CHECK(y.shape() == Shape{2, 4});
    CHECK(y.value().isApprox(expected, T(tolerance)));
    // A dynamic row: GCC 12 misreads vector copies of a fixed 3-element one.
    const Eigen::Matrix<T, 1, Eigen::Dynamic> row_values = (Eigen::Matrix<T, 1, Eigen::Dynamic>(3) << T(1), T(-2), T(0.5)).finished();
    const Var<T> row = tape.constant(Tensor<T>(row_values));
    const Matrix sum = (a.rowwise() + row_values);
    CHECK((va + row).value().isApprox(sum, T(tolerance)));
    CHECK((row + va).value().isApprox(sum, T(tolerance)));
    CHECK((va - row).shape() == Shape{2, 3});
  }
  SECTION("softmax rows sum to 1 and equal exp(x) / sum exp(x), even for huge inputs") {
    Matrix x = a;
    x(1, 2) = T(1000);  // exp would overflow without the max subtraction
    const Var<T> s = momnet::softmax(tape.constant(x));
    CHECK(s.value().array().isFinite().all());
    CHECK(s.value().rowwise().sum().isApprox(Matrix::Ones(2, 1), T(tolerance)));
    const Eigen::Array<T, 1, Eigen::Dynamic> e0 = a.row(0).array().exp();
    CHECK(s.value().row(0).isApprox((e0 / e0.sum()).matrix(), T(tolerance)));
    CHECK(s.value()(1, 2) == Approx(1.0).margin(tolerance));
    const Var<T> ls = momnet::log_softmax(tape.constant(x));
    CHECK(ls.value().row(0).isApprox((e0 / e0.sum()).log().matrix(), T(tolerance)));
    CHECK(ls.value()(1, 2) == Approx(0.0).margin(tolerance));
    CHECK(ls.value().array().isFinite().all());
  }
  SECTION("cross_entropy is -mean log p(label)") {
    const std::vector<int> labels{2, 0};
    double expected = 0.0;
    for (int i = 0; i < 2; ++i) {
      double total = 0.0;
      for (int j = 0; j < 3; ++j) total += std::exp(static_cast<double>(a(i, j)));
      expected -= std::log(std::exp(static_cast<double>(a(i, labels[static_cast<std::size_t>(i)]))) / total);
    }
    expected /= 2.0;
    CHECK(momnet::cross_entropy(va, labels).item() == Approx(expected).epsilon(tolerance));
  }
  SECTION("mse is mean squared difference") {
    const Matrix c = to_precision<T>(uniform(Shape{2, 3}, 104)).matrix();
    const double expected = static_cast<double>((a - c).array().square().sum()) / 6.0;
    CHECK(momnet::mse(va, tape.constant(c)).item() == Approx(expected).epsilon(tolerance));
  }
  SECTION("gelu is x Phi(x) with the exact erf") {
    const auto g = momnet::gelu(va).value();
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
      for (Eigen::Index j = 0; j < a.cols(); ++j) {
        const double x = static_cast<double>(a(i, j));
        const double expected = x * 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
        CHECK(static_cast<double>(g(i, j)) == Approx(expected).epsilon(tolerance).margin(tolerance));
      }
    }
  }
  SECTION("sigmoid, tanh, exp, log, relu, square, scale elementwise") {
    const Var<T> p = tape.constant(Matrix(a.array().abs() + T(0.1)));
    const auto sigmoid = momnet::sigmoid(va).value();
    const auto tanh = momnet::tanh(va).value();
    const auto exp = momnet::exp(va).value();
    const auto log = momnet::log(p).value();
    const auto relu = momnet::relu(va).value();
    const auto square = momnet::square(va).value();
    const auto neg = (-va).value();
    const auto scaled = momnet::scale(va, T(3)).value();
    for (Eigen::Index i = 0; i < a.rows(); ++i) {
      for (Eigen::Index j = 0; j < a.cols(); ++j) {
        const double x = static_cast<double>(a(i, j));
        const double px = std::abs(x) + static_cast<double>(T(0.1));
        CHECK(static_cast<double>(sigmoid(i, j)) == Approx(1.0 / (1.0 + std::exp(-x))).epsilon(tolerance));
        CHECK(static_cast<double>(tanh(i, j)) == Approx(std::tanh(x)).epsilon(tolerance));
        CHECK(static_cast<double>(exp(i, j)) == Approx(std::exp(x)).epsilon(tolerance));
        CHECK(static_cast<double>(log(i, j)) == Approx(std::log(px)).epsilon(tolerance).margin(tolerance));
        CHECK(static_cast<double>(relu(i, j)) == std::max(x, 0.0));
        CHECK(static_cast<double>(square(i, j)) == Approx(x * x).epsilon(tolerance));
        CHECK(static_cast<double>(neg(i, j)) == -x);
        CHECK(static_cast<double>(scaled(i, j)) == Approx(3.0 * x).epsilon(tolerance));
      }
    }
  }
  SECTION("softplus never overflows and matches log(1 + exp(x))") {
    Eigen::Matrix<T, 1, 6> x;
    x << T(-1000), T(-30), T(-1), T(2), T(30), T(1000);
    const Var<T> s = momnet::softplus(tape.constant(x));
    CHECK(s.value().array().isFinite().all());
    // Eigen clamps exp's argument (at about -88 in float), so this is ~1e-38, not 0.
    CHECK(static_cast<double>(s.value()(0, 0)) == Approx(0.0).margin(1e-30));
    CHECK(static_cast<double>(s.value()(0, 1)) == Approx(std::exp(-30.0)).epsilon(1e-6));
    CHECK(static_cast<double>(s.value()(0, 2)) == Approx(std::log1p(std::exp(-1.0))).epsilon(tolerance));
    CHECK(static_cast<double>(s.value()(0, 3)) == Approx(std::log1p(std::exp(2.0))).epsilon(tolerance));
    CHECK(static_cast<double>(s.value()(0, 4)) == Approx(30.0).epsilon(tolerance));
    CHECK(static_cast<double>(s.value()(0, 5)) == 1000.0);
  }
  SECTION("sum and mean") {
    CHECK(momnet::sum(va).item() == Approx(static_cast<double>(a.sum())).epsilon(tolerance));
    CHECK(momnet::mean(va).item() == Approx(static_cast<double>(a.sum()) / 6.0).epsilon(tolerance));
    CHECK(momnet::sum(va).shape() == Shape{});
  }
  SECTION("reshape shares storage, concat and slice copy columns") {
    const Var<T> r = momnet::reshape(va, Shape{3, 2});
    CHECK(r.shape() == Shape{3, 2});
    CHECK(r.data() == va.data());
    const Var<T> c = momnet::concat(std::vector<Var<T>>{va, momnet::scale(va, T(2)), va});
    REQUIRE(c.shape() == Shape{2, 9});
    CHECK(c.value().leftCols(3) == a);
    CHECK(c.value().middleCols(3, 3) == T(2) * a);
    CHECK(c.value().rightCols(3) == a);
    const Var<T> s = momnet::slice(c, 2, 4);
    REQUIRE(s.shape() == Shape{2, 4});
    CHECK(s.value() == c.value().middleCols(2, 4));
    CHECK(momnet::slice(va, 3, 0).shape() == Shape{2, 0});
  }
  SECTION("binary operations: values for each broadcast") {
    const Var<T> two = tape.constant(Shape{}, std::vector<T>{T(2)}.data());
    CHECK((va * two).value() == (a * T(2)));
    CHECK((two - va).value() == (Matrix::Constant(2, 3, T(2)) - a));
    CHECK((va / two).value().isApprox(a / T(2), T(tolerance)));
    CHECK((two / va).value().isApprox(Matrix((T(2) / a.array()).matrix()), T(tolerance)));
    CHECK((va * va).value().isApprox(Matrix(a.array().square().matrix()), T(tolerance)));
  }
}

TEST_CASE("relu's gradient at exactly 0 is taken as 0", "[ops][values]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(values(Shape{3}, {-1.0, 0.0, 1.0}));
  tape.backward(momnet::sum(momnet::relu(x)));
  CHECK(x.grad()(0, 0) == 0.0);
  CHECK(x.grad()(0, 1) == 0.0);
  CHECK(x.grad()(0, 2) == 1.0);
}

// ---- errors -------------------------------------------------------------------

TEST_CASE("operations name themselves and both shapes on a mismatch", "[ops][errors]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };

  SECTION("matmul") {
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{4, 5})), std::invalid_argument, "momnet::matmul",
                         "inner dimensions differ", "[2, 3]", "[4, 5]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{2, 3}), Transpose::no, Transpose::no),
                         std::invalid_argument, "momnet::matmul", "[2, 3] and [2, 3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{3, 2}), var(Shape{2, 3}), Transpose::yes, Transpose::no),
                         std::invalid_argument, "momnet::matmul", "[3, 2] and [2, 3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{2, 3}), Transpose::yes, Transpose::yes),
                         std::invalid_argument, "momnet::matmul", "[2, 3] and [2, 3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{}), var(Shape{3, 2})), std::invalid_argument, "momnet::matmul",
                         "rank 1 to 4", "[] and [3, 2]");
    REQUIRE_NOTHROW(momnet::matmul(var(Shape{2, 3}), var(Shape{2, 3}), Transpose::no, Transpose::yes));
  }
  SECTION("linear") {
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 3}), var(Shape{4, 5})), std::invalid_argument,
                         "momnet::linear", "in-features", "[2, 3] and [4, 5]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 3}), var(Shape{4, 3}), var(Shape{5})), std::invalid_argument,
                         "momnet::linear", "bias", "[4, 3] and [5]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 3}), var(Shape{4, 3}), var(Shape{2, 2})),
                         std::invalid_argument, "momnet::linear", "bias", "[4, 3] and [2, 2]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{}), var(Shape{4, 6})), std::invalid_argument, "momnet::linear",
                         "rank 1 or more", "[] and [4, 6]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 6}), var(Shape{6})), std::invalid_argument, "momnet::linear",
                         "weight must be rank 2", "got [6]");
  }
  SECTION("add, sub, mul, div: shapes that do not broadcast") {
    struct Case {
      Shape a, b;
    };
    const Case cases[] = {{Shape{2, 3}, Shape{3, 2}},   // same size, other shape
                          {Shape{2, 3}, Shape{2}},      // a column is not a row
                          {Shape{2, 3}, Shape{3, 1}},
                          {Shape{3}, Shape{4}},         // rows of different lengths
                          {Shape{2, 2, 3}, Shape{6}}};  // a row matches the last axis (3), not all columns
    for (int op = 0; op < 4; ++op) {
      for (const Case& c : cases) {
        const std::string name = std::string("momnet::") + binary_names[op];
        INFO(name << " " << c.a.to_string() << " " << c.b.to_string());
        REQUIRE_THROWS_EXACT(binary(op, var(c.a), var(c.b)), std::invalid_argument, name, "do not broadcast",
                             c.a.to_string() + " and " + c.b.to_string());
        REQUIRE_THROWS_EXACT(binary(op, var(c.b), var(c.a)), std::invalid_argument, name, "do not broadcast",
                             c.b.to_string() + " and " + c.a.to_string());
      }
    }
  }
  SECTION("mse") {
    REQUIRE_THROWS_EXACT(momnet::mse(var(Shape{2, 3}), var(Shape{3, 2})), std::invalid_argument, "momnet::mse",
                         "shapes differ", "[2, 3] and [3, 2]");
    CHECK(momnet::mse(var(Shape{0, 3}), var(Shape{0, 3})).item() == 0.0);  // an empty batch: 0 (loss.hpp)
  }
  SECTION("concat") {
    REQUIRE_THROWS_EXACT(momnet::concat(var(Shape{2, 3}), var(Shape{3, 3})), std::invalid_argument,
                         "momnet::concat", "other than axis -1 differ", "[2, 3] and [3, 3]");
    REQUIRE_THROWS_EXACT(momnet::concat(std::vector<Var<double>>{var(Shape{2, 1}), var(Shape{2, 2}), var(Shape{4})}),
                         std::invalid_argument, "momnet::concat", "ranks differ", "[2, 1] and [4]");
    REQUIRE_THROWS_EXACT(momnet::concat(std::vector<Var<double>>{}), std::invalid_argument, "momnet::concat",
                         "nothing to concatenate");
  }
  SECTION("slice out of range") {
    const Var<double> x = var(Shape{2, 5});
    REQUIRE_THROWS_EXACT(momnet::slice(x, 3, 3), std::invalid_argument, "momnet::slice", "[3, 6)", "[2, 5]",
                         "length 5");
    REQUIRE_THROWS_EXACT(momnet::slice(x, -1, 2), std::invalid_argument, "momnet::slice", "[-1, 1)");
    REQUIRE_THROWS_EXACT(momnet::slice(x, 1, -1), std::invalid_argument, "momnet::slice", "outside [2, 5]");
    REQUIRE_NOTHROW(momnet::slice(x, 0, 5));
  }
  SECTION("reshape size mismatch") {
    REQUIRE_THROWS_EXACT(momnet::reshape(var(Shape{2, 3}), Shape{4, 2}), std::invalid_argument, "momnet::reshape",
                         "sizes differ", "[2, 3] and [4, 2]");
  }
  SECTION("softmax, log_softmax need a column; mean needs an element") {
    REQUIRE_THROWS_EXACT(momnet::softmax(var(Shape{2, 0})), std::invalid_argument, "momnet::softmax",
                         "axis -1 is empty", "[2, 0]");
    REQUIRE_THROWS_EXACT(momnet::log_softmax(var(Shape{2, 0})), std::invalid_argument, "momnet::log_softmax",
                         "axis -1 is empty", "[2, 0]");
    REQUIRE_THROWS_EXACT(momnet::mean(var(Shape{0})), std::invalid_argument, "momnet::mean", "no elements", "[0]");
    CHECK(momnet::sum(var(Shape{0})).item() == 0.0);
  }
  SECTION("cross_entropy: rank, label count, label range, empty batch") {
    const Var<double> logits = var(Shape{2, 3});
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(var(Shape{6}), {0}), std::invalid_argument,
                         "momnet::cross_entropy", "rank 2", "[6]");
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {0, 1, 2}), std::invalid_argument,
                         "momnet::cross_entropy", "3 labels for a batch of 2", "[2, 3]");
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {0}), std::invalid_argument, "momnet::cross_entropy",
                         "1 labels for a batch of 2");
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {0, 3}), std::invalid_argument, "momnet::cross_entropy",
                         "label 3 at index 1", "outside [0, 3)");
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {-1, 0}), std::invalid_argument, "momnet::cross_entropy",
                         "label -1 at index 0");
    CHECK(momnet::cross_entropy(var(Shape{0, 3}), {}).item() == 0.0);  // an empty batch: 0 (loss.hpp)
  }
}

TEST_CASE("operations reject empty, foreign and released Vars", "[ops][errors]") {
  Tape<double> tape;
  Tape<double> other;
  const Var<double> x = tape.variable(Tensor<double>(Shape{2, 2}));
  const Var<double> y = other.variable(Tensor<double>(Shape{2, 2}));
  const Var<double> empty;

  REQUIRE_THROWS_EXACT(momnet::add(x, y), std::invalid_argument, "momnet::add", "different tapes");
  REQUIRE_THROWS_EXACT(momnet::matmul(y, x), std::invalid_argument, "momnet::matmul", "different tapes");
  REQUIRE_THROWS_EXACT(momnet::mse(x, y), std::invalid_argument, "momnet::mse", "different tapes");
  REQUIRE_THROWS_EXACT(momnet::concat(x, y), std::invalid_argument, "momnet::concat", "different tapes");
  REQUIRE_THROWS_EXACT(momnet::linear(x, x, y), std::invalid_argument, "momnet::linear", "different tapes");

  REQUIRE_THROWS_EXACT(momnet::tanh(empty), std::invalid_argument, "momnet::tanh", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::mul(x, empty), std::invalid_argument, "momnet::mul", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::sum(empty), std::invalid_argument, "momnet::sum", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::softmax(empty), std::invalid_argument, "momnet::softmax", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::cross_entropy(empty, {0}), std::invalid_argument, "momnet::cross_entropy",
                       "empty Var");

  const auto mark = tape.mark();
  const Var<double> released = momnet::exp(x);
  tape.rewind(mark);
  REQUIRE_THROWS_EXACT(momnet::exp(released), std::logic_error, "released by Tape::rewind");
  REQUIRE_THROWS_EXACT(momnet::add(x, released), std::logic_error, "released by Tape::rewind");
  REQUIRE_THROWS_EXACT(momnet::slice(released, 0, 1), std::logic_error, "released by Tape::rewind");
}
