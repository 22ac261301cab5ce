// Operations along an axis: reductions (sum, mean, max, argmax, logsumexp),
// softmax and log_softmax, concat, slice, permute, transpose, and the losses'
// ignore_index, reduction and empty batches. Gradients against finite
// differences on rank 2, 3 and 4 inputs and every axis (negative ones too),
// forward values against direct index loops in float and double, errors with
// their exact type and message, and empty dimensions.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace {

using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using momnet_test::uniform;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

// ---- direct index loops (the reference) ----------------------------------------

// The row-major offset of multi-index `idx` in `s`.
Index offset_of(const Shape& s, const std::vector<Index>& idx) {
  Index off = 0;
  for (int k = 0; k < s.rank(); ++k) off = off * s.dim(k) + idx[static_cast<std::size_t>(k)];
  return off;
}

// Calls f(idx) for every multi-index of `s`, in row-major order.
void for_each_index(const Shape& s, const std::function<void(const std::vector<Index>&)>& f) {
  if (s.size() == 0) return;
  std::vector<Index> idx(static_cast<std::size_t>(s.rank()), 0);
  for (Index n = 0; n < s.size(); ++n) {
    f(idx);
    for (int k = s.rank(); k-- > 0;) {
      if (++idx[static_cast<std::size_t>(k)] < s.dim(k)) break;
      idx[static_cast<std::size_t>(k)] = 0;
    }
  }
}

int positive_axis(const Shape& s, int axis) { return axis < 0 ? axis + s.rank() : axis; }

// The values of x along `axis` at the position `outer_idx` (x's index without the axis).
std::vector<double> line(const Tensor<double>& x, int axis, const std::vector<Index>& outer_idx) {
  const int a = positive_axis(x.shape(), axis);
  std::vector<Index> full = outer_idx;
  full.insert(full.begin() + a, 0);
  std::vector<double> v;
  for (Index i = 0; i < x.shape().dim(a); ++i) {
    full[static_cast<std::size_t>(a)] = i;
    v.push_back(x.data()[offset_of(x.shape(), full)]);
  }
  return v;
}

enum class Kind { sum, mean, max, argmax, logsumexp };

// The reduction of x along `axis`, in the output's order (keepdim or not: the same order).
std::vector<double> reference_reduce(const Tensor<double>& x, int axis, Kind kind) {
  std::vector<double> out;
  for_each_index(x.shape().without_dim(axis), [&](const std::vector<Index>& idx) {
    const std::vector<double> v = line(x, axis, idx);
    double r = 0.0;
    switch (kind) {
      case Kind::sum:
      case Kind::mean:
        for (double e : v) r += e;
        if (kind == Kind::mean) r /= static_cast<double>(v.size());
        break;
      case Kind::max:
      case Kind::argmax: {
        std::size_t best = 0;
        for (std::size_t i = 1; i < v.size(); ++i) {
          if (v[i] > v[best]) best = i;
        }
        r = kind == Kind::max ? v[best] : static_cast<double>(best);
        break;
      }
      case Kind::logsumexp: {
        double total = 0.0;
        for (double e : v) total += std::exp(e);
        r = std::log(total);
        break;
      }
    }
    out.push_back(r);
  });
  return out;
}

// softmax (or log_softmax) of x along `axis`, computed naively in double.
Tensor<double> reference_softmax(const Tensor<double>& x, int axis, bool log) {
  Tensor<double> out(x.shape());
  const int a = positive_axis(x.shape(), axis);
  for_each_index(x.shape().without_dim(axis), [&](const std::vector<Index>& idx) {
    const std::vector<double> v = line(x, axis, idx);
    double total = 0.0;
    for (double e : v) total += std::exp(e);
    std::vector<Index> full = idx;
    full.insert(full.begin() + a, 0);
    for (std::size_t i = 0; i < v.size(); ++i) {
      full[static_cast<std::size_t>(a)] = static_cast<Index>(i);
      const double p = std::exp(v[i]) / total;
      out.data()[offset_of(x.shape(), full)] = log ? std::log(p) : p;
    }
  });
  return out;
}

// The axes of x reordered: out[j] = x[i] with i[perm[k]] = j[k].
Tensor<double> reference_permute(const Tensor<double>& x, const std::vector<int>& perm) {
  std::vector<Index> dims;
  for (int p : perm) dims.push_back(x.shape().dim(p));
  Tensor<double> out{Shape(dims)};
  Index n = 0;
  for_each_index(out.shape(), [&](const std::vector<Index>& j) {
    std::vector<Index> i(j.size());
    for (std::size_t k = 0; k < perm.size(); ++k) i[static_cast<std::size_t>(perm[k])] = j[k];
    out.data()[n++] = x.data()[offset_of(x.shape(), i)];
  });
  return out;
}

// Parts laid side by side along `axis`.
Tensor<double> reference_concat(const std::vector<Tensor<double>>& parts, int axis) {
  const int a = positive_axis(parts[0].shape(), axis);
  Index total = 0;
  for (const auto& p : parts) total += p.shape().dim(a);
  Tensor<double> out(parts[0].shape().with_dim(a, total));
  for_each_index(out.shape(), [&](const std::vector<Index>& j) {
    std::vector<Index> i = j;
    std::size_t k = 0;
    while (i[static_cast<std::size_t>(a)] >= parts[k].shape().dim(a)) i[static_cast<std::size_t>(a)] -= parts[k++].shape().dim(a);
    out.data()[offset_of(out.shape(), j)] = parts[k].data()[offset_of(parts[k].shape(), i)];
  });
  return out;
}

// Positions [begin, begin + count) along `axis`.
Tensor<double> reference_slice(const Tensor<double>& x, Index begin, Index count, int axis) {
  const int a = positive_axis(x.shape(), axis);
  Tensor<double> out(x.shape().with_dim(a, count));
  for_each_index(out.shape(), [&](const std::vector<Index>& j) {
    std::vector<Index> i = j;
    i[static_cast<std::size_t>(a)] += begin;
    out.data()[offset_of(out.shape(), j)] = x.data()[offset_of(x.shape(), i)];
  });
  return out;
}

template <class T>
Tensor<T> to_precision(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

// t rounded to T and back: the exact input a float computation sees.
template <class T>
Tensor<double> rounded(const Tensor<double>& t) {
  Tensor<double> out(t.shape());
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<double>(static_cast<T>(t.data()[i]));
  return out;
}

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

template <class T>
void require_values(const Var<T>& got, const std::vector<double>& expected, double tol) {
  REQUIRE(got.size() == static_cast<Index>(expected.size()));
  for (std::size_t i = 0; i < expected.size(); ++i) {
    INFO("element " << i);
    CHECK(static_cast<double>(got.data()[i]) == Approx(expected[i]).epsilon(tol).margin(tol));
  }
}
template <class T>
void require_values(const Var<T>& got, const Tensor<double>& expected, double tol) {
  REQUIRE(got.shape() == expected.shape());
  require_values(got, std::vector<double>(expected.data(), expected.data() + expected.size()), tol);
}

// Double gradients against finite differences.
template <class F>
void check_grad(const std::string& name, F f, const std::vector<Tensor<double>>& inputs) {
  INFO("operation: " << name);
  const momnet::GradientCheckResult r = momnet::check_gradients(f, inputs);
  INFO("worst: " << r.worst << " (error " << r.max_error << ")");
  std::size_t elements = 0;
  for (const auto& input : inputs) elements += static_cast<std::size_t>(input.size());
  CHECK(r.checked == elements);
  CHECK(r.passed);
}

const std::vector<Shape> ranked_shapes{Shape{3, 4}, Shape{2, 3, 4}, Shape{2, 3, 2, 3}};

std::string describe(const Shape& s, int axis, bool keepdim) {
  return s.to_string() + " axis " + std::to_string(axis) + (keepdim ? " keepdim" : "");
}

}  // namespace

// ---- gradients -------------------------------------------------------------------

TEST_CASE("sum, mean, max and logsumexp gradients along every axis of rank 2, 3 and 4 values, with keepdim",
          "[ops][axes][gradients]") {
  std::uint64_t seed = 1;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      for (bool keepdim : {false, true}) {
        const Tensor<double> x = uniform(shape, seed++, -2.0, 2.0);
        const std::string where = describe(shape, axis, keepdim);
        check_grad("sum " + where, [=](auto&, const Vars& v) { return momnet::sum(v[0], axis, keepdim); }, {x});
        check_grad("mean " + where, [=](auto&, const Vars& v) { return momnet::mean(v[0], axis, keepdim); }, {x});
        check_grad("max " + where, [=](auto&, const Vars& v) { return momnet::max(v[0], axis, keepdim); }, {x});
        check_grad("logsumexp " + where,
                   [=](auto&, const Vars& v) { return momnet::logsumexp(v[0], axis, keepdim); }, {x});
      }
    }
  }
  // A rank-1 value reduces to a scalar.
  check_grad("sum [5] axis 0", [](auto&, const Vars& v) { return momnet::sum(v[0], 0); }, {uniform(Shape{5}, 99)});
  check_grad("max [5] axis -1", [](auto&, const Vars& v) { return momnet::max(v[0], -1); }, {uniform(Shape{5}, 98)});
}

TEST_CASE("softmax and log_softmax gradients along every axis of rank 2, 3 and 4 values",
          "[ops][axes][gradients]") {
  std::uint64_t seed = 100;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      const Tensor<double> x = uniform(shape, seed++, -3.0, 3.0);
      const std::string where = describe(shape, axis, false);
      check_grad("softmax " + where, [=](auto&, const Vars& v) { return momnet::softmax(v[0], axis); }, {x});
      check_grad("log_softmax " + where, [=](auto&, const Vars& v) { return momnet::log_softmax(v[0], axis); },
                 {x});
    }
  }
  // Composed with another operation, so the incoming gradient is not the projection alone.
  check_grad(
      "tanh(softmax(x, 1)) * log_softmax(x, 2) on [2, 3, 2, 3]",
      [](auto&, const Vars& v) {
        return momnet::mul(momnet::tanh(momnet::softmax(v[0], 1)), momnet::log_softmax(v[0], 2));
      },
      {uniform(Shape{2, 3, 2, 3}, 150, -2.0, 2.0)});
}

TEST_CASE("concat gradients along every axis of rank 2, 3 and 4 values, with a part used twice",
          "[ops][axes][gradients]") {
  std::uint64_t seed = 200;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      const Shape other = shape.with_dim(axis, 1);
      const std::string where = describe(shape, axis, false);
      check_grad("concat of 2 " + where,
                 [=](auto&, const Vars& v) { return momnet::concat(v[0], v[1], axis); },
                 {uniform(shape, seed++), uniform(other, seed++)});
      check_grad("concat of 3 with a part twice " + where,
                 [=](auto&, const Vars& v) { return momnet::concat(Vars{v[0], v[1], v[0]}, axis); },
                 {uniform(shape, seed++), uniform(other, seed++)});
    }
  }
}

TEST_CASE("slice gradients along every axis of rank 2, 3 and 4 values", "[ops][axes][gradients]") {
  std::uint64_t seed = 300;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      const Index length = shape.dim(axis);
      const std::string where = describe(shape, axis, false);
      check_grad("slice [1, length) " + where,
                 [=](auto&, const Vars& v) { return momnet::slice(v[0], 1, length - 1, axis); },
                 {uniform(shape, seed++)});
      // A slice used with the whole value: x gets gradient from both paths.
      check_grad(
          "slice [0, 1) * sum " + where,
          [=](auto&, const Vars& v) { return momnet::mul(momnet::slice(v[0], 0, 1, axis), momnet::sum(v[0])); },
          {uniform(shape, seed++)});
    }
  }
}

TEST_CASE("permute and transpose gradients on rank 2, 3 and 4 values", "[ops][axes][gradients]") {
  const std::vector<std::pair<Shape, std::vector<int>>> cases{
      {Shape{3, 4}, {1, 0}},          {Shape{2, 3, 4}, {2, 0, 1}},       {Shape{2, 3, 4}, {0, -1, 1}},
      {Shape{2, 3, 2, 3}, {0, 2, 1, 3}}, {Shape{2, 3, 2, 3}, {3, 1, 0, 2}}, {Shape{2, 3, 2, 3}, {-1, -2, -3, -4}}};
  std::uint64_t seed = 400;
  for (const auto& c : cases) {
    const std::vector<int> perm = c.second;
    std::string name = "permute " + c.first.to_string() + " by";
    for (int p : perm) name += " " + std::to_string(p);
    check_grad(name, [=](auto&, const Vars& v) { return momnet::permute(v[0], perm); }, {uniform(c.first, seed++)});
  }
  check_grad("transpose [2, 3, 2, 3] axes 1, -1",
             [](auto&, const Vars& v) { return momnet::transpose(v[0], 1, -1); }, {uniform(Shape{2, 3, 2, 3}, 450)});
  check_grad("transpose [2, 3, 4] axes 0, 2 then tanh",
             [](auto&, const Vars& v) { return momnet::tanh(momnet::transpose(v[0], 0, 2)); },
             {uniform(Shape{2, 3, 4}, 451)});
}

TEST_CASE("cross_entropy gradients with ignore_index and mean or sum reduction", "[ops][axes][gradients][loss]") {
  const Tensor<double> logits = uniform(Shape{5, 4}, 500, -2.0, 2.0);
  const std::vector<int> labels{3, -100, 0, 2, -100};
  check_grad("cross_entropy mean, two rows ignored",
             [&](auto&, const Vars& v) { return momnet::cross_entropy(v[0], labels); }, {logits});
  momnet::CrossEntropyOptions sum_options;
  sum_options.reduction = momnet::Reduction::sum;
  check_grad("cross_entropy sum, two rows ignored",
             [&](auto&, const Vars& v) { return momnet::cross_entropy(v[0], labels, sum_options); }, {logits});
  // An ignore_index inside [0, classes): rows labelled 1 are skipped.
  momnet::CrossEntropyOptions ignore_one;
  ignore_one.ignore_index = 1;
  check_grad("cross_entropy mean, ignore_index 1",
             [&](auto&, const Vars& v) { return momnet::cross_entropy(v[0], {1, 0, 1, 3, 2}, ignore_one); }, {logits});
}

// ---- forward values against direct loops ------------------------------------------

TEMPLATE_TEST_CASE("sum, mean, max, argmax and logsumexp along an axis match a direct loop", "[ops][axes][values]",
                   float, double) {
  using T = TestType;
  std::uint64_t seed = 600;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      for (bool keepdim : {false, true}) {
        INFO(describe(shape, axis, keepdim));
        const Tensor<double> x = rounded<T>(uniform(shape, seed++, -3.0, 3.0));
        Tape<T> tape;
        const Var<T> v = tape.constant(to_precision<T>(x));
        const Shape expected_shape = keepdim ? shape.with_dim(axis, 1) : shape.without_dim(axis);
        const Var<T> s = momnet::sum(v, axis, keepdim);
        const Var<T> m = momnet::mean(v, axis, keepdim);
        const Var<T> mx = momnet::max(v, axis, keepdim);
        const Var<T> l = momnet::logsumexp(v, axis, keepdim);
        const Tensor<std::int64_t> am = momnet::argmax(v, axis, keepdim);
        CHECK(s.shape() == expected_shape);
        CHECK(m.shape() == expected_shape);
        CHECK(mx.shape() == expected_shape);
        CHECK(l.shape() == expected_shape);
        CHECK(am.shape() == expected_shape);
        require_values(s, reference_reduce(x, axis, Kind::sum), tolerance<T>());
        require_values(m, reference_reduce(x, axis, Kind::mean), tolerance<T>());
        require_values(mx, reference_reduce(x, axis, Kind::max), 0.0);  // exact
        require_values(l, reference_reduce(x, axis, Kind::logsumexp), tolerance<T>());
        const std::vector<double> expected_argmax = reference_reduce(x, axis, Kind::argmax);
        for (std::size_t i = 0; i < expected_argmax.size(); ++i) {
          CHECK(am.data()[i] == static_cast<std::int64_t>(expected_argmax[i]));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("softmax and log_softmax along an axis match a direct loop; the last axis of [B, H, T, T] rows sum to 1",
                   "[ops][axes][values]", float, double) {
  using T = TestType;
  std::uint64_t seed = 700;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      INFO(describe(shape, axis, false));
      const Tensor<double> x = rounded<T>(uniform(shape, seed++, -4.0, 4.0));
      Tape<T> tape;
      const Var<T> v = tape.constant(to_precision<T>(x));
      require_values(momnet::softmax(v, axis), reference_softmax(x, axis, false), tolerance<T>());
      require_values(momnet::log_softmax(v, axis), reference_softmax(x, axis, true), tolerance<T>());
    }
  }
  // Attention scores [B, H, T, T]: the default axis normalises each query's row only.
  Tape<T> tape;
  const Shape scores{2, 3, 4, 4};
  const Var<T> p = momnet::softmax(tape.constant(to_precision<T>(uniform(scores, 750, -5.0, 5.0))));
  REQUIRE(p.shape() == scores);
  for (Index row = 0; row < scores.size() / 4; ++row) {
    double total = 0.0;
    for (Index j = 0; j < 4; ++j) total += static_cast<double>(p.data()[row * 4 + j]);
    CHECK(total == Approx(1.0).epsilon(tolerance<T>()));
  }
}

TEMPLATE_TEST_CASE("softmax, log_softmax and logsumexp stay finite for huge values along any axis",
                   "[ops][axes][values]", float, double) {
  using T = TestType;
  Tape<T> tape;
  Tensor<T> x(Shape{2, 3, 2});
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = T(1000) + T(i % 3);
  x.data()[0] = T(-1000);
  const Var<T> v = tape.constant(x);
  for (int axis : {0, 1, -1}) {
    INFO("axis " << axis);
    CHECK(momnet::softmax(v, axis).array().isFinite().all());
    CHECK(momnet::log_softmax(v, axis).array().isFinite().all());
    CHECK(momnet::logsumexp(v, axis).array().isFinite().all());
  }
  Tensor<T> same(Shape{1, 2});
  same.data()[0] = same.data()[1] = T(1000);
  CHECK(static_cast<double>(momnet::logsumexp(tape.constant(same), 1).item()) ==
        Approx(1000.0 + std::log(2.0)).epsilon(1e-6));
}

TEMPLATE_TEST_CASE("concat, slice, permute and transpose along an axis match a direct loop", "[ops][axes][values]",
                   float, double) {
  using T = TestType;
  std::uint64_t seed = 800;
  for (const Shape& shape : ranked_shapes) {
    for (int axis = -shape.rank(); axis < shape.rank(); ++axis) {
      INFO(describe(shape, axis, false));
      const Tensor<double> a = rounded<T>(uniform(shape, seed++));
      const Tensor<double> b = rounded<T>(uniform(shape.with_dim(axis, 2), seed++));
      Tape<T> tape;
      const Var<T> va = tape.constant(to_precision<T>(a));
      const Var<T> vb = tape.constant(to_precision<T>(b));
      require_values(momnet::concat(std::vector<Var<T>>{va, vb, va}, axis), reference_concat({a, b, a}, axis), 0.0);
      const Index length = shape.dim(axis);
      require_values(momnet::slice(va, 1, length - 1, axis), reference_slice(a, 1, length - 1, axis), 0.0);
      require_values(momnet::slice(va, length, 0, axis), reference_slice(a, length, 0, axis), 0.0);
    }
  }
  // The default axis is the last: slice(x, begin, count) on a rank-3 value.
  Tape<T> tape;
  const Tensor<double> x = rounded<T>(uniform(Shape{2, 3, 4}, 850));
  const Var<T> v = tape.constant(to_precision<T>(x));
  require_values(momnet::slice(v, 1, 2), reference_slice(x, 1, 2, 2), 0.0);
  require_values(momnet::concat(v, v), reference_concat({x, x}, -1), 0.0);
  require_values(momnet::permute(v, {2, 0, 1}), reference_permute(x, {2, 0, 1}), 0.0);
  require_values(momnet::permute(v, {0, 1, 2}), x, 0.0);
  require_values(momnet::transpose(v, 0, -1), reference_permute(x, {2, 1, 0}), 0.0);
  const Tensor<double> y = rounded<T>(uniform(Shape{2, 3, 2, 3}, 851));
  const Var<T> vy = tape.constant(to_precision<T>(y));
  require_values(momnet::permute(vy, {3, 1, 0, 2}), reference_permute(y, {3, 1, 0, 2}), 0.0);
  require_values(momnet::transpose(vy, 1, 2), reference_permute(y, {0, 2, 1, 3}), 0.0);
  require_values(momnet::transpose(vy, 2, 2), y, 0.0);
}

TEMPLATE_TEST_CASE("cross_entropy skips ignore_index rows and reduces by mean or sum, as a direct loop",
                   "[ops][axes][values][loss]", float, double) {
  using T = TestType;
  const Tensor<double> logits = rounded<T>(uniform(Shape{4, 3}, 900, -2.0, 2.0));
  const std::vector<int> labels{2, -100, 0, 1};
  double total = 0.0;
  for (Index i : {0, 2, 3}) {
    double z = 0.0;
    for (Index j = 0; j < 3; ++j) z += std::exp(logits.data()[i * 3 + j]);
    total -= std::log(std::exp(logits.data()[i * 3 + labels[static_cast<std::size_t>(i)]]) / z);
  }
  Tape<T> tape;
  const Var<T> v = tape.variable(to_precision<T>(logits));
  const Var<T> mean_loss = momnet::cross_entropy(v, labels);
  CHECK(static_cast<double>(mean_loss.item()) == Approx(total / 3.0).epsilon(tolerance<T>()));
  momnet::CrossEntropyOptions sum_options;
  sum_options.reduction = momnet::Reduction::sum;
  CHECK(static_cast<double>(momnet::cross_entropy(v, labels, sum_options).item()) ==
        Approx(total).epsilon(tolerance<T>()));
  // The ignored row gets no gradient.
  tape.backward(mean_loss);
  CHECK(v.grad().row(1).isZero(0));
  CHECK_FALSE(v.grad().row(0).isZero(0));
}

// ---- max and argmax details ------------------------------------------------------------

TEST_CASE("max and argmax take the first maximum along the axis; max's gradient goes only to it",
          "[ops][axes][values]") {
  Tape<double> tape;
  Tensor<double> t(Shape{2, 3});
  const double values[] = {1, 3, 3, 2, 2, 1};
  std::copy(values, values + 6, t.data());
  const Var<double> x = tape.variable(t);
  const Var<double> m = momnet::max(x, 1);
  CHECK(m.shape() == Shape{2});
  CHECK(m.data()[0] == 3.0);
  CHECK(m.data()[1] == 2.0);
  const Tensor<std::int64_t> am = momnet::argmax(x, 1);
  CHECK(am.data()[0] == 1);
  CHECK(am.data()[1] == 0);
  tape.backward(momnet::sum(m));
  const double expected[] = {0, 1, 0, 1, 0, 0};
  for (int i = 0; i < 6; ++i) CHECK(x.grad().data()[i] == expected[i]);

  // Along axis 0, column 0 is a tie: the first row wins.
  const Tensor<std::int64_t> am0 = momnet::argmax(t, 0, true);
  CHECK(am0.shape() == Shape{1, 3});
  CHECK(am0.data()[0] == 1);
  CHECK(am0.data()[1] == 0);
  CHECK(am0.data()[2] == 0);
  t.data()[3] = 1.0;
  CHECK(momnet::argmax(t, 0).data()[0] == 0);
}

TEST_CASE("max and argmax propagate NaN as PyTorch does; argmax works on Tensors of every rank",
          "[ops][axes][values]") {
  Tape<double> tape;
  Tensor<double> t(Shape{1, 3});
  t.data()[0] = 1.0;
  t.data()[1] = std::numeric_limits<double>::quiet_NaN();
  t.data()[2] = 2.0;
  CHECK(std::isnan(momnet::max(tape.constant(t), 1).item()));
  CHECK(momnet::argmax(t, -1).data()[0] == 1);
  // A rank-1 Tensor reduces to a rank-0 index; a rank-4 one to rank 3.
  const Tensor<std::int64_t> scalar = momnet::argmax(uniform(Shape{7}, 950), 0);
  CHECK(scalar.shape() == Shape{});
  CHECK(scalar.size() == 1);
  const Tensor<double> x4 = uniform(Shape{2, 3, 2, 3}, 951);
  const Tensor<std::int64_t> am = momnet::argmax(x4, 2);
  CHECK(am.shape() == Shape{2, 3, 3});
  const std::vector<double> expected = reference_reduce(x4, 2, Kind::argmax);
  for (std::size_t i = 0; i < expected.size(); ++i) CHECK(am.data()[i] == static_cast<std::int64_t>(expected[i]));
  Tensor<std::int64_t> copy = am;  // Tensor<std::int64_t> copies and reads as a matrix
  CHECK(copy.matrix().rows() == 2);
}

TEST_CASE("axis operations give the same bits when called twice, on different tapes", "[ops][axes][values]") {
  const Tensor<float> x = to_precision<float>(uniform(Shape{2, 3, 5, 7}, 960, -3.0, 3.0));
  const Tensor<float> seed = to_precision<float>(uniform(Shape{2, 3, 5, 7}, 961));
  auto run = [&](int axis) {
    Tape<float> tape;
    const Var<float> v = tape.variable(x);
    const Var<float> y = momnet::softmax(v, axis) + momnet::log_softmax(v, axis);
    const Var<float> r = momnet::logsumexp(y, axis, true) * momnet::sum(y, axis, true);
    const Var<float> out = momnet::concat(momnet::permute(r, {0, 3, 2, 1}), momnet::permute(r, {0, 3, 2, 1}), 1);
    const Var<float> loss = momnet::sum(momnet::mul(momnet::slice(out, 1, 1, 1), momnet::slice(out, 0, 1, 1))) +
                            momnet::sum(momnet::mean(y, axis, true)) + momnet::sum(momnet::max(y, axis));
    tape.backward(loss);
    std::vector<float> bits(y.data(), y.data() + y.size());
    bits.insert(bits.end(), v.grad().data(), v.grad().data() + v.size());
    return bits;
  };
  for (int axis : {0, 1, 2, -1}) {
    INFO("axis " << axis);
    const std::vector<float> first = run(axis);
    const std::vector<float> second = run(axis);
    CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)) == 0);
  }
}

// ---- errors ------------------------------------------------------------------------------

TEST_CASE("axis operations refuse axes outside the shape, naming the operation and the shape",
          "[ops][axes][errors]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{2, 3}));
  REQUIRE_THROWS_EXACT(momnet::sum(x, 2), std::out_of_range, "momnet::sum", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::mean(x, -3), std::out_of_range, "momnet::mean", "axis -3", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::max(x, 5, true), std::out_of_range, "momnet::max", "axis 5", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::argmax(x, 2), std::out_of_range, "momnet::argmax", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::argmax(Tensor<double>(Shape{2, 3}), -3), std::out_of_range, "momnet::argmax",
                       "axis -3", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::logsumexp(x, 2), std::out_of_range, "momnet::logsumexp", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::softmax(x, 2), std::out_of_range, "momnet::softmax", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::log_softmax(x, -3), std::out_of_range, "momnet::log_softmax", "axis -3", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::concat(x, x, 2), std::out_of_range, "momnet::concat", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::slice(x, 0, 1, -3), std::out_of_range, "momnet::slice", "axis -3", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::transpose(x, 0, 2), std::out_of_range, "momnet::transpose", "axis 2", "[2, 3]");
  REQUIRE_THROWS_EXACT(momnet::permute(x, {0, 2}), std::out_of_range, "momnet::permute", "axis 2", "[2, 3]");
}

TEST_CASE("a rank-0 value has no axes: every axis operation throws, naming itself and the shape",
          "[ops][axes][errors]") {
  Tape<double> tape;
  const Var<double> s = tape.variable(Tensor<double>(Shape{}));
  const char* rank0 = "outside shape [] (rank 0)";
  REQUIRE_THROWS_EXACT(momnet::sum(s, 0), std::out_of_range, "momnet::sum", rank0);
  REQUIRE_THROWS_EXACT(momnet::mean(s, -1), std::out_of_range, "momnet::mean", rank0);
  REQUIRE_THROWS_EXACT(momnet::max(s, 0), std::out_of_range, "momnet::max", rank0);
  REQUIRE_THROWS_EXACT(momnet::argmax(s, 0), std::out_of_range, "momnet::argmax", rank0);
  REQUIRE_THROWS_EXACT(momnet::logsumexp(s, 0), std::out_of_range, "momnet::logsumexp", rank0);
  REQUIRE_THROWS_EXACT(momnet::softmax(s), std::out_of_range, "momnet::softmax", rank0);
  REQUIRE_THROWS_EXACT(momnet::log_softmax(s), std::out_of_range, "momnet::log_softmax", rank0);
  REQUIRE_THROWS_EXACT(momnet::concat(s, s), std::out_of_range, "momnet::concat", rank0);
  REQUIRE_THROWS_EXACT(momnet::slice(s, 0, 1), std::out_of_range, "momnet::slice", rank0);
  REQUIRE_THROWS_EXACT(momnet::transpose(s, 0, 0), std::out_of_range, "momnet::transpose", rank0);
  REQUIRE_THROWS_EXACT(momnet::permute(s, {0}), std::invalid_argument, "momnet::permute", "1 axes", "[] of rank 0");
  // The all-element reductions and an empty permutation still take a scalar.
  CHECK(momnet::sum(s).shape() == Shape{});
  CHECK(momnet::permute(s, {}).shape() == Shape{});
}

TEST_CASE("concat, slice and permute refuse mismatched shapes and bad ranges", "[ops][axes][errors]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };
  SECTION("concat: rank and the dimensions other than the axis must agree") {
    REQUIRE_THROWS_EXACT(momnet::concat(var(Shape{2, 3}), var(Shape{6})), std::invalid_argument, "momnet::concat",
                         "ranks differ", "[2, 3] and [6]");
    REQUIRE_THROWS_EXACT(momnet::concat(var(Shape{2, 3, 4}), var(Shape{2, 2, 4}), -1), std::invalid_argument,
                         "momnet::concat", "dimensions other than axis -1 differ", "[2, 3, 4] and [2, 2, 4]");
    REQUIRE_THROWS_EXACT(momnet::concat(std::vector<Var<double>>{var(Shape{2, 3}), var(Shape{1, 3}), var(Shape{2, 4})}, 0),
                         std::invalid_argument, "momnet::concat", "other than axis 0", "[2, 3] and [2, 4]");
    REQUIRE_NOTHROW(momnet::concat(var(Shape{2, 3, 4}), var(Shape{2, 1, 4}), 1));
  }
  SECTION("slice: negative, past the end and overflowing ranges") {
    const Var<double> x = var(Shape{2, 5});
    constexpr Index big = std::numeric_limits<Index>::max();
    REQUIRE_THROWS_EXACT(momnet::slice(x, big, 2), std::invalid_argument, "momnet::slice",
                         "[" + std::to_string(big) + ", " + std::to_string(big) + " + 2)", "outside [2, 5]",
                         "length 5");
    REQUIRE_THROWS_EXACT(momnet::slice(x, 2, big), std::invalid_argument, "momnet::slice", "outside [2, 5]");
    REQUIRE_THROWS_EXACT(momnet::slice(x, 1, 2, 0), std::invalid_argument, "momnet::slice", "[1, 3) along axis 0",
                         "length 2");
    REQUIRE_THROWS_EXACT(momnet::slice(x, -1, 1, 0), std::invalid_argument, "momnet::slice", "[-1, 0)");
    REQUIRE_THROWS_EXACT(momnet::slice(x, 0, -1), std::invalid_argument, "momnet::slice", "[0, -1)");
    REQUIRE_THROWS_EXACT(momnet::slice(x, std::numeric_limits<Index>::lowest(), -1), std::invalid_argument,
                         "momnet::slice", "outside [2, 5]");
    REQUIRE_NOTHROW(momnet::slice(x, 5, 0));
    REQUIRE_NOTHROW(momnet::slice(x, 0, 2, 0));
  }
  SECTION("permute: one entry per axis, each axis once") {
    const Var<double> x = var(Shape{2, 3, 4});
    REQUIRE_THROWS_EXACT(momnet::permute(x, {1, 0}), std::invalid_argument, "momnet::permute", "2 axes",
                         "[2, 3, 4] of rank 3");
    REQUIRE_THROWS_EXACT(momnet::permute(x, {0, 1, -3}), std::invalid_argument, "momnet::permute",
                         "[0, 1, -3] names axis 0 twice", "[2, 3, 4]");
    REQUIRE_THROWS_EXACT(momnet::permute(x, {0, 1, 3}), std::out_of_range, "momnet::permute", "axis 3", "[2, 3, 4]");
  }
  SECTION("cross_entropy: labels outside the classes that are not ignore_index") {
    const Var<double> logits = var(Shape{2, 3});
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {0, -1}), std::invalid_argument, "momnet::cross_entropy",
                         "label -1 at index 1", "outside [0, 3)", "[2, 3]", "ignore_index -100");
    momnet::CrossEntropyOptions options;
    options.ignore_index = -1;
    REQUIRE_NOTHROW(momnet::cross_entropy(logits, {0, -1}, options));
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(logits, {0, -100}, options), std::invalid_argument,
                         "momnet::cross_entropy", "label -100 at index 1", "ignore_index -1");
    REQUIRE_THROWS_EXACT(momnet::cross_entropy(var(Shape{2, 0}), {-100, -100}), std::invalid_argument,
                         "momnet::cross_entropy", "at least one class", "[2, 0]");
  }
}

// ---- empty dimensions ----------------------------------------------------------------------

TEST_CASE("reductions over an empty axis: sum gives zeros, the others throw unless nothing is reduced",
          "[ops][axes][empty]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& shape) { return tape.variable(Tensor<double>(shape)); };
  const Var<double> x = var(Shape{3, 0});
  const Var<double> s = momnet::sum(x, 1);
  REQUIRE(s.shape() == Shape{3});
  for (Index i = 0; i < 3; ++i) CHECK(s.data()[i] == 0.0);
  CHECK(momnet::sum(x, -1, true).shape() == Shape{3, 1});
  CHECK(momnet::sum(x, 0).shape() == Shape{0});
  REQUIRE_THROWS_EXACT(momnet::mean(x, 1), std::invalid_argument, "momnet::mean", "axis 1 is empty", "[3, 0]");
  REQUIRE_THROWS_EXACT(momnet::max(x, -1), std::invalid_argument, "momnet::max", "axis -1 is empty", "[3, 0]");
  REQUIRE_THROWS_EXACT(momnet::argmax(x, 1), std::invalid_argument, "momnet::argmax", "axis 1 is empty", "[3, 0]");
  REQUIRE_THROWS_EXACT(momnet::logsumexp(x, 1), std::invalid_argument, "momnet::logsumexp", "axis 1 is empty",
                       "[3, 0]");
  // A batch of 0: nothing to reduce, an empty result.
  const Var<double> batch0 = var(Shape{0, 4});
  CHECK(momnet::mean(batch0, 1).shape() == Shape{0});
  CHECK(momnet::max(batch0, 1, true).shape() == Shape{0, 1});
  CHECK(momnet::logsumexp(batch0, -1).shape() == Shape{0});
  CHECK(momnet::argmax(batch0, 1).shape() == Shape{0});
  // ... but [4] reduced from 0 rows has slices to reduce over an empty axis (PyTorch: NaN).
  REQUIRE_THROWS_EXACT(momnet::mean(batch0, 0), std::invalid_argument, "momnet::mean", "axis 0 is empty", "[0, 4]");
  CHECK(momnet::sum(batch0, 0).array().isZero(0));
}

TEST_CASE("softmax of a batch of 0 is empty; softmax over an empty axis throws", "[ops][axes][empty]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{0, 10}));
  const Var<double> p = momnet::softmax(x);
  CHECK(p.shape() == Shape{0, 10});
  CHECK(momnet::log_softmax(x).shape() == Shape{0, 10});
  tape.backward(momnet::sum(p));  // a loss of 0 that depends on x
  CHECK(x.grad().size() == 0);
  const Var<double> e = tape.variable(Tensor<double>(Shape{2, 0, 3}));
  REQUIRE_THROWS_EXACT(momnet::softmax(e, 1), std::invalid_argument, "momnet::softmax", "axis 1 is empty",
                       "[2, 0, 3]");
  REQUIRE_THROWS_EXACT(momnet::log_softmax(e, -2), std::invalid_argument, "momnet::log_softmax",
                       "axis -2 is empty", "[2, 0, 3]");
  CHECK(momnet::softmax(e, 0).shape() == Shape{2, 0, 3});  // nothing to normalise
}

TEST_CASE("concat, slice and permute with empty dimensions", "[ops][axes][empty]") {
  Tape<double> tape;
  const Var<double> a = tape.variable(uniform(Shape{2, 3}, 970));
  const Var<double> none = tape.variable(Tensor<double>(Shape{2, 0}));
  const Var<double> c = momnet::concat(std::vector<Var<double>>{none, a, none});
  REQUIRE(c.shape() == Shape{2, 3});
  CHECK(c.value() == a.value());
  const Var<double> rows0 = tape.variable(Tensor<double>(Shape{0, 3}));
  CHECK(momnet::concat(rows0, a, 0).shape() == Shape{2, 3});
  CHECK(momnet::concat(rows0, rows0, 1).shape() == Shape{0, 6});
  CHECK(momnet::slice(a, 3, 0).shape() == Shape{2, 0});
  CHECK(momnet::slice(rows0, 1, 2).shape() == Shape{0, 2});
  CHECK(momnet::permute(rows0, {1, 0}).shape() == Shape{3, 0});
  CHECK(momnet::transpose(tape.variable(Tensor<double>(Shape{0, 2, 3})), 0, 2).shape() == Shape{3, 2, 0});
  tape.backward(momnet::sum(momnet::concat(c, momnet::slice(a, 0, 0))));
  CHECK(a.grad().isOnes(0));
}

TEST_CASE("losses of an empty batch, or of a batch whose every label is ignored, are 0 with zero gradient",
          "[ops][axes][empty][loss]") {
  Tape<double> tape;
  const Var<double> logits = tape.variable(uniform(Shape{3, 4}, 980));
  const Var<double> ignored = momnet::cross_entropy(logits, {-100, -100, -100});
  CHECK(ignored.item() == 0.0);
  const Var<double> empty = tape.variable(Tensor<double>(Shape{0, 4}));
  const Var<double> batch0 = momnet::cross_entropy(empty, {});
  CHECK(batch0.item() == 0.0);
  momnet::CrossEntropyOptions sum_options;
  sum_options.reduction = momnet::Reduction::sum;
  CHECK(momnet::cross_entropy(logits, {-100, -100, -100}, sum_options).item() == 0.0);
  const Var<double> e1 = tape.variable(Tensor<double>(Shape{0, 3}));
  const Var<double> e2 = tape.variable(Tensor<double>(Shape{0, 3}));
  const Var<double> squared = momnet::mse(e1, e2);
  CHECK(squared.item() == 0.0);
  tape.backward(ignored + batch0 + squared);
  CHECK(logits.grad().isZero(0));
  CHECK(empty.grad().size() == 0);
}
