// linear() over the last axis of any rank and matmul() batched over leading
// dimensions with broadcasting: gradients against finite differences
// (double), forward values against naive loops (float and double), exact
// errors, empty values, and the bits of the rank-2 hot path.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using momnet_test::uniform;

using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Transpose;
using momnet::Var;

using Dims = std::vector<Eigen::Index>;

Shape shape_of(const Dims& d) {
  switch (d.size()) {
    case 0: return Shape{};
    case 1: return Shape{d[0]};
    case 2: return Shape{d[0], d[1]};
    case 3: return Shape{d[0], d[1], d[2]};
    default: return Shape{d[0], d[1], d[2], d[3]};
  }
}

Dims concat(Dims a, const Dims& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

template <class T>
Tensor<T> to_precision(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Eigen::Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

std::string name_of(Transpose ta, Transpose tb) {
  return std::string(ta == Transpose::yes ? "T" : "N") + (tb == Transpose::yes ? "T" : "N");
}

// Finite differences in double against the tape's gradients, every element.
template <class F>
void check_op(const std::string& what, F f, const std::vector<Tensor<double>>& inputs) {
  INFO("operation: " << what);
  const momnet::GradientCheckResult result = momnet::check_gradients(f, inputs);
  INFO("worst: " << result.worst << " (error " << result.max_error << ")");
  std::size_t elements = 0;
  for (const auto& input : inputs) elements += static_cast<std::size_t>(input.size());
  CHECK(result.checked == elements);
  CHECK(result.passed);
}

// op(a) op(b) by naive loops (long double sums), batch dimensions broadcast
// by hand; both operands rank >= 2. Returns the values, sets `out`.
template <class T>
std::vector<long double> naive_matmul(const Tensor<T>& a, bool ta, const Tensor<T>& b, bool tb, Dims& out) {
  const Dims da = a.shape().dims(), db = b.shape().dims();
  const Eigen::Index ar = da[da.size() - 2], ac = da.back(), br = db[db.size() - 2], bc = db.back();
  const Eigen::Index m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  REQUIRE(k == (tb ? bc : br));
  std::array<Eigen::Index, 2> pa{{1, 1}}, pb{{1, 1}}, po{{1, 1}};
  for (std::size_t i = 0; i + 2 < da.size(); ++i) pa[2 - (da.size() - 2) + i] = da[i];
  for (std::size_t i = 0; i + 2 < db.size(); ++i) pb[2 - (db.size() - 2) + i] = db[i];
  for (std::size_t d = 0; d < 2; ++d) po[d] = std::max(pa[d], pb[d]);
  const std::size_t batch_rank = std::max(da.size(), db.size()) - 2;
  out.clear();
  for (std::size_t d = 2 - batch_rank; d < 2; ++d) out.push_back(po[d]);
  out.push_back(m);
  out.push_back(n);
  std::vector<long double> c;
  for (Eigen::Index o0 = 0; o0 < po[0]; ++o0) {
    for (Eigen::Index o1 = 0; o1 < po[1]; ++o1) {
      const Eigen::Index ia = (pa[0] == 1 ? 0 : o0) * pa[1] + (pa[1] == 1 ? 0 : o1);
      const Eigen::Index ib = (pb[0] == 1 ? 0 : o0) * pb[1] + (pb[1] == 1 ? 0 : o1);
      const T* A = a.data() + ia * ar * ac;
      const T* B = b.data() + ib * br * bc;
      for (Eigen::Index i = 0; i < m; ++i) {
        for (Eigen::Index j = 0; j < n; ++j) {
          long double s = 0;
          for (Eigen::Index p = 0; p < k; ++p) {
            const T x = ta ? A[p * ac + i] : A[i * ac + p];
            const T y = tb ? B[j * bc + p] : B[p * bc + j];
            s += static_cast<long double>(x) * static_cast<long double>(y);
          }
          c.push_back(s);
        }
      }
    }
  }
  return c;
}

// The largest |value - expected| relative to max(1, |expected|).
template <class T>
double max_difference(const Var<T>& v, const std::vector<long double>& expected) {
  REQUIRE(static_cast<std::size_t>(v.size()) == expected.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const long double e = expected[i];
    const long double d = (static_cast<long double>(v.data()[i]) - e) / std::max<long double>(1, e < 0 ? -e : e);
    worst = std::max(worst, static_cast<double>(d < 0 ? -d : d));
  }
  return worst;
}

bool same_bits(const void* a, const void* b, Eigen::Index count, std::size_t element) {
  return count == 0 || std::memcmp(a, b, static_cast<std::size_t>(count) * element) == 0;
}

const Transpose transposes[2] = {Transpose::no, Transpose::yes};

// Batch dimensions of a and b: equal, one side missing, broadcast 1s, and
// rank 3 against rank 4.
const std::vector<std::pair<Dims, Dims>> batch_cases = {
    {{}, {}},         {{3}, {3}},       {{2, 3}, {2, 3}}, {{}, {2, 3}}, {{2, 3}, {}}, {{2, 1}, {1, 3}},
    {{1}, {3}},       {{3}, {2, 3}},    {{2, 3}, {1}},    {{2}, {}},    {{}, {3}},
};

}  // namespace

// ---- linear ----------------------------------------------------------------------

TEST_CASE("linear gradients on inputs of rank 1 to 4, with and without bias", "[ops][gradients][linear]") {
  const std::vector<Dims> leading = {{}, {3}, {2, 3}, {2, 1, 3}};
  for (const Dims& lead : leading) {
    const Shape x = shape_of(concat(lead, {4}));
    check_op(
        "linear with bias, x " + x.to_string(), [](auto&, const auto& v) { return momnet::linear(v[0], v[1], v[2]); },
        {uniform(x, 1), uniform(Shape{2, 4}, 2), uniform(Shape{2}, 3)});
    check_op(
        "linear with a [1, out] bias, x " + x.to_string(),
        [](auto&, const auto& v) { return momnet::linear(v[0], v[1], v[2]); },
        {uniform(x, 4), uniform(Shape{2, 4}, 5), uniform(Shape{1, 2}, 6)});
    check_op(
        "linear without bias, x " + x.to_string(), [](auto&, const auto& v) { return momnet::linear(v[0], v[1]); },
        {uniform(x, 7), uniform(Shape{2, 4}, 8)});
  }
}

TEMPLATE_TEST_CASE("linear values against naive loops, rank 1 to 4", "[ops][values][linear]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-15;
  const std::vector<Dims> leading = {{}, {5}, {2, 3}, {2, 2, 3}};
  const Eigen::Index in = 7, out = 3;
  for (const Dims& lead : leading) {
    const Shape sx = shape_of(concat(lead, {in}));
    INFO("x " << sx.to_string());
    const Tensor<T> x = to_precision<T>(uniform(sx, 10));
    const Tensor<T> w = to_precision<T>(uniform(Shape{out, in}, 11));
    const Tensor<T> b = to_precision<T>(uniform(Shape{out}, 12));
    Tape<T> tape;
    const Var<T> y = momnet::linear(tape.constant(x), tape.constant(w), tape.constant(b));
    const Var<T> y0 = momnet::linear(tape.constant(x), tape.constant(w));
    CHECK(y.shape() == shape_of(concat(lead, {out})));
    CHECK(y0.shape() == y.shape());
    const Eigen::Index rows = x.size() / in;
    std::vector<long double> expected, expected0;
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index o = 0; o < out; ++o) {
        long double s = 0;
        for (Eigen::Index i = 0; i < in; ++i) {
          s += static_cast<long double>(x.data()[r * in + i]) * static_cast<long double>(w.data()[o * in + i]);
        }
        expected0.push_back(s);
        expected.push_back(s + static_cast<long double>(b.data()[o]));
      }
    }
    CHECK(max_difference(y, expected) <= tolerance);
    CHECK(max_difference(y0, expected0) <= tolerance);
  }
}

TEMPLATE_TEST_CASE("linear on any rank is the rank-2 product of the flattened input, bit for bit",
                   "[ops][values][linear]", float, double) {
  using T = TestType;
  const Tensor<T> x = to_precision<T>(uniform(Shape{2, 3, 5, 16}, 20));
  const Tensor<T> w = to_precision<T>(uniform(Shape{9, 16}, 21));
  const Tensor<T> b = to_precision<T>(uniform(Shape{9}, 22));
  Tensor<T> flat = x;
  flat.reshape(Shape{30, 16});
  Tape<T> tape;
  const Var<T> vx = tape.variable(x), vf = tape.variable(flat), vw = tape.variable(w), vb = tape.variable(b);
  const Var<T> y4 = momnet::linear(vx, vw, vb);
  const Var<T> y2 = momnet::linear(vf, vw, vb);
  REQUIRE(y4.shape() == (Shape{2, 3, 5, 9}));
  REQUIRE(y2.shape() == (Shape{30, 9}));
  CHECK(same_bits(y4.data(), y2.data(), y2.size(), sizeof(T)));
  // The backward too: seed both with the same values.
  Tensor<T> seed(Shape{30, 9});
  for (Eigen::Index i = 0; i < seed.size(); ++i) seed.data()[i] = static_cast<T>(0.01 * static_cast<double>(i % 17) - 0.05);
  tape.backward(y2, seed.data());
  std::vector<T> gx2(vf.grad().data(), vf.grad().data() + vf.size());
  std::vector<T> gw(vw.grad().data(), vw.grad().data() + vw.size()), gb(vb.grad().data(), vb.grad().data() + vb.size());
  tape.backward(y4, seed.data());
  CHECK(same_bits(vx.grad().data(), gx2.data(), vx.size(), sizeof(T)));
  CHECK(same_bits(vw.grad().data(), gw.data(), vw.size(), sizeof(T)));
  CHECK(same_bits(vb.grad().data(), gb.data(), vb.size(), sizeof(T)));
}

TEMPLATE_TEST_CASE("rank-2 linear and matmul are one aligned Eigen product, recomputed bit for bit",
                   "[ops][values][linear]", float, double) {
  using T = TestType;
  const Tensor<T> x = to_precision<T>(uniform(Shape{37, 29}, 30));
  const Tensor<T> w = to_precision<T>(uniform(Shape{23, 29}, 31));
  const Tensor<T> b = to_precision<T>(uniform(Shape{23}, 32));
  // What linear computed before it took any rank: x W^T + b on aligned views.
  Tensor<T> expected(Shape{37, 23});
  expected.matrix().noalias() = x.matrix() * w.matrix().transpose();
  expected.matrix().rowwise() += momnet::ConstMatrixView<T>(b.data(), 1, 23).row(0);
  Tensor<T> product(Shape{37, 23});
  product.matrix().noalias() = x.matrix() * w.matrix().transpose();

  Tape<T> tape;
  const Var<T> y = momnet::linear(tape.constant(x), tape.constant(w), tape.constant(b));
  CHECK(same_bits(y.data(), expected.data(), expected.size(), sizeof(T)));
  const Var<T> z = momnet::matmul(tape.constant(x), tape.constant(w), Transpose::no, Transpose::yes);
  CHECK(same_bits(z.data(), product.data(), product.size(), sizeof(T)));
  // Recomputed elsewhere in the arena, on another tape: the same bits.
  Tape<T> other;
  other.filled(Shape{3}, T(0));
  const Var<T> again = momnet::linear(other.constant(x), other.constant(w), other.constant(b));
  CHECK(same_bits(again.data(), y.data(), y.size(), sizeof(T)));
}

TEST_CASE("the Linear layer takes inputs of any rank from 1", "[ops][linear][layers]") {
  momnet::Rng rng(40);
  momnet::Linear<double> layer(4, 3, rng);
  Tape<double> tape;
  const Tensor<double> x3 = uniform(Shape{2, 5, 4}, 41);
  const Var<double> y3 = layer.forward(tape, tape.constant(x3));
  CHECK(y3.shape() == (Shape{2, 5, 3}));
  const Tensor<double> x1 = uniform(Shape{4}, 42);
  const Var<double> y1 = layer.forward(tape, tape.constant(x1));
  REQUIRE(y1.shape() == Shape{3});
  for (Eigen::Index o = 0; o < 3; ++o) {
    double s = layer.bias().value_data()[o];
    for (Eigen::Index i = 0; i < 4; ++i) s += layer.weight().value_data()[o * 4 + i] * x1.data()[i];
    CHECK(y1.data()[o] == Approx(s).epsilon(1e-14));
  }
  const auto result = momnet::check_block_gradients(layer, x3);
  INFO(result.worst);
  CHECK(result.passed);
  CHECK(result.checked == 40 + 12 + 3);
}

// ---- matmul ----------------------------------------------------------------------

TEST_CASE("matmul gradients, rank 2 to 4, every transpose, broadcast batch dimensions",
          "[ops][gradients][matmul]") {
  const Eigen::Index m = 2, k = 3, n = 4;
  std::uint64_t seed = 100;
  for (const auto& batches : batch_cases) {
    for (Transpose ta : transposes) {
      for (Transpose tb : transposes) {
        const Shape sa = shape_of(concat(batches.first, ta == Transpose::yes ? Dims{k, m} : Dims{m, k}));
        const Shape sb = shape_of(concat(batches.second, tb == Transpose::yes ? Dims{n, k} : Dims{k, n}));
        check_op(
            "matmul " + name_of(ta, tb) + " " + sa.to_string() + " x " + sb.to_string(),
            [ta, tb](auto&, const auto& v) { return momnet::matmul(v[0], v[1], ta, tb); },
            {uniform(sa, seed), uniform(sb, seed + 1)});
        seed += 2;
      }
    }
  }
}

TEST_CASE("matmul gradients with rank-1 operands", "[ops][gradients][matmul]") {
  const auto f = [](auto&, const auto& v) { return momnet::matmul(v[0], v[1]); };
  const std::vector<std::pair<Shape, Shape>> cases = {
      {Shape{3}, Shape{3, 4}}, {Shape{2, 3}, Shape{3}},       {Shape{3}, Shape{3}},
      {Shape{3}, Shape{2, 3, 4}}, {Shape{2, 2, 2, 3}, Shape{3}}, {Shape{3}, Shape{2, 1, 3, 4}}};
  std::uint64_t seed = 200;
  for (const auto& c : cases) {
    check_op("matmul " + c.first.to_string() + " x " + c.second.to_string(), f,
             {uniform(c.first, seed), uniform(c.second, seed + 1)});
    seed += 2;
  }
  // Transposing the matrix operand is allowed.
  check_op(
      "matmul [3] x [4, 3]^T", [](auto&, const auto& v) { return momnet::matmul(v[0], v[1], Transpose::no, Transpose::yes); },
      {uniform(Shape{3}, 210), uniform(Shape{4, 3}, 211)});
  check_op(
      "matmul [3, 2]^T x [3]", [](auto&, const auto& v) { return momnet::matmul(v[0], v[1], Transpose::yes, Transpose::no); },
      {uniform(Shape{3, 2}, 212), uniform(Shape{3}, 213)});
}

TEMPLATE_TEST_CASE("matmul values against naive loops, every transpose and broadcast", "[ops][values][matmul]", float,
                   double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  // Odd sizes (not multiples of a SIMD packet): matrices inside a batch start
  // unaligned.
  const Eigen::Index m = 5, k = 7, n = 3;
  std::uint64_t seed = 300;
  for (const auto& batches : batch_cases) {
    for (Transpose ta : transposes) {
      for (Transpose tb : transposes) {
        const bool ya = ta == Transpose::yes, yb = tb == Transpose::yes;
        const Shape sa = shape_of(concat(batches.first, ya ? Dims{k, m} : Dims{m, k}));
        const Shape sb = shape_of(concat(batches.second, yb ? Dims{n, k} : Dims{k, n}));
        INFO("matmul " << name_of(ta, tb) << " " << sa.to_string() << " x " << sb.to_string());
        const Tensor<T> a = to_precision<T>(uniform(sa, seed++, -2, 2));
        const Tensor<T> b = to_precision<T>(uniform(sb, seed++, -2, 2));
        Dims out;
        const std::vector<long double> expected = naive_matmul(a, ya, b, yb, out);
        Tape<T> tape;
        const Var<T> c = momnet::matmul(tape.constant(a), tape.constant(b), ta, tb);
        CHECK(c.shape() == shape_of(out));
        CHECK(max_difference(c, expected) <= tolerance * static_cast<double>(k));
      }
    }
  }
  SECTION("attention shapes: [B, H, T, D] x [B, H, S, D]^T, then x [B, H, S, D]") {
    const Tensor<T> q = to_precision<T>(uniform(Shape{2, 3, 5, 4}, 400));
    const Tensor<T> kv = to_precision<T>(uniform(Shape{2, 3, 6, 4}, 401));
    Tape<T> tape;
    const Var<T> scores = momnet::matmul(tape.constant(q), tape.constant(kv), Transpose::no, Transpose::yes);
    CHECK(scores.shape() == (Shape{2, 3, 5, 6}));
    Dims out;
    CHECK(max_difference(scores, naive_matmul(q, false, kv, true, out)) <= tolerance * 4);
    Tensor<T> s(scores.shape());
    std::copy(scores.data(), scores.data() + scores.size(), s.data());
    const Var<T> mixed = momnet::matmul(scores, tape.constant(kv));
    CHECK(mixed.shape() == (Shape{2, 3, 5, 4}));
    CHECK(max_difference(mixed, naive_matmul(s, false, kv, false, out)) <= tolerance * 6);
  }
  SECTION("rank-1 operands follow torch.matmul") {
    const Tensor<T> v = to_precision<T>(uniform(Shape{k}, 410));
    const Tensor<T> bm = to_precision<T>(uniform(Shape{2, k, n}, 411));
    const Tensor<T> am = to_precision<T>(uniform(Shape{2, m, k}, 412));
    Tensor<T> row = v, col = v;
    row.reshape(Shape{1, k});
    col.reshape(Shape{k, 1});
    Tape<T> tape;
    Dims out;
    const Var<T> vb = momnet::matmul(tape.constant(v), tape.constant(bm));
    CHECK(vb.shape() == (Shape{2, n}));
    CHECK(max_difference(vb, naive_matmul(row, false, bm, false, out)) <= tolerance * k);
    const Var<T> av = momnet::matmul(tape.constant(am), tape.constant(v));
    CHECK(av.shape() == (Shape{2, m}));
    CHECK(max_difference(av, naive_matmul(am, false, col, false, out)) <= tolerance * k);
    const Var<T> dot = momnet::matmul(tape.constant(v), tape.constant(v));
    CHECK(dot.shape() == Shape{});
    CHECK(max_difference(dot, naive_matmul(row, false, col, false, out)) <= tolerance * k);
  }
}

TEMPLATE_TEST_CASE("batched matmul is deterministic, bit for bit, wherever it sits in the arena",
                   "[ops][values][matmul]", float, double) {
  using T = TestType;
  const Tensor<T> a = to_precision<T>(uniform(Shape{2, 3, 5, 7}, 500));
  const Tensor<T> b = to_precision<T>(uniform(Shape{3, 7, 9}, 501));
  Tensor<T> seed(Shape{2, 3, 5, 9});
  for (Eigen::Index i = 0; i < seed.size(); ++i) seed.data()[i] = static_cast<T>(0.003 * static_cast<double>(i % 31) - 0.04);
  std::vector<std::vector<T>> runs;
  for (int padding = 0; padding < 3; ++padding) {
    Tape<T> tape;
    for (int p = 0; p < padding; ++p) tape.filled(Shape{static_cast<Eigen::Index>(p) + 1}, T(0));
    const Var<T> va = tape.variable(a), vb = tape.variable(b);
    const Var<T> c = momnet::matmul(va, vb);
    tape.backward(c, seed.data());
    std::vector<T> all(c.data(), c.data() + c.size());
    all.insert(all.end(), va.grad().data(), va.grad().data() + va.size());
    all.insert(all.end(), vb.grad().data(), vb.grad().data() + vb.size());
    runs.push_back(all);
  }
  CHECK(same_bits(runs[0].data(), runs[1].data(), static_cast<Eigen::Index>(runs[0].size()), sizeof(T)));
  CHECK(same_bits(runs[0].data(), runs[2].data(), static_cast<Eigen::Index>(runs[0].size()), sizeof(T)));
}

// ---- errors ----------------------------------------------------------------------

TEST_CASE("matmul and linear name themselves and both shapes on bad operands", "[ops][errors][matmul]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };

  SECTION("matmul: inner dimensions") {
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{4, 5})), std::invalid_argument, "momnet::matmul",
                         "inner dimensions differ (3 against 4)", "[2, 3] and [4, 5]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{2, 3}), Transpose::yes, Transpose::yes),
                         std::invalid_argument, "momnet::matmul", "inner dimensions differ (2 against 3)",
                         "[2, 3] and [2, 3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 4, 3}), var(Shape{2, 4, 5}), Transpose::no, Transpose::no),
                         std::invalid_argument, "momnet::matmul", "inner dimensions differ", "[2, 4, 3] and [2, 4, 5]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{3}), var(Shape{2, 3})), std::invalid_argument, "momnet::matmul",
                         "inner dimensions differ", "[3] and [2, 3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{2})), std::invalid_argument, "momnet::matmul",
                         "inner dimensions differ", "[2, 3] and [2]");
  }
  SECTION("matmul: batch dimensions that do not broadcast") {
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3, 4}), var(Shape{3, 4, 5})), std::invalid_argument,
                         "momnet::matmul", "batch dimensions do not broadcast", "[2, 3, 4] and [3, 4, 5]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 2, 3, 4}), var(Shape{3, 4, 5})), std::invalid_argument,
                         "momnet::matmul", "batch dimensions do not broadcast", "[2, 2, 3, 4] and [3, 4, 5]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 1, 3, 4}), var(Shape{3, 2, 4, 5})), std::invalid_argument,
                         "momnet::matmul", "batch dimensions do not broadcast", "[2, 1, 3, 4] and [3, 2, 4, 5]");
    REQUIRE_NOTHROW(momnet::matmul(var(Shape{2, 1, 3, 4}), var(Shape{1, 2, 4, 5})));
  }
  SECTION("matmul: ranks") {
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{}), var(Shape{3, 2})), std::invalid_argument, "momnet::matmul",
                         "rank 1 to 4", "[] and [3, 2]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{3}), var(Shape{3}), Transpose::yes, Transpose::no),
                         std::invalid_argument, "momnet::matmul", "rank-1 operand cannot be transposed", "[3] and [3]");
    REQUIRE_THROWS_EXACT(momnet::matmul(var(Shape{2, 3}), var(Shape{3}), Transpose::no, Transpose::yes),
                         std::invalid_argument, "momnet::matmul", "rank-1 operand cannot be transposed",
                         "[2, 3] and [3]");
  }
  SECTION("linear") {
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 3}), var(Shape{4, 5})), std::invalid_argument, "momnet::linear",
                         "in-features", "[2, 3] and [4, 5]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 2, 3}), var(Shape{4, 2})), std::invalid_argument,
                         "momnet::linear", "in-features", "[2, 2, 3] and [4, 2]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{5}), var(Shape{4, 6})), std::invalid_argument, "momnet::linear",
                         "in-features", "[5] and [4, 6]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{}), var(Shape{4, 1})), std::invalid_argument, "momnet::linear",
                         "rank 1 or more", "[] and [4, 1]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 6}), var(Shape{6})), std::invalid_argument, "momnet::linear",
                         "weight must be rank 2", "got [6]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 3, 3}), var(Shape{4, 3}), var(Shape{5})),
                         std::invalid_argument, "momnet::linear", "bias", "[4, 3] and [5]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{3}), var(Shape{4, 3}), var(Shape{2, 2})), std::invalid_argument,
                         "momnet::linear", "bias", "[4, 3] and [2, 2]");
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{3}), var(Shape{4, 3}), var(Shape{4, 1})), std::invalid_argument,
                         "momnet::linear", "bias", "[4, 3] and [4, 1]");
    Tape<double> other;
    REQUIRE_THROWS_EXACT(momnet::linear(var(Shape{2, 2, 3}), var(Shape{4, 3}), other.variable(Tensor<double>(Shape{4}))),
                         std::invalid_argument, "momnet::linear", "different tapes");
  }
}

// ---- empty values ------------------------------------------------------------------

TEST_CASE("linear and matmul with an empty batch or an empty inner dimension", "[ops][values][empty]") {
  Tape<double> tape;
  const Var<double> w = tape.variable(uniform(Shape{3, 4}, 600));
  const Var<double> bias = tape.variable(uniform(Shape{3}, 601));

  SECTION("linear, batch 0, rank 2 and 3") {
    const Var<double> x = tape.variable(Tensor<double>(Shape{0, 4}));
    const Var<double> y = momnet::linear(x, w, bias);
    CHECK(y.shape() == (Shape{0, 3}));
    const Var<double> x3 = tape.variable(Tensor<double>(Shape{2, 0, 4}));
    const Var<double> y3 = momnet::linear(x3, w);
    CHECK(y3.shape() == (Shape{2, 0, 3}));
    tape.backward(momnet::sum(y) + momnet::sum(y3));
    CHECK(w.grad().isZero());
    CHECK(bias.grad().isZero());
  }
  SECTION("linear, in = 0: the bias, or zeros") {
    const Var<double> x = tape.variable(Tensor<double>(Shape{2, 0}));
    const Var<double> w0 = tape.variable(Tensor<double>(Shape{3, 0}));
    const Var<double> y = momnet::linear(x, w0, bias);
    REQUIRE(y.shape() == (Shape{2, 3}));
    for (Eigen::Index r = 0; r < 2; ++r) {
      for (Eigen::Index o = 0; o < 3; ++o) CHECK(y.data()[r * 3 + o] == bias.data()[o]);
    }
    const Var<double> z = momnet::linear(x, w0);
    CHECK(z.value().isZero());
    tape.backward(momnet::sum(y) + momnet::sum(z));
    CHECK(bias.grad().isApprox(Eigen::RowVectorXd::Constant(3, 2.0)));
    check_op(
        "linear with in = 0", [](auto&, const auto& v) { return momnet::linear(v[0], v[1], v[2]); },
        {Tensor<double>(Shape{2, 0}), Tensor<double>(Shape{3, 0}), uniform(Shape{3}, 602)});
  }
  SECTION("matmul: rows 0, inner 0, batch 0") {
    const Var<double> a0 = tape.variable(Tensor<double>(Shape{0, 4}));
    const Var<double> b = tape.variable(uniform(Shape{4, 5}, 603));
    const Var<double> c0 = momnet::matmul(a0, b);
    CHECK(c0.shape() == (Shape{0, 5}));
    const Var<double> ak = tape.variable(Tensor<double>(Shape{2, 3, 0}));
    const Var<double> bk = tape.variable(Tensor<double>(Shape{0, 5}));
    const Var<double> ck = momnet::matmul(ak, bk);
    REQUIRE(ck.shape() == (Shape{2, 3, 5}));
    CHECK(ck.value().isZero());
    const Var<double> ckt = momnet::matmul(tape.variable(Tensor<double>(Shape{2, 0, 3})), bk, Transpose::yes,
                                           Transpose::no);
    REQUIRE(ckt.shape() == (Shape{2, 3, 5}));
    CHECK(ckt.value().isZero());
    const Var<double> a1 = tape.variable(uniform(Shape{1, 2, 4}, 604));
    const Var<double> cb = momnet::matmul(a1, tape.variable(Tensor<double>(Shape{0, 4, 5})));
    CHECK(cb.shape() == (Shape{0, 2, 5}));
    tape.backward(momnet::sum(c0) + momnet::sum(ck) + momnet::sum(ckt) + momnet::sum(cb));
    CHECK(b.grad().isZero());
    CHECK(a1.grad().isZero());
  }
}
