// Element-wise operations: NumPy broadcasting (kernels/broadcast.hpp,
// kernels/elementwise.hpp, ops/elementwise.hpp), the unary functions of
// ops/unary.hpp, and the example operation of docs/writing-an-operation.md,
// compiled here exactly as the guide shows it.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

// ---- the guide's example operation (docs/writing-an-operation.md) --------------
// Kept word for word in step with the guide: if this stops compiling, so does
// the guide's code.

#include <momnet/momnet.hpp>  // or the parts: momnet/tape.hpp, momnet/ops/checks.hpp
#include <cmath>
#include <stdexcept>
#include <string>

namespace mylib {
namespace kernels {

// y = x * sigmoid(beta * x); also keeps s = sigmoid(beta * x) for the reverse rule.
template <class T>
void swish_forward(const T* x, T* y, T* s, Eigen::Index n, T beta) {
  using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
  const Eigen::Map<const Array, Eigen::Aligned64> X(x, n);  // whole tape buffers: 64-byte aligned
  Eigen::Map<Array, Eigen::Aligned64>(s, n) = (beta * X).logistic();
  Eigen::Map<Array, Eigen::Aligned64>(y, n) = X * Eigen::Map<const Array, Eigen::Aligned64>(s, n);
}

// gx += g * dy/dx, with dy/dx = s + beta * x * s * (1 - s).
template <class T>
void swish_backward(const T* g, const T* x, const T* s, T* gx, Eigen::Index n, T beta) {
  using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
  using Map = Eigen::Map<const Array, Eigen::Aligned64>;
  const Map G(g, n), X(x, n), S(s, n);
  Eigen::Map<Array, Eigen::Aligned64>(gx, n) += G * (S + beta * X * S * (T(1) - S));
}

}  // namespace kernels

// x * sigmoid(beta * x), element by element (SiLU when beta = 1).
template <class T>
momnet::Var<T> swish(const momnet::Var<T>& x, T beta = T(1)) {
  const char* operation = "mylib::swish";
  if (!std::isfinite(beta)) {
    throw std::invalid_argument(std::string(operation) + ": beta must be finite, got " + std::to_string(beta));
  }
  momnet::Tape<T>& tape = momnet::detail::common_tape(operation, x);  // empty, released, foreign Vars
  const momnet::Shape shape = x.shape();
  const Eigen::Index n = shape.size();
  const T* px = x.data();
  T* y = tape.allocate(n);  // the output
  T* s = tape.allocate(n);  // a saved value, released with the node
  kernels::swish_forward(px, y, s, n, beta);
  return tape.record_op({x}, shape, y, [=](momnet::Gradients<T>& g) {
    if (T* gx = g.input(0)) kernels::swish_backward(g.output(0), px, s, gx, n, beta);
  });
}

// Two outputs from one operation: sin(x) and cos(x).
template <class T>
std::array<momnet::Var<T>, 2> sincos(const momnet::Var<T>& x) {
  momnet::Tape<T>& tape = momnet::detail::common_tape("mylib::sincos", x);
  const momnet::Shape shape = x.shape();
  const Eigen::Index n = shape.size();
  const T* px = x.data();
  T* sin = tape.allocate(n);
  T* cos = tape.allocate(n);
  momnet::array_view(sin, n) = momnet::array_view(px, n).sin();
  momnet::array_view(cos, n) = momnet::array_view(px, n).cos();
  using Output = typename momnet::Tape<T>::Output;
  return tape.template record_op<2>({x}, std::array<Output, 2>{Output{shape, sin}, Output{shape, cos}},
                                    [=](momnet::Gradients<T>& g) {
                                      T* gx = g.input(0);
                                      if (gx == nullptr) return;
                                      // d sin = cos, d cos = -sin; an unused output's gradient reads as zeros.
                                      momnet::array_view(gx, n) +=
                                          momnet::array_view(g.output(0), n) * momnet::array_view(cos, n) -
                                          momnet::array_view(g.output(1), n) * momnet::array_view(sin, n);
                                    });
}

}  // namespace mylib

TEST_CASE("mylib::swish: the guide's example operation passes the gradient check", "[elementwise][guide]") {
  momnet::Tensor<double> x(momnet::Shape{3, 4});
  momnet::Rng rng(7);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.uniform(-3.0, 3.0);

  const momnet::GradientCheckResult result = momnet::check_gradients(
      [](momnet::Tape<double>&, const std::vector<momnet::Var<double>>& v) { return mylib::swish(v[0], 1.5); },
      {x});
  INFO(result.worst << " (error " << result.max_error << ")");
  CHECK(result.passed);

  // The same, for an input that is used twice, through the multi-output op.
  const momnet::GradientCheckResult both = momnet::check_gradients(
      [](momnet::Tape<double>&, const std::vector<momnet::Var<double>>& v) {
        const auto sc = mylib::sincos(v[0]);
        return sc[0] * sc[1] + mylib::swish(v[0]);
      },
      {x});
  INFO(both.worst << " (error " << both.max_error << ")");
  CHECK(both.passed);

  // Only one of the two outputs used.
  const momnet::GradientCheckResult one = momnet::check_gradients(
      [](momnet::Tape<double>&, const std::vector<momnet::Var<double>>& v) { return mylib::sincos(v[0])[1]; },
      {x});
  CHECK(one.passed);

  momnet::Tape<double> tape;
  REQUIRE_THROWS_EXACT(mylib::swish(tape.variable(x), std::numeric_limits<double>::infinity()), std::invalid_argument, "mylib::swish",
                       "beta must be finite");
  REQUIRE_THROWS_EXACT(mylib::swish(momnet::Var<double>()), std::invalid_argument, "mylib::swish", "empty Var");
}

// ---- helpers ---------------------------------------------------------------------

namespace {

using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using momnet_test::uniform;

template <class Vars>
using scalar_of = typename std::decay_t<Vars>::value_type::Scalar;

// Values of magnitude in [low, high) with random signs.
Tensor<double> away_from_zero(const Shape& shape, std::uint64_t seed, double low = 0.5, double high = 2.0) {
  Tensor<double> t = uniform(shape, seed, low, high);
  momnet::Rng signs(seed + 1000);
  for (Eigen::Index i = 0; i < t.size(); ++i) {
    if (signs.uniform() < 0.5) t.data()[i] = -t.data()[i];
  }
  return t;
}

template <class T>
Tensor<T> to_precision(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Eigen::Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

// The element of `t` (broadcast to `out`) at the output's flat index `i`,
// computed directly from the multi-index.
template <class T>
T at_broadcast(const Tensor<T>& t, const Shape& out, Eigen::Index i) {
  std::array<Eigen::Index, 4> index{};
  for (int k = out.rank() - 1; k >= 0; --k) {
    index[static_cast<std::size_t>(k)] = i % out.dim(k);
    i /= out.dim(k);
  }
  const Shape& s = t.shape();
  Eigen::Index flat = 0;
  for (int k = 0; k < s.rank(); ++k) {
    const int ko = k + (out.rank() - s.rank());
    const Eigen::Index d = s.dim(k);
    flat = flat * d + (d == 1 ? 0 : index[static_cast<std::size_t>(ko)]);
  }
  return t.data()[flat];
}

std::size_t elements(const std::vector<Tensor<double>>& inputs) {
  std::size_t n = 0;
  for (const auto& t : inputs) n += static_cast<std::size_t>(t.size());
  return n;
}

template <class F>
void check_op(const std::string& name, F f, const std::vector<Tensor<double>>& inputs) {
  INFO("operation: " << name);
  const momnet::GradientCheckResult result = momnet::check_gradients(f, inputs);
  INFO("worst: " << result.worst << " (error " << result.max_error << ")");
  CHECK(result.checked == elements(inputs));
  CHECK(result.passed);
}

template <class T>
Var<T> binary(int op, const Var<T>& a, const Var<T>& b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return momnet::maximum(a, b);
    default: return momnet::minimum(a, b);
  }
}
double binary_reference(int op, double a, double b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return std::max(a, b);
    default: return std::min(a, b);
  }
}
const char* const binary_names[] = {"add", "sub", "mul", "div", "maximum", "minimum"};

struct Pattern {
  const char* name;
  Shape a, b, out;
};
// Every broadcast pattern, ranks 0 to 4.
const Pattern patterns[] = {
    {"same shape, rank 2", Shape{2, 3}, Shape{2, 3}, Shape{2, 3}},
    {"same shape, rank 3", Shape{2, 3, 2}, Shape{2, 3, 2}, Shape{2, 3, 2}},
    {"same shape, rank 4", Shape{2, 1, 3, 2}, Shape{2, 1, 3, 2}, Shape{2, 1, 3, 2}},
    {"trailing row [D] over [B, D]", Shape{3, 4}, Shape{4}, Shape{3, 4}},
    {"trailing row [1, D] over [B, D]", Shape{3, 4}, Shape{1, 4}, Shape{3, 4}},
    {"trailing row [D] over [B, T, D], on the left", Shape{4}, Shape{2, 3, 4}, Shape{2, 3, 4}},
    {"trailing [H, W] over [N, C, H, W]", Shape{2, 2, 2, 3}, Shape{2, 3}, Shape{2, 2, 2, 3}},
    {"middle singleton [1, C, 1, 1] over [N, C, H, W]", Shape{2, 3, 2, 2}, Shape{1, 3, 1, 1}, Shape{2, 3, 2, 2}},
    {"[C, 1, 1] over [N, C, H, W], on the left", Shape{3, 1, 1}, Shape{2, 3, 2, 2}, Shape{2, 3, 2, 2}},
    {"column [B, 1] over [B, D]", Shape{3, 4}, Shape{3, 1}, Shape{3, 4}},
    {"both sides [B, 1, T] x [B, S, 1]", Shape{2, 1, 3}, Shape{2, 4, 1}, Shape{2, 4, 3}},
    {"both sides rank 4 [2, 1, 3, 1] x [1, 2, 1, 2]", Shape{2, 1, 3, 1}, Shape{1, 2, 1, 2}, Shape{2, 2, 3, 2}},
    {"both sides [3, 1] x [4]", Shape{3, 1}, Shape{4}, Shape{3, 4}},
    {"scalar [] on the right", Shape{2, 3, 2}, Shape{}, Shape{2, 3, 2}},
    {"scalar [] on the left", Shape{}, Shape{3, 2}, Shape{3, 2}},
    {"single element [1, 1, 1] over [2] (rank grows)", Shape{1, 1, 1}, Shape{2}, Shape{1, 1, 2}},
    {"rank 0 with rank 0", Shape{}, Shape{}, Shape{}},
    {"[1] with [] ", Shape{1}, Shape{}, Shape{1}},
};

}  // namespace

// ---- the kernels -------------------------------------------------------------------

TEST_CASE("broadcast_shapes follows NumPy's rules for ranks 0 to 4", "[elementwise][kernels]") {
  using momnet::kernels::broadcast_shapes;
  for (const Pattern& p : patterns) {
    INFO(p.name);
    const auto r = broadcast_shapes(p.a, p.b);
    REQUIRE(r.ok);
    CHECK(r.shape == p.out);
    CHECK(broadcast_shapes(p.b, p.a).shape == p.out);
  }
  CHECK(broadcast_shapes(Shape{0, 3}, Shape{3}).shape == Shape{0, 3});
  CHECK(broadcast_shapes(Shape{0}, Shape{1}).shape == Shape{0});
  CHECK(broadcast_shapes(Shape{2, 0, 1}, Shape{5}).shape == Shape{2, 0, 5});

  const auto bad = broadcast_shapes(Shape{12}, Shape{2, 3, 2, 2});
  CHECK_FALSE(bad.ok);
  CHECK(bad.axis == -1);
  CHECK(bad.dim_a == 12);
  CHECK(bad.dim_b == 2);
  const auto middle = broadcast_shapes(Shape{2, 3, 4}, Shape{2, 4});
  CHECK_FALSE(middle.ok);
  CHECK(middle.axis == -2);
  CHECK_FALSE(broadcast_shapes(Shape{0}, Shape{3}).ok);
}

TEST_CASE("BroadcastWalk merges what it can and walks the output in order", "[elementwise][kernels]") {
  using momnet::kernels::BroadcastRun;
  using momnet::kernels::BroadcastWalk;
  SECTION("a bias over [B, T, D] is B*T runs of D") {
    const BroadcastWalk<2> walk(Shape{2, 3, 4}, {Shape{2, 3, 4}, Shape{4}});
    REQUIRE(walk.rank() == 2);
    CHECK(walk.dim(0) == 6);
    CHECK(walk.dim(1) == 4);
    CHECK(walk.stride(0, 1) == 1);
    CHECK(walk.stride(1, 1) == 1);
    CHECK(walk.stride(1, 0) == 0);
  }
  SECTION("[1, C, 1, 1] over [N, C, H, W] is N x C x (H W)") {
    const BroadcastWalk<2> walk(Shape{2, 3, 4, 5}, {Shape{2, 3, 4, 5}, Shape{1, 3, 1, 1}});
    REQUIRE(walk.rank() == 3);
    CHECK(walk.dim(0) == 2);
    CHECK(walk.dim(1) == 3);
    CHECK(walk.dim(2) == 20);
    CHECK(walk.stride(1, 1) == 1);
    CHECK(walk.stride(1, 2) == 0);
  }
  SECTION("equal shapes are one run; a single element is one run of 1") {
    const BroadcastWalk<2> walk(Shape{2, 3, 4}, {Shape{2, 3, 4}, Shape{2, 3, 4}});
    CHECK(walk.rank() == 1);
    CHECK(walk.dim(0) == 24);
    const BroadcastWalk<1> one(Shape{1, 1}, {Shape{}});
    CHECK(one.rank() == 1);
    CHECK(one.dim(0) == 1);
  }
  SECTION("runs cover the output once, in order, at the right operand offsets") {
    for (const Pattern& p : patterns) {
      INFO(p.name);
      const Tensor<double> a = uniform(p.a, 1);
      const Tensor<double> b = uniform(p.b, 2);
      Eigen::Index next = 0;
      bool offsets_right = true;
      BroadcastWalk<2>(p.out, {p.a, p.b}).for_each_run([&](const BroadcastRun<2>& r) {
        offsets_right = offsets_right && r.out_offset == next;
        for (Eigen::Index i = 0; i < r.length; ++i) {
          offsets_right = offsets_right &&
                          a.data()[r.offset[0] + i * r.stride[0]] == at_broadcast(a, p.out, r.out_offset + i) &&
                          b.data()[r.offset[1] + i * r.stride[1]] == at_broadcast(b, p.out, r.out_offset + i);
        }
        next += r.length;
      });
      CHECK(offsets_right);
      CHECK(next == p.out.size());
    }
  }
  SECTION("an empty output has no runs") {
    int runs = 0;
    BroadcastWalk<2>(Shape{0, 3}, {Shape{0, 3}, Shape{3}}).for_each_run([&](const BroadcastRun<2>&) { ++runs; });
    CHECK(runs == 0);
  }
}

TEST_CASE("sum_to_shape adds over the broadcast axes", "[elementwise][kernels]") {
  const Shape out{2, 3, 2, 2};
  const Tensor<double> full = uniform(out, 3);
  for (const Shape& target : {Shape{1, 3, 1, 1}, Shape{3, 1, 1}, Shape{2}, Shape{}, Shape{2, 1, 2, 1}, out}) {
    INFO(target.to_string());
    Tensor<double> reduced = uniform(target, 4);  // added into, not overwritten
    const Tensor<double> before = reduced;
    momnet::kernels::sum_to_shape(full.data(), out, reduced.data(), target);
    Tensor<double> expected = before;
    // Each output element lands on the target element it was broadcast from.
    Tensor<double> index(target);
    for (Eigen::Index t = 0; t < target.size(); ++t) index.data()[t] = static_cast<double>(t);
    for (Eigen::Index i = 0; i < out.size(); ++i) {
      expected.data()[static_cast<Eigen::Index>(at_broadcast(index, out, i))] += full.data()[i];
    }
    for (Eigen::Index t = 0; t < target.size(); ++t) CHECK(reduced.data()[t] == Approx(expected.data()[t]).epsilon(1e-14));
  }
}

// ---- gradients (double, against finite differences) ----------------------------------

TEST_CASE("add, sub, mul, div, maximum, minimum gradients for every broadcast pattern", "[elementwise][gradients]") {
  for (int op = 0; op < 6; ++op) {
    for (const Pattern& p : patterns) {
      // Divisors away from 0; maximum and minimum away from ties (the two
      // operands come from different ranges with random signs).
      check_op(std::string(binary_names[op]) + ", " + p.name,
               [op](auto&, const auto& v) { return binary(op, v[0], v[1]); },
               {away_from_zero(p.a, 10 + static_cast<std::uint64_t>(op), 0.1, 0.45),
                away_from_zero(p.b, 20, 0.5, 2.0)});
    }
  }
  // The same Var on both sides.
  check_op("x * x", [](auto&, const auto& v) { return v[0] * v[0]; }, {uniform(Shape{2, 3, 2}, 30)});
  check_op("x / x + x - x", [](auto&, const auto& v) { return v[0] / v[0] + v[0] - v[0]; },
           {away_from_zero(Shape{2, 3}, 31)});
  check_op("maximum(x, x)", [](auto&, const auto& v) { return momnet::maximum(v[0], v[0]); },
           {uniform(Shape{2, 3}, 32)});
}

TEST_CASE("maximum and minimum split the gradient in half on ties", "[elementwise][gradients]") {
  Tape<double> tape;
  Tensor<double> ta(Shape{4}), tb(Shape{4});
  const double av[] = {1.0, 2.0, 3.0, -1.0}, bv[] = {1.0, 5.0, 0.0, -1.0};
  std::copy(av, av + 4, ta.data());
  std::copy(bv, bv + 4, tb.data());
  const Var<double> a = tape.variable(ta), b = tape.variable(tb);
  tape.backward(momnet::sum(momnet::maximum(a, b)));
  const double max_a[] = {0.5, 0.0, 1.0, 0.5}, max_b[] = {0.5, 1.0, 0.0, 0.5};
  for (int i = 0; i < 4; ++i) {
    CHECK(a.grad()(0, i) == max_a[i]);
    CHECK(b.grad()(0, i) == max_b[i]);
  }
  tape.backward(momnet::sum(momnet::minimum(a, b)));
  for (int i = 0; i < 4; ++i) {
    CHECK(a.grad()(0, i) == max_b[i]);
    CHECK(b.grad()(0, i) == max_a[i]);
  }
  // A broadcast scalar tied with two elements collects both halves.
  Tensor<double> ts(Shape{});
  ts.data()[0] = 1.0;
  const Var<double> s = tape.variable(ts);
  tape.backward(momnet::sum(momnet::maximum(a, s)));
  CHECK(s.grad()(0, 0) == 0.5 + 0.0 + 0.0 + 1.0);
  CHECK(a.grad()(0, 0) == 0.5);
}

TEST_CASE("where gradients: condition, a and b broadcast together", "[elementwise][gradients]") {
  struct Case {
    const char* name;
    Shape condition, a, b;
  };
  const Case cases[] = {
      {"same shapes", Shape{2, 3}, Shape{2, 3}, Shape{2, 3}},
      {"row condition, full a, scalar b", Shape{3}, Shape{2, 3}, Shape{}},
      {"[N, C, H, W] condition, [1, C, 1, 1] a, [W] b", Shape{2, 3, 2, 2}, Shape{1, 3, 1, 1}, Shape{2}},
      {"[B, S, 1] condition, [B, 1, T] a, [S, T] b", Shape{2, 3, 1}, Shape{2, 1, 4}, Shape{3, 4}},
      {"rank-0 condition", Shape{}, Shape{2, 2}, Shape{2, 1}},
  };
  for (const Case& c : cases) {
    const Tensor<double> condition = uniform(c.condition, 40);  // about half negative
    check_op(
        std::string("where, ") + c.name,
        [&condition](auto& tape, const auto& v) {
          using T = scalar_of<decltype(v)>;
          const Var<T> mask = momnet::greater(tape.constant(to_precision<T>(condition)), T(0));
          return momnet::where(mask, v[0], v[1]);
        },
        {uniform(c.a, 41), uniform(c.b, 42)});
  }
  // The condition as a Var that requires a gradient receives none.
  Tape<double> tape;
  const Var<double> cond = tape.variable(uniform(Shape{3}, 43));
  const Var<double> x = tape.variable(uniform(Shape{2, 3}, 44));
  tape.backward(momnet::sum(momnet::where(cond, x, x * 2.0)));
  CHECK(cond.grad().isZero());
}

TEST_CASE("unary gradients: sqrt, rsqrt, pow, abs, clamp and the scalar forms", "[elementwise][gradients]") {
  for (const Shape& shape : {Shape{3, 4}, Shape{2, 3, 2}, Shape{2, 1, 2, 3}}) {
    INFO(shape.to_string());
    const Tensor<double> positive = uniform(shape, 50, 0.3, 3.0);
    const Tensor<double> signed_values = away_from_zero(shape, 51, 0.1, 2.0);
    check_op("sqrt", [](auto&, const auto& v) { return momnet::sqrt(v[0]); }, {positive});
    check_op("rsqrt", [](auto&, const auto& v) { return momnet::rsqrt(v[0]); }, {positive});
    check_op("pow 2.5", [](auto&, const auto& v) { return momnet::pow(v[0], 2.5); }, {positive});
    check_op("pow -1.5", [](auto&, const auto& v) { return momnet::pow(v[0], -1.5); }, {positive});
    check_op("pow 3 of signed values", [](auto&, const auto& v) { return momnet::pow(v[0], 3.0); }, {signed_values});
    check_op("pow 0", [](auto&, const auto& v) { return momnet::pow(v[0], 0.0) + v[0]; }, {signed_values});
    check_op("abs", [](auto&, const auto& v) { return momnet::abs(v[0]); }, {signed_values});
    // Values away from the bounds +-0.7 by more than a finite-difference step.
    check_op("clamp", [](auto&, const auto& v) { return momnet::clamp(v[0], -0.7, 0.7); }, {signed_values});
    check_op("x + 1.5, 1.5 + x", [](auto&, const auto& v) { return (v[0] + 1.5) * (1.5 + v[0]); }, {signed_values});
    check_op("x - 2, 2 - x", [](auto&, const auto& v) { return (v[0] - 2.0) * (2.0 - v[0]); }, {signed_values});
    check_op("x * 3, 3 * x", [](auto&, const auto& v) { return (v[0] * 3.0) * (3.0 * v[0]); }, {signed_values});
    check_op("x / 4, 4 / x", [](auto&, const auto& v) { return (v[0] / 4.0) + (4.0 / v[0]); }, {signed_values});
    check_op("add, sub, mul, div with constants",
             [](auto&, const auto& v) {
               return momnet::add(momnet::sub(1.0, momnet::mul(2.0, v[0])), momnet::div(momnet::sub(v[0], 0.5), 3.0)) *
                      momnet::div(1.0, momnet::add(0.25, momnet::mul(v[0], v[0])));
             },
             {signed_values});
  }
}

TEST_CASE("abs and clamp gradients at their kinks follow PyTorch", "[elementwise][gradients]") {
  Tape<double> tape;
  Tensor<double> t(Shape{5});
  const double v[] = {-1.0, -0.5, 0.0, 0.5, 1.0};
  std::copy(v, v + 5, t.data());
  const Var<double> x = tape.variable(t);
  tape.backward(momnet::sum(momnet::abs(x)));
  const double abs_grad[] = {-1.0, -1.0, 0.0, 1.0, 1.0};
  for (int i = 0; i < 5; ++i) CHECK(x.grad()(0, i) == abs_grad[i]);
  tape.backward(momnet::sum(momnet::clamp(x, -0.5, 0.5)));
  const double clamp_grad[] = {0.0, 1.0, 1.0, 1.0, 0.0};  // bounds included
  for (int i = 0; i < 5; ++i) CHECK(x.grad()(0, i) == clamp_grad[i]);
  tape.backward(momnet::sum(momnet::pow(x, 0.0)));
  CHECK(x.grad().isZero());
}

// ---- forward values (float and double, against direct loops) --------------------------

TEMPLATE_TEST_CASE("element-wise values match direct loops for every broadcast pattern", "[elementwise][values]",
                   float, double) {
  using T = TestType;
  Tape<T> tape;
  for (const Pattern& p : patterns) {
    INFO(p.name);
    const Tensor<T> a = to_precision<T>(away_from_zero(p.a, 60, 0.1, 2.0));
    const Tensor<T> b = to_precision<T>(away_from_zero(p.b, 61, 0.1, 2.0));
    const Var<T> va = tape.constant(a), vb = tape.constant(b);
    for (int op = 0; op < 6; ++op) {
      INFO(binary_names[op]);
      const Var<T> y = binary(op, va, vb);
      REQUIRE(y.shape() == p.out);
      bool exact = true;
      for (Eigen::Index i = 0; i < p.out.size(); ++i) {
        // One IEEE operation in T: exactly the direct result.
        const T expected = static_cast<T>(binary_reference(op, at_broadcast(a, p.out, i), at_broadcast(b, p.out, i)));
        const T direct = op == 0   ? at_broadcast(a, p.out, i) + at_broadcast(b, p.out, i)
                         : op == 1 ? at_broadcast(a, p.out, i) - at_broadcast(b, p.out, i)
                         : op == 2 ? at_broadcast(a, p.out, i) * at_broadcast(b, p.out, i)
                         : op == 3 ? at_broadcast(a, p.out, i) / at_broadcast(b, p.out, i)
                                   : expected;
        exact = exact && y.data()[i] == direct;
      }
      CHECK(exact);
    }
    const Var<T> mask = momnet::greater(va, vb);
    const Var<T> w = momnet::where(mask, va, vb);
    const Var<T> ge = momnet::greater_equal(va, vb), lt = momnet::less(va, vb), le = momnet::less_equal(va, vb);
    const Var<T> eq = momnet::equal(va, va * vb / vb), ne = momnet::not_equal(va, vb);
    bool right = true;
    for (Eigen::Index i = 0; i < p.out.size(); ++i) {
      const T x = at_broadcast(a, p.out, i), z = at_broadcast(b, p.out, i);
      right = right && mask.data()[i] == T(x > z ? 1 : 0) && w.data()[i] == (x > z ? x : z) &&
              ge.data()[i] == T(x >= z ? 1 : 0) && lt.data()[i] == T(x < z ? 1 : 0) &&
              le.data()[i] == T(x <= z ? 1 : 0) && ne.data()[i] == T(x != z ? 1 : 0);
    }
    CHECK(right);
    CHECK(eq.shape() == p.out);
    CHECK_FALSE(mask.requires_grad());
  }
}

TEMPLATE_TEST_CASE("unary and scalar-form values match direct loops", "[elementwise][values]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  Tape<T> tape;
  const Tensor<T> t = to_precision<T>(away_from_zero(Shape{2, 3, 5}, 70, 0.05, 3.0));
  const Var<T> x = tape.constant(t);
  const Var<T> ax = momnet::abs(x);
  const auto values = [](const Var<T>& v) { return v.data(); };
  const T* sqrt = values(momnet::sqrt(ax));
  const T* rsqrt = values(momnet::rsqrt(ax));
  const T* pow = values(momnet::pow(ax, T(1.7)));
  const T* cube = values(momnet::pow(x, T(3)));
  const T* abs = values(ax);
  const T* clamp = values(momnet::clamp(x, T(-1), T(0.5)));
  const T* plus = values(x + T(1.5));
  const T* rplus = values(T(1.5) + x);
  const T* minus = values(x - T(2));
  const T* rminus = values(T(2) - x);
  const T* times = values(x * 3);  // an int converts to the Var's scalar type
  const T* over = values(x / T(4));
  const T* rover = values(T(4) / x);
  const T* gt = values(momnet::greater(x, T(0.5)));
  for (Eigen::Index i = 0; i < t.size(); ++i) {
    const T v = t.data()[i];
    const double d = static_cast<double>(v);
    CHECK(sqrt[i] == std::sqrt(std::abs(v)));  // IEEE square root: exact
    CHECK(static_cast<double>(rsqrt[i]) == Approx(1.0 / std::sqrt(std::abs(d))).epsilon(tolerance));
    CHECK(pow[i] == std::pow(std::abs(v), T(1.7)));
    CHECK(cube[i] == std::pow(v, T(3)));
    CHECK(abs[i] == std::abs(v));
    CHECK(clamp[i] == std::min(std::max(v, T(-1)), T(0.5)));
    CHECK(plus[i] == v + T(1.5));
    CHECK(rplus[i] == T(1.5) + v);
    CHECK(minus[i] == v - T(2));
    CHECK(rminus[i] == T(2) - v);
    CHECK(times[i] == v * T(3));
    CHECK(over[i] == v / T(4));
    CHECK(rover[i] == T(4) / v);
    CHECK(gt[i] == T(v > T(0.5) ? 1 : 0));
  }
}

TEST_CASE("maximum, minimum and clamp propagate NaN", "[elementwise][values]") {
  Tape<double> tape;
  Tensor<double> ta(Shape{3}), tb(Shape{3});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double av[] = {nan, 1.0, nan}, bv[] = {1.0, nan, nan};
  std::copy(av, av + 3, ta.data());
  std::copy(bv, bv + 3, tb.data());
  const Var<double> a = tape.constant(ta), b = tape.constant(tb);
  for (int i = 0; i < 3; ++i) {
    CHECK(std::isnan(momnet::maximum(a, b).data()[i]));
    CHECK(std::isnan(momnet::minimum(a, b).data()[i]));
  }
  CHECK(std::isnan(momnet::clamp(a, 0.0, 1.0).data()[0]));
  CHECK(momnet::clamp(a, 0.0, 1.0).data()[1] == 1.0);
}

// ---- determinism ---------------------------------------------------------------------

TEST_CASE("values and gradients are bit-for-bit identical when recomputed", "[elementwise][determinism]") {
  // Lengths that are not multiples of any vector width, so runs start at
  // every alignment; two separate tapes, as the exact backward recomputes.
  const Shape big{3, 7, 5, 13};
  const std::vector<Tensor<double>> inputs{uniform(big, 80), uniform(Shape{7, 1, 13}, 81),
                                           uniform(Shape{13}, 82, 0.5, 2.0), uniform(Shape{1, 7, 1, 1}, 83)};
  const auto run = [&inputs](auto zero) {
    using T = decltype(zero);
    Tape<T> tape;
    std::vector<Var<T>> v;
    for (const auto& t : inputs) v.push_back(tape.variable(to_precision<T>(t)));
    const Var<T> y = momnet::maximum(v[0] * v[1] + v[2], v[3]) / v[2] - momnet::sqrt(momnet::abs(v[0]) + T(1)) +
                     momnet::where(momnet::greater(v[0], T(0)), v[1], v[3]) + momnet::rsqrt(v[2]) * v[0];
    tape.backward(momnet::sum(momnet::tanh(y)));
    std::vector<T> bits(y.data(), y.data() + y.size());
    for (const Var<T>& x : v) bits.insert(bits.end(), x.grad().data(), x.grad().data() + x.size());
    return bits;
  };
  const std::vector<float> f1 = run(0.0f), f2 = run(0.0f);
  const std::vector<double> d1 = run(0.0), d2 = run(0.0);
  REQUIRE(f1.size() == f2.size());
  CHECK(std::memcmp(f1.data(), f2.data(), f1.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(d1.data(), d2.data(), d1.size() * sizeof(double)) == 0);
}

// ---- errors ----------------------------------------------------------------------------

TEST_CASE("shapes that do not broadcast throw naming the operation and both shapes", "[elementwise][errors]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };
  struct Case {
    Shape a, b;
    const char* axis;
  };
  const Case cases[] = {{Shape{12}, Shape{2, 3, 2, 2}, "axis -1 from the end: 12 against 2"},
                        {Shape{2, 3}, Shape{3, 2}, "axis -1 from the end: 3 against 2"},
                        {Shape{2, 3, 4}, Shape{2, 4}, "axis -2 from the end: 3 against 2"},
                        {Shape{2, 2, 3}, Shape{6}, "axis -1 from the end: 3 against 6"},
                        {Shape{0, 3}, Shape{2, 3}, "axis -2 from the end: 0 against 2"}};
  for (int op = 0; op < 6; ++op) {
    for (const Case& c : cases) {
      const std::string name = std::string("momnet::") + binary_names[op];
      INFO(name << " " << c.a.to_string() << " " << c.b.to_string());
      REQUIRE_THROWS_EXACT(binary(op, var(c.a), var(c.b)), std::invalid_argument, name + ": shapes do not broadcast",
                           c.axis, c.a.to_string() + " and " + c.b.to_string());
    }
  }
  for (const char* name : {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"}) {
    const std::string op = name;
    const Var<double> a = var(Shape{12}), b = var(Shape{2, 3, 2, 2});
    const auto compare = [&]() {
      if (op == "greater") return momnet::greater(a, b);
      if (op == "greater_equal") return momnet::greater_equal(a, b);
      if (op == "less") return momnet::less(a, b);
      if (op == "less_equal") return momnet::less_equal(a, b);
      if (op == "equal") return momnet::equal(a, b);
      return momnet::not_equal(a, b);
    };
    REQUIRE_THROWS_EXACT(compare(), std::invalid_argument, "momnet::" + op + ": shapes do not broadcast",
                         "[12] and [2, 3, 2, 2]");
  }
  REQUIRE_THROWS_EXACT(momnet::where(var(Shape{2, 3}), var(Shape{3}), var(Shape{4})), std::invalid_argument,
                       "momnet::where: shapes do not broadcast", "3 against 4",
                       "condition [2, 3], a [3] and b [4]");
  REQUIRE_THROWS_EXACT(momnet::where(var(Shape{2}), var(Shape{3}), var(Shape{3})), std::invalid_argument,
                       "momnet::where", "2 against 3", "condition [2], a [3] and b [3]");
  REQUIRE_THROWS_EXACT(momnet::clamp(var(Shape{2}), 1.0, -1.0), std::invalid_argument, "momnet::clamp",
                       "lo <= hi", "lo = 1.0", "hi = -1.0");
  REQUIRE_THROWS_EXACT(momnet::clamp(var(Shape{2}), std::nan(""), 1.0), std::invalid_argument, "momnet::clamp");

  Tape<double> other;
  const Var<double> foreign = other.variable(Tensor<double>(Shape{2}));
  const Var<double> empty;
  REQUIRE_THROWS_EXACT(momnet::maximum(var(Shape{2}), foreign), std::invalid_argument, "momnet::maximum",
                       "different tapes");
  REQUIRE_THROWS_EXACT(momnet::where(var(Shape{2}), var(Shape{2}), foreign), std::invalid_argument, "momnet::where",
                       "different tapes");
  REQUIRE_THROWS_EXACT(momnet::where(empty, var(Shape{2}), var(Shape{2})), std::invalid_argument, "momnet::where",
                       "empty Var");
  REQUIRE_THROWS_EXACT(momnet::sqrt(empty), std::invalid_argument, "momnet::sqrt", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::add(empty, 1.0), std::invalid_argument, "momnet::add", "empty Var");
  REQUIRE_THROWS_EXACT(momnet::greater(empty, 1.0), std::invalid_argument, "momnet::greater", "empty Var");
}

// ---- empty values ------------------------------------------------------------------------

TEST_CASE("every element-wise operation accepts empty values", "[elementwise][empty]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };
  struct Case {
    Shape a, b, out;
  };
  const Case cases[] = {{Shape{0, 3}, Shape{0, 3}, Shape{0, 3}},
                        {Shape{0, 3}, Shape{3}, Shape{0, 3}},
                        {Shape{2, 0, 4}, Shape{1, 1, 4}, Shape{2, 0, 4}},
                        {Shape{0}, Shape{1}, Shape{0}},
                        {Shape{0}, Shape{}, Shape{0}},
                        {Shape{2, 1}, Shape{0}, Shape{2, 0}}};
  for (const Case& c : cases) {
    INFO(c.a.to_string() << " " << c.b.to_string());
    const Var<double> a = var(c.a), b = var(c.b);
    std::vector<Var<double>> outputs;
    for (int op = 0; op < 6; ++op) outputs.push_back(binary(op, a, b));
    outputs.push_back(momnet::where(momnet::greater(a, b), a, b));
    outputs.push_back(momnet::equal(a, b));
    for (const Var<double>& y : outputs) CHECK(y.shape() == c.out);
    Var<double> total = momnet::sum(a) + momnet::sum(b);
    for (const Var<double>& y : outputs) total = total + momnet::sum(y);
    tape.backward(total);
    CHECK(a.grad().size() == c.a.size());
    if (c.b.size() > 0) CHECK(b.grad().isApprox(Eigen::MatrixXd::Ones(b.grad().rows(), b.grad().cols())));
  }
  const Var<double> e = var(Shape{2, 0, 3});
  const std::vector<Var<double>> unary{momnet::sqrt(e),        momnet::rsqrt(e),     momnet::pow(e, 2.0),
                                       momnet::abs(e),         momnet::clamp(e, 0.0, 1.0), e + 1.0,
                                       2.0 - e,                e * 3.0,              4.0 / e,
                                       e / 4.0,                momnet::greater(e, 0.0)};
  Var<double> total = momnet::sum(e);
  for (const Var<double>& y : unary) {
    CHECK(y.shape() == Shape{2, 0, 3});
    total = total + momnet::sum(y);
  }
  REQUIRE_NOTHROW(tape.backward(total));
}

// ---- the checks can fail -------------------------------------------------------------------

namespace {

// A broadcast add whose reverse rule forgets to sum over the broadcast axes:
// it gives the bias the gradient of the first row only.
template <class T>
Var<T> add_without_reduction(const Var<T>& x, const Var<T>& bias) {
  Tape<T>& tape = momnet::detail::common_tape("test::add_without_reduction", x, bias);
  const Shape shape = x.shape();
  const Eigen::Index n = shape.size(), d = bias.size();
  const T* px = x.data();
  const T* pb = bias.data();
  T* out = tape.allocate(n);
  for (Eigen::Index i = 0; i < n; ++i) out[i] = px[i] + pb[i % d];
  return tape.record_op({x, bias}, shape, out, [=](momnet::Gradients<T>& g) {
    if (T* gx = g.input(0)) momnet::array_view(gx, n) += momnet::array_view(g.output(0), n);
    if (T* gb = g.input(1)) {
      for (Eigen::Index j = 0; j < d; ++j) gb[j] += g.output(0)[j];  // wrong: row 0 only
    }
  });
}

}  // namespace

TEST_CASE("the gradient check catches a reverse rule that does not reduce", "[elementwise][gradients]") {
  const momnet::GradientCheckResult wrong = momnet::check_gradients(
      [](auto&, const auto& v) { return add_without_reduction(v[0], v[1]); },
      {uniform(Shape{3, 4}, 90), uniform(Shape{4}, 91)});
  CHECK_FALSE(wrong.passed);
  CHECK(wrong.worst.find("input 1 [4]") != std::string::npos);
  const momnet::GradientCheckResult right = momnet::check_gradients(
      [](auto&, const auto& v) { return v[0] + v[1]; }, {uniform(Shape{3, 4}, 90), uniform(Shape{4}, 91)});
  CHECK(right.passed);
}
