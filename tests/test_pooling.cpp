// Pooling and flatten: max_pool2d, avg_pool2d, adaptive_avg_pool2d,
// global_avg_pool2d and flatten against direct loops written from PyTorch's
// documented formulas (float and double; kernel, stride, padding, dilation,
// ceil_mode, count_include_pad and divisor_override combined on rectangular
// and unbatched inputs, values and gradients), against numbers computed by
// PyTorch 1.13, max pooling's ties and NaNs, finite-difference gradients in
// double, the layers in a Sequential, and every error with its message.
#include <catch2/catch.hpp>

#include <momnet/layers/flatten.hpp>
#include <momnet/layers/pooling.hpp>
#include <momnet/momnet.hpp>
#include <momnet/ops/pool2d.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace {

using momnet::Pool2dOptions;
using momnet::Shape;
using momnet::Size2;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

// ---- direct loops from PyTorch's documentation (the reference) ----------------

// floor (or ceil) of (in + 2 p - d (k - 1) - 1) / s, plus 1; in ceil mode, one
// less when the last window would start past the input and its left padding.
Index documented_output(Index in, Index k, Index s, Index p, Index d, bool ceil_mode) {
  const double v = static_cast<double>(in + 2 * p - d * (k - 1) - 1) / static_cast<double>(s);
  Index out = static_cast<Index>(ceil_mode ? std::ceil(v) : std::floor(v)) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

struct Pooled {
  Shape shape;
  std::vector<double> values;
  // Reverse rule: (input element, weight) pairs for each output element.
  std::vector<std::vector<std::pair<Index, double>>> sources;
};

Size2 effective_stride(const Pool2dOptions& o) { return o.stride[0] == 0 && o.stride[1] == 0 ? o.kernel : o.stride; }

// Calls f(plane, oh, ow) over every output position, given the output size.
template <class F>
void for_each_output(Index planes, Index oh_n, Index ow_n, F f) {
  for (Index p = 0; p < planes; ++p) {
    for (Index oh = 0; oh < oh_n; ++oh) {
      for (Index ow = 0; ow < ow_n; ++ow) f(p, oh, ow);
    }
  }
}

// (A negative size, no window at all, reads as 0.)
Shape out_shape_of(const Shape& in, Index oh, Index ow) {
  return in.with_dim(-2, std::max<Index>(oh, 0)).with_dim(-1, std::max<Index>(ow, 0));
}
Index planes_of(const Shape& s) { return s.size() / (s.dim(-2) * s.dim(-1)); }

// Max over the kernel's taps that fall inside the input: NaN if any tap is NaN
// (the gradient then goes to the last NaN), else the largest value (the
// gradient to its first occurrence); -inf with no tap.
template <class T>
Pooled reference_max(const Tensor<T>& x, const Pool2dOptions& o) {
  const Shape& s = x.shape();
  const Index H = s.dim(-2), W = s.dim(-1);
  const Size2 st = effective_stride(o);
  const Index oh_n = documented_output(H, o.kernel[0], st[0], o.padding[0], o.dilation[0], o.ceil_mode);
  const Index ow_n = documented_output(W, o.kernel[1], st[1], o.padding[1], o.dilation[1], o.ceil_mode);
  Pooled r{out_shape_of(s, oh_n, ow_n), {}, {}};
  for_each_output(planes_of(s), oh_n, ow_n, [&](Index p, Index oh, Index ow) {
    std::vector<Index> taps;
    for (Index j = 0; j < o.kernel[0]; ++j) {
      for (Index i = 0; i < o.kernel[1]; ++i) {
        const Index ih = oh * st[0] - o.padding[0] + j * o.dilation[0];
        const Index iw = ow * st[1] - o.padding[1] + i * o.dilation[1];
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) taps.push_back(p * H * W + ih * W + iw);
      }
    }
    double value = -std::numeric_limits<double>::infinity();
    Index where = -1;
    for (Index t : taps) {
      if (std::isnan(static_cast<double>(x.data()[t]))) where = t;
    }
    if (where < 0 && !taps.empty()) {
      for (Index t : taps) value = std::max(value, static_cast<double>(x.data()[t]));
      for (Index t : taps) {
        if (static_cast<double>(x.data()[t]) == value) {
          where = t;
          break;
        }
      }
    }
    if (where >= 0) value = static_cast<double>(x.data()[where]);
    r.values.push_back(value);
    r.sources.push_back(where >= 0 ? std::vector<std::pair<Index, double>>{{where, 1.0}}
                                   : std::vector<std::pair<Index, double>>{});
  });
  return r;
}

// The mean over the kernel's taps: the sum of those inside the input divided
// by divisor_override, or the number of taps inside the padded input
// (count_include_pad), or the number inside the input.
template <class T>
Pooled reference_avg(const Tensor<T>& x, const Pool2dOptions& o) {
  const Shape& s = x.shape();
  const Index H = s.dim(-2), W = s.dim(-1);
  const Size2 st = effective_stride(o);
  const Index oh_n = documented_output(H, o.kernel[0], st[0], o.padding[0], 1, o.ceil_mode);
  const Index ow_n = documented_output(W, o.kernel[1], st[1], o.padding[1], 1, o.ceil_mode);
  Pooled r{out_shape_of(s, oh_n, ow_n), {}, {}};
  for_each_output(planes_of(s), oh_n, ow_n, [&](Index p, Index oh, Index ow) {
    Index padded_h = 0, padded_w = 0, inside_h = 0, inside_w = 0;
    for (Index j = 0; j < o.kernel[0]; ++j) {
      const Index ih = oh * st[0] - o.padding[0] + j;
      padded_h += ih < H + o.padding[0];
      inside_h += ih >= 0 && ih < H;
    }
    for (Index i = 0; i < o.kernel[1]; ++i) {
      const Index iw = ow * st[1] - o.padding[1] + i;
      padded_w += iw < W + o.padding[1];
      inside_w += iw >= 0 && iw < W;
    }
    const double divisor = o.divisor_override != 0 ? static_cast<double>(o.divisor_override)
                           : o.count_include_pad   ? static_cast<double>(padded_h * padded_w)
                                                   : static_cast<double>(inside_h * inside_w);
    double sum = 0;
    std::vector<std::pair<Index, double>> sources;
    for (Index j = 0; j < o.kernel[0]; ++j) {
      for (Index i = 0; i < o.kernel[1]; ++i) {
        const Index ih = oh * st[0] - o.padding[0] + j, iw = ow * st[1] - o.padding[1] + i;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
        const Index t = p * H * W + ih * W + iw;
        sum += static_cast<double>(x.data()[t]);
        sources.emplace_back(t, 1.0 / divisor);
      }
    }
    r.values.push_back(sum / divisor);
    r.sources.push_back(std::move(sources));
  });
  return r;
}

// Window o of `out` over `in`: [floor(o in / out), ceil((o + 1) in / out)).
std::pair<Index, Index> adaptive_window(Index o, Index in, Index out) {
  return {static_cast<Index>(std::floor(static_cast<double>(o * in) / static_cast<double>(out))),
          static_cast<Index>(std::ceil(static_cast<double>((o + 1) * in) / static_cast<double>(out)))};
}

template <class T>
Pooled reference_adaptive(const Tensor<T>& x, Size2 out) {
  const Shape& s = x.shape();
  const Index H = s.dim(-2), W = s.dim(-1);
  Pooled r{out_shape_of(s, out[0], out[1]), {}, {}};
  for_each_output(planes_of(s), out[0], out[1], [&](Index p, Index oh, Index ow) {
    const auto rows = adaptive_window(oh, H, out[0]), cols = adaptive_window(ow, W, out[1]);
    const double count = static_cast<double>((rows.second - rows.first) * (cols.second - cols.first));
    double sum = 0;
    std::vector<std::pair<Index, double>> sources;
    for (Index ih = rows.first; ih < rows.second; ++ih) {
      for (Index iw = cols.first; iw < cols.second; ++iw) {
        sum += static_cast<double>(x.data()[p * H * W + ih * W + iw]);
        sources.emplace_back(p * H * W + ih * W + iw, 1.0 / count);
      }
    }
    r.values.push_back(sum / count);
    r.sources.push_back(std::move(sources));
  });
  return r;
}

// ---- helpers --------------------------------------------------------------------

// Values on a grid of 0.25 in [-2, 2]: ties are common.
template <class T>
Tensor<T> grid_values(const Shape& shape, std::uint64_t seed) {
  Tensor<T> t(shape);
  momnet::Rng rng(seed);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(std::floor(rng.uniform(-8.0, 9.0)) * 0.25);
  return t;
}

// Distinct values 0.05 apart, shuffled: no finite-difference step crosses a tie.
Tensor<double> distinct_values(const Shape& shape, std::uint64_t seed) {
  Tensor<double> t(shape);
  std::vector<Index> order(static_cast<std::size_t>(t.size()));
  std::iota(order.begin(), order.end(), Index{0});
  momnet::Rng rng(seed);
  for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<double>(order[static_cast<std::size_t>(i)]) * 0.05 - 1.0;
  return t;
}

// A scalar whose gradient with respect to every element of y is 1, finite even
// when y holds NaN (Tape::backward refuses a NaN loss).
template <class T>
Var<T> unit_probe(const Var<T>& y) {
  Tape<T>& tape = y.tape();
  T* out = tape.allocate(1);
  out[0] = T(0);
  const Index n = y.size();
  return tape.record_op({y}, Shape{}, out, [=](momnet::Gradients<T>& g) {
    if (T* gy = g.input(0)) {
      for (Index i = 0; i < n; ++i) gy[i] += g.output(0)[0];
    }
  });
}

enum class Kind { max, avg };

// Runs the operation on x, checks its values against `expected`, then its
// reverse rule: with output gradient R, x's gradient must be the sum of R
// over each output's sources. Records on `tape` and releases what it recorded
// (a fresh tape per call is slow under the sanitizers).
template <class T, class Op>
void check_against(Tape<T>& tape, const Tensor<T>& input, const Pooled& expected, Op op) {
  const momnet::TapeScope<T> scope(tape);
  const Var<T> x = tape.variable(input);
  const Var<T> y = op(x);
  REQUIRE(y.shape() == expected.shape);
  const double tolerance = std::is_same<T, float>::value ? 2e-6 : 1e-14;
  // The first element that differs (one assertion per call keeps the sanitizer build quick).
  const auto first_mismatch = [tolerance](const T* got, const std::vector<double>& want) {
    for (std::size_t i = 0; i < want.size(); ++i) {
      const double g = static_cast<double>(got[i]), w = want[i];
      const bool same = std::isinf(w) ? g == w : std::abs(g - w) <= tolerance * std::max(1.0, std::abs(w));
      if (!same) return "element " + std::to_string(i) + ": " + std::to_string(g) + " vs " + std::to_string(w);
    }
    return std::string();
  };
  REQUIRE(first_mismatch(y.data(), expected.values) == "");
  Tensor<T> weights(y.shape());
  momnet::Rng rng(99);
  for (Index i = 0; i < weights.size(); ++i) weights.data()[i] = static_cast<T>(rng.uniform(-1.0, 1.0));
  tape.backward(momnet::sum(momnet::mul(y, tape.constant(weights))));
  std::vector<double> want(static_cast<std::size_t>(input.size()), 0.0);
  for (std::size_t o = 0; o < expected.sources.size(); ++o) {
    for (const auto& [index, weight] : expected.sources[o]) {
      want[static_cast<std::size_t>(index)] += weight * static_cast<double>(weights.data()[o]);
    }
  }
  INFO("input gradient");
  REQUIRE(first_mismatch(x.grad().data(), want) == "");
}

template <class T>
std::string config_string(const Shape& shape, const Pool2dOptions& o) {
  using momnet::detail::size2_string;
  return shape.to_string() + " kernel " + size2_string(o.kernel) + " stride " + size2_string(o.stride) +
         " padding " + size2_string(o.padding) + " dilation " + size2_string(o.dilation) +
         (o.ceil_mode ? " ceil" : "") + (o.count_include_pad ? " include_pad" : "") + " divisor " +
         std::to_string(o.divisor_override) + (std::is_same<T, float>::value ? " (float)" : " (double)");
}

}  // namespace

TEMPLATE_TEST_CASE("max_pool2d and avg_pool2d match direct loops over every option combination", "[pooling]", float,
                   double) {
  using T = TestType;
  // Rectangular, unbatched and wide inputs (float skips the last: the sanitizer build must stay quick).
  std::vector<Shape> shapes = {Shape{2, 2, 7, 5}, Shape{2, 8, 6}, Shape{1, 2, 4, 9}};
  if (std::is_same<T, float>::value) shapes.pop_back();
  const std::vector<Size2> kernels = {{1, 1}, {2, 2}, {3, 2}, {2, 3}, {3, 3}};
  const std::vector<Size2> strides = {{0, 0}, {1, 1}, {2, 1}, {1, 3}, {3, 2}};
  const std::vector<Size2> paddings = {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
  const std::vector<Size2> dilations = {{1, 1}, {2, 3}};
  Tape<T> tape;
  int checked = 0, refused = 0, ceil_trimmed = 0;
  for (std::size_t si = 0; si < shapes.size(); ++si) {
    const Tensor<T> input = grid_values<T>(shapes[si], 10 + si);
    const Index H = shapes[si].dim(-2);
    for (const Size2& kernel : kernels) {
      for (const Size2& stride : strides) {
        for (const Size2& padding : paddings) {
          if (padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2) continue;
          for (bool ceil_mode : {false, true}) {
            Pool2dOptions o(kernel);
            o.stride = stride;
            o.padding = padding;
            o.ceil_mode = ceil_mode;
            const Size2 st = effective_stride(o);
            // Cases where ceil_mode's rule on the last window matters.
            const double v = static_cast<double>(H + 2 * padding[0] - kernel[0]) / static_cast<double>(st[0]);
            ceil_trimmed += ceil_mode && static_cast<Index>(std::ceil(v)) * st[0] >= H + padding[0];
            for (const Size2& dilation : dilations) {
              o.dilation = dilation;
              const Pooled expected = reference_max(input, o);
              INFO("max_pool2d " << config_string<T>(shapes[si], o));
              if (expected.shape.dim(-2) < 1 || expected.shape.dim(-1) < 1) {
                const momnet::TapeScope<T> scope(tape);
                REQUIRE_THROWS_AS(momnet::max_pool2d(tape.constant(input), o), std::invalid_argument);
                ++refused;
                continue;
              }
              check_against(tape, input, expected, [&](const Var<T>& x) { return momnet::max_pool2d(x, o); });
              ++checked;
            }
            o.dilation = {1, 1};
            // Each divisor rule: the padded window, the window inside the input, an override.
            for (int rule = 0; rule < 3; ++rule) {
              o.count_include_pad = rule == 0;
              o.divisor_override = rule == 2 ? 5 : 0;
              const Pooled expected = reference_avg(input, o);
              INFO("avg_pool2d " << config_string<T>(shapes[si], o));
              if (expected.shape.dim(-2) < 1 || expected.shape.dim(-1) < 1) {
                const momnet::TapeScope<T> scope(tape);
                REQUIRE_THROWS_AS(momnet::avg_pool2d(tape.constant(input), o), std::invalid_argument);
                ++refused;
                continue;
              }
              check_against(tape, input, expected, [&](const Var<T>& x) { return momnet::avg_pool2d(x, o); });
              ++checked;
            }
          }
        }
      }
    }
  }
  CHECK(checked > 1000 * static_cast<int>(shapes.size()) / 3);
  CHECK(refused > 0);
  CHECK(ceil_trimmed > 0);
}

TEST_CASE("Output sizes equal PyTorch's, including ceil_mode's last-window rule", "[pooling]") {
  // {in, kernel, stride, padding, dilation, ceil_mode, out} computed with PyTorch 1.13's F.max_pool2d.
  struct Row {
    Index in, k, s, p, d;
    bool ceil_mode;
    Index out;
  };
  const std::vector<Row> rows = {
      {5, 2, 2, 0, 1, true, 3},  {5, 2, 2, 0, 1, false, 2}, {3, 2, 2, 1, 1, true, 2},  {4, 3, 2, 1, 1, true, 3},
      {6, 3, 2, 1, 1, true, 4},  {2, 3, 2, 0, 1, true, 1},  {7, 3, 3, 1, 2, true, 3},  {7, 3, 3, 1, 2, false, 2},
      {10, 4, 3, 2, 1, true, 4}, {10, 4, 3, 2, 2, true, 4}, {9, 2, 4, 1, 3, true, 3},  {1, 1, 1, 0, 1, false, 1},
      {6, 1, 5, 0, 1, true, 2}};
  for (const Row& r : rows) {
    INFO("in " << r.in << " kernel " << r.k << " stride " << r.s << " padding " << r.p << " dilation " << r.d
               << (r.ceil_mode ? " ceil" : ""));
    CHECK(momnet::kernels::pool_output_size(r.in, r.k, r.s, r.p, r.d, r.ceil_mode) == r.out);
    CHECK(documented_output(r.in, r.k, r.s, r.p, r.d, r.ceil_mode) == r.out);
    Tape<double> tape;
    const Var<double> x = tape.constant(Tensor<double>(Shape{1, 1, r.in, 2}));
    Pool2dOptions o({r.k, 1});
    o.stride = {r.s, 1};
    o.padding = {r.p, 0};
    o.dilation = {r.d, 1};
    o.ceil_mode = r.ceil_mode;
    CHECK(momnet::max_pool2d(x, o).shape() == Shape{1, 1, r.out, 2});
    if (r.d == 1) CHECK(momnet::avg_pool2d(x, o).shape() == Shape{1, 1, r.out, 2});
  }
  // A kernel past the input: floor mode has no window, ceil mode one clipped window.
  Tape<double> tape;
  const Var<double> x = tape.constant(momnet_test::uniform(Shape{1, 1, 2, 2}, 4));
  REQUIRE_THROWS_AS(momnet::max_pool2d(x, {3, 3}, {2, 2}), std::invalid_argument);
  const Var<double> y = momnet::avg_pool2d(x, {3, 3}, {2, 2}, {0, 0}, true);
  REQUIRE(y.shape() == Shape{1, 1, 1, 1});
  // The window is cut at the input's end (no padding): the divisor is 4, not 9.
  CHECK(y.item() == Approx(x.array().sum() / 4).epsilon(1e-15));
}

TEST_CASE("Pooling matches numbers computed by PyTorch 1.13", "[pooling]") {
  const std::vector<double> values = {
      2.5,  -1.75, 0.5,  2.25, 3.5,   4.25,  -2.5, -2.25, -1.5, -0.25, 1.5,  3.75,  -0.5, 2.75,  -0.5, 3.75, 1.5, -0.25,
      -1.5, -2.25, -2.5, -2.25, -1.5, -0.25, 1.5,  3.75,  -0.5, 2.75,  -0.5, 3.75,  1.5,  -0.25, -1.5, -2.25, -2.5};
  Tensor<double> input(Shape{1, 1, 5, 7});
  std::copy(values.begin(), values.end(), input.data());
  Tape<double> tape;
  const Var<double> x = tape.constant(input);
  const auto check = [](const Var<double>& y, const std::vector<double>& want) {
    REQUIRE(y.size() == static_cast<Index>(want.size()));
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(y.data()[i] == Approx(want[i]).epsilon(1e-14).margin(1e-15));
  };
  // F.avg_pool2d(x, (3, 2), (2, 3), (1, 1), ceil_mode=True, count_include_pad=True / False)
  check(momnet::avg_pool2d(x, {3, 2}, {2, 3}, {1, 1}, true, true),
        {0.041666666666666664, 0.6666666666666666, 0.6666666666666666, -0.8333333333333334, 0.625,
         -0.041666666666666664, -0.4583333333333333, 0.4166666666666667, -0.4166666666666667});
  check(momnet::avg_pool2d(x, {3, 2}, {2, 3}, {1, 1}, true, false),
        {0.125, 1.0, 1.0, -1.6666666666666667, 0.625, -0.041666666666666664, -1.375, 0.625, -0.625});
  // F.avg_pool2d(x, (2, 3), (2, 2), (1, 0), divisor_override=5)
  check(momnet::avg_pool2d(x, {2, 3}, {2, 2}, {1, 0}, false, true, 5),
        {0.25, 1.25, 1.05, 0.15, 0.95, -0.05, 0.15, 0.95, -0.05});
  // F.max_pool2d(x, (2, 3), (2, 1), (1, 1), (2, 1), ceil_mode=True)
  check(momnet::max_pool2d(x, {2, 3}, {2, 1}, {1, 1}, {2, 1}, true),
        {-1.5, -0.25, 1.5, 3.75, 3.75, 3.75, 2.75, -1.5, -0.25, 1.5, 3.75, 3.75, 3.75, 2.75, -1.5, -0.25, 1.5, 3.75,
         3.75, 3.75, 2.75});
  // F.adaptive_avg_pool2d(x, (3, 4))
  check(momnet::adaptive_avg_pool2d(x, {3, 4}),
        {-0.75, 0.125, 2.4583333333333335, 1.0, -0.7083333333333334, 0.5, 0.611111111111111, -0.041666666666666664,
         -0.125, 0.7916666666666666, 0.125, -0.625});
}

TEMPLATE_TEST_CASE("max_pool2d: ties go to the first maximum, NaN propagates to the last NaN, as in PyTorch",
                   "[pooling]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  // One window over a row of four: the output and which input receives the gradient.
  const auto run = [](const std::vector<T>& row, Size2 kernel, Size2 stride, Size2 padding, Size2 dilation) {
    Tape<T> tape;
    Tensor<T> input(Shape{1, 1, 1, static_cast<Index>(row.size())});
    std::copy(row.begin(), row.end(), input.data());
    const Var<T> x = tape.variable(input);
    const Var<T> y = momnet::max_pool2d(x, kernel, stride, padding, dilation);
    tape.backward(unit_probe(y));
    std::vector<T> out(y.data(), y.data() + y.size());
    std::vector<T> grad(x.grad().data(), x.grad().data() + x.size());
    return std::make_pair(out, grad);
  };
  auto [tie, tie_grad] = run({T(2), T(5), T(5), T(1)}, {1, 4}, {0, 0}, {0, 0}, {1, 1});
  CHECK(tie == std::vector<T>{T(5)});
  CHECK(tie_grad == std::vector<T>{T(0), T(1), T(0), T(0)});
  auto [with_nan, nan_grad] = run({T(1), nan, T(3), nan}, {1, 4}, {0, 0}, {0, 0}, {1, 1});
  CHECK(std::isnan(with_nan[0]));
  CHECK(nan_grad == std::vector<T>{T(0), T(0), T(0), T(1)});
  auto [lowest, lowest_grad] = run({-inf, -inf}, {1, 2}, {0, 0}, {0, 0}, {1, 1});
  CHECK(lowest == std::vector<T>{-inf});
  CHECK(lowest_grad == std::vector<T>{T(1), T(0)});
  // Padding never wins, even over -inf.
  auto [padded, padded_grad] = run({-inf, T(-7)}, {1, 2}, {1, 1}, {0, 1}, {1, 1});
  CHECK(padded == std::vector<T>{-inf, T(-7), T(-7)});
  CHECK(padded_grad == std::vector<T>{T(1), T(2)});
  // Dilation can step over the whole input: PyTorch gives -inf and no gradient.
  auto [skipped, skipped_grad] = run({T(4), T(6)}, {1, 2}, {1, 1}, {0, 1}, {1, 3});
  CHECK(skipped == std::vector<T>{-inf});
  CHECK(skipped_grad == std::vector<T>{T(0), T(0)});
  // A 2-D tie: the first in row-major scan order.
  Tape<T> tape;
  Tensor<T> flat(Shape{1, 2, 2});
  flat.array().setConstant(T(3));
  const Var<T> x = tape.variable(flat);
  tape.backward(momnet::sum(momnet::max_pool2d(x, {2, 2})));
  CHECK(x.grad()(0, 0) == T(1));
  CHECK(x.grad().sum() == T(1));
}

TEST_CASE("Pooling gradients pass the finite-difference check", "[pooling]") {
  SECTION("max_pool2d, distinct values, rectangular windows with padding, dilation and ceil_mode") {
    const auto result = momnet::check_gradients(
        [](Tape<double>&, const Vars& v) { return momnet::max_pool2d(v[0], {3, 2}, {2, 1}, {1, 1}, {1, 2}, true); },
        {distinct_values(Shape{2, 2, 6, 5}, 1)});
    INFO(result.worst);
    CHECK(result.passed);
  }
  SECTION("max_pool2d, unbatched") {
    const auto result = momnet::check_gradients(
        [](Tape<double>&, const Vars& v) { return momnet::max_pool2d(v[0], {2, 2}, {1, 1}); },
        {distinct_values(Shape{2, 4, 3}, 2)});
    INFO(result.worst);
    CHECK(result.passed);
  }
  SECTION("avg_pool2d, each divisor rule") {
    for (bool include_pad : {true, false}) {
      for (Index divisor : {Index{0}, Index{3}}) {
        const auto result = momnet::check_gradients(
            [&](Tape<double>&, const Vars& v) {
              return momnet::avg_pool2d(v[0], {3, 2}, {2, 2}, {1, 1}, true, include_pad, divisor);
            },
            {momnet_test::uniform(Shape{2, 2, 6, 5}, 3)});
        INFO(result.worst);
        CHECK(result.passed);
      }
    }
  }
  SECTION("adaptive_avg_pool2d with windows that overlap, and global_avg_pool2d") {
    for (Size2 out : {Size2{3, 2}, Size2{4, 7}, Size2{1, 1}}) {
      const auto result = momnet::check_gradients(
          [&](Tape<double>&, const Vars& v) { return momnet::adaptive_avg_pool2d(v[0], out); },
          {momnet_test::uniform(Shape{2, 1, 7, 5}, 5)});
      INFO(result.worst);
      CHECK(result.passed);
    }
    const auto result = momnet::check_gradients(
        [](Tape<double>&, const Vars& v) { return momnet::global_avg_pool2d(v[0]); },
        {momnet_test::uniform(Shape{3, 4, 5}, 6)});
    INFO(result.worst);
    CHECK(result.passed);
  }
}

TEMPLATE_TEST_CASE("adaptive_avg_pool2d tiles non-divisible sizes as PyTorch does; global_avg_pool2d is its (1, 1)",
                   "[pooling]", float, double) {
  using T = TestType;
  const Tensor<T> input = grid_values<T>(Shape{2, 3, 7, 5}, 8);
  Tape<T> tape;
  for (Size2 out : {Size2{3, 2}, Size2{7, 5}, Size2{4, 4}, Size2{9, 11}, Size2{1, 5}}) {
    INFO("output " << momnet::detail::size2_string(out));
    check_against(tape, input, reference_adaptive(input, out),
                  [&](const Var<T>& x) { return momnet::adaptive_avg_pool2d(x, out); });
  }
  // 7 over 3: [0, 3), [2, 5), [4, 7).
  CHECK(adaptive_window(1, 7, 3) == std::make_pair(Index{2}, Index{5}));
  const Var<T> x = tape.constant(input);
  const Var<T> global = momnet::global_avg_pool2d(x);
  REQUIRE(global.shape() == Shape{2, 3, 1, 1});
  const Var<T> adaptive = momnet::adaptive_avg_pool2d(x, {1, 1});
  CHECK(std::equal(global.data(), global.data() + global.size(), adaptive.data()));
  CHECK(momnet::global_avg_pool2d(tape.constant(grid_values<T>(Shape{3, 4, 2}, 9))).shape() == Shape{3, 1, 1});
  // As PyTorch: an output size of 0 gives an empty value, as does an empty batch.
  CHECK(momnet::adaptive_avg_pool2d(x, {0, 4}).shape() == Shape{2, 3, 0, 4});
  CHECK(momnet::max_pool2d(tape.constant(Tensor<T>(Shape{0, 3, 4, 4})), {2, 2}).shape() == Shape{0, 3, 2, 2});
  // H * W of an empty batch need not fit an index.
  const Index huge = Index{1} << 40;
  const Var<T> none = tape.variable(Tensor<T>(Shape{0, 1, huge, huge}));
  const Var<T> pooled = momnet::avg_pool2d(none, {2, 2});
  CHECK(pooled.shape() == Shape{0, 1, huge / 2, huge / 2});
  tape.backward(momnet::sum(momnet::max_pool2d(pooled, {1, 1})));
  CHECK(momnet::adaptive_avg_pool2d(none, {3, 3}).shape() == Shape{0, 1, 3, 3});
}

TEST_CASE("flatten merges start_dim..end_dim into one dimension, as a view", "[pooling][flatten]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(momnet_test::uniform(Shape{2, 3, 4, 5}, 11));
  CHECK(momnet::flatten(x).shape() == Shape{2, 60});
  CHECK(momnet::flatten(x, 0).shape() == Shape{120});
  CHECK(momnet::flatten(x, 1, 2).shape() == Shape{2, 12, 5});
  CHECK(momnet::flatten(x, -3, -2).shape() == Shape{2, 12, 5});
  CHECK(momnet::flatten(x, 2, 2).shape() == Shape{2, 3, 4, 5});
  CHECK(momnet::flatten(x, 0, -2).shape() == Shape{24, 5});
  CHECK(momnet::flatten(x).data() == x.data());  // no copy
  CHECK(momnet::flatten(tape.constant(Tensor<double>(Shape{})), 0).shape() == Shape{1});
  CHECK(momnet::flatten(tape.constant(Tensor<double>(Shape{4})), 0).shape() == Shape{4});
  CHECK(momnet::flatten(tape.constant(Tensor<double>(Shape{3, 0, 2}))).shape() == Shape{3, 0});
  const auto result = momnet::check_gradients(
      [](Tape<double>&, const Vars& v) { return momnet::mul(momnet::flatten(v[0], 1, 2), momnet::flatten(v[0], 1, 2)); },
      {momnet_test::uniform(Shape{2, 2, 3}, 12)});
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("Pooling and Flatten layers compose in a Sequential and name no state", "[pooling][layers]") {
  momnet::Rng rng(13);
  momnet::Sequential<double> model;
  model.add(momnet::MaxPool2d<double>({2, 2}, {1, 1}, {1, 1}));
  model.add(momnet::AvgPool2d<double>({2, 2}, {2, 2}, {0, 0}, true, false));
  model.add(momnet::AdaptiveAvgPool2d<double>({2, 3}));
  model.add(momnet::Flatten<double>());
  model.add(momnet::Linear<double>(12, 3, rng));
  std::vector<std::string> names;
  for (const auto& entry : momnet::named_parameters(model)) names.push_back(entry.first);
  CHECK(names == std::vector<std::string>{"4.weight", "4.bias"});
  CHECK(momnet::named_buffers(model).empty());

  const Tensor<double> input = distinct_values(Shape{2, 2, 5, 6}, 14);
  Tape<double> tape;
  const Var<double> x = tape.constant(input);
  const Var<double> y = model(tape, x);
  REQUIRE(y.shape() == Shape{2, 3});
  auto& fc = model.get<momnet::Linear<double>>(4);
  const Var<double> direct = momnet::linear(
      momnet::flatten(momnet::adaptive_avg_pool2d(
          momnet::avg_pool2d(momnet::max_pool2d(x, {2, 2}, {1, 1}, {1, 1}), {2, 2}, {2, 2}, {0, 0}, true, false),
          {2, 3})),
      tape.param(fc.weight()), tape.param(fc.bias()));
  CHECK(std::equal(y.data(), y.data() + y.size(), direct.data()));

  const auto result = momnet::check_gradients([&](Tape<double>& t, const Vars& v) { return model(t, v[0]); },
                                              {input}, momnet::parameters_of(model));
  INFO(result.worst);
  CHECK(result.passed);

  momnet::GlobalAvgPool2d<double> global;
  momnet::AdaptiveAvgPool2d<double> one({1, 1});
  const Var<double> g = global.forward(tape, x), a = one.forward(tape, x);
  CHECK(g.shape() == Shape{2, 2, 1, 1});
  CHECK(std::equal(g.data(), g.data() + g.size(), a.data()));
  const Pool2dOptions options = momnet::MaxPool2d<double>({3, 2}, {1, 2}).options();
  CHECK(options.kernel == Size2{3, 2});
  CHECK(options.stride == Size2{1, 2});
}

TEST_CASE("Pooling and flatten refuse bad arguments with messages naming the function and the values",
          "[pooling][errors]") {
  using std::invalid_argument;
  Tape<double> tape;
  const Var<double> x = tape.constant(Tensor<double>(Shape{1, 1, 2, 2}));
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(tape.constant(Tensor<double>(Shape{3, 4})), {1, 1}), invalid_argument,
                       "momnet::max_pool2d: expected an input of rank 4 [N, C, H, W] or 3 [C, H, W], got [3, 4]");
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(tape.constant(Tensor<double>(Shape{2})), {1, 1}), invalid_argument,
                       "momnet::avg_pool2d: expected an input of rank 4", "got [2]");
  REQUIRE_THROWS_EXACT(momnet::global_avg_pool2d(tape.constant(Tensor<double>(Shape{4}))), invalid_argument,
                       "momnet::global_avg_pool2d: expected an input of rank 4", "got [4]");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {0, 2}), invalid_argument, "momnet::max_pool2d: kernel must lie in [1, ",
                       "got (0, 2)");
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(x, {2, -1}), invalid_argument, "momnet::avg_pool2d: kernel must lie in [1, ",
                       "got (2, -1)");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {1, 1}, {0, 1}), invalid_argument,
                       "momnet::max_pool2d: stride must lie in [1, ", "(or be (0, 0): the kernel), got (0, 1)");
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(x, {1, 1}, {-1, -1}), invalid_argument, "momnet::avg_pool2d: stride",
                       "got (-1, -1)");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {3, 3}, {1, 1}, {2, 0}), invalid_argument,
                       "momnet::max_pool2d: padding must lie between 0 and half the kernel, got padding (2, 0) for "
                       "kernel (3, 3)");
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(x, {2, 2}, {1, 1}, {0, -1}), invalid_argument,
                       "momnet::avg_pool2d: padding must lie between 0 and half the kernel, got padding (0, -1)");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {1, 1}, {1, 1}, {0, 0}, {1, 0}), invalid_argument,
                       "momnet::max_pool2d: dilation must lie in [1, ", "got (1, 0)");
  Pool2dOptions dilated({1, 1});
  dilated.dilation = {2, 1};
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(x, dilated), invalid_argument,
                       "momnet::avg_pool2d: average pooling has no dilation (as in PyTorch), got (2, 1)");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {3, 3}), invalid_argument,
                       "momnet::max_pool2d: the output would be empty: input [1, 1, 2, 2] with kernel (3, 3), stride "
                       "(3, 3), padding (0, 0), dilation (1, 1) gives 0 x 0");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(x, {2, 2}, {1, 1}, {1, 1}, {4, 1}), invalid_argument,
                       "momnet::max_pool2d: the output would be empty", "dilation (4, 1) gives 0 x 3");
  REQUIRE_THROWS_EXACT(momnet::avg_pool2d(tape.constant(Tensor<double>(Shape{1, 0, 3})), {1, 1}), invalid_argument,
                       "momnet::avg_pool2d: the input's height and width must be positive, got [1, 0, 3]");
  REQUIRE_THROWS_EXACT(momnet::adaptive_avg_pool2d(x, {-1, 2}), invalid_argument,
                       "momnet::adaptive_avg_pool2d: the output size must lie in [0, ", "got (-1, 2)");
  // The window bounds o * in must not overflow.
  REQUIRE_THROWS_EXACT(momnet::adaptive_avg_pool2d(tape.constant(Tensor<double>(Shape{1, 1, 1024, 1})),
                                                   {Shape::max_size, 1}),
                       invalid_argument,
                       "momnet::adaptive_avg_pool2d: the output size (" + std::to_string(Shape::max_size) +
                           ", 1) is too large for input [1, 1, 1024, 1]");
  REQUIRE_THROWS_EXACT(momnet::max_pool2d(Var<double>(), {1, 1}), invalid_argument, "momnet::max_pool2d: empty Var");

  REQUIRE_THROWS_EXACT(momnet::MaxPool2d<double>({0, 2}), invalid_argument, "momnet::MaxPool2d: kernel must lie in",
                       "got (0, 2)");
  REQUIRE_THROWS_EXACT(momnet::AvgPool2d<double>(dilated), invalid_argument,
                       "momnet::AvgPool2d: average pooling has no dilation");
  REQUIRE_THROWS_EXACT(momnet::AvgPool2d<double>({2, 2}, {1, 1}, {2, 0}), invalid_argument,
                       "momnet::AvgPool2d: padding must lie between 0 and half the kernel");
  REQUIRE_THROWS_EXACT(momnet::AdaptiveAvgPool2d<double>({3, -2}), invalid_argument,
                       "momnet::AdaptiveAvgPool2d: the output size must lie in [0, ", "got (3, -2)");

  const Var<double> v = tape.constant(Tensor<double>(Shape{2, 3, 4, 5}));
  REQUIRE_THROWS_EXACT(momnet::flatten(v, 4), std::out_of_range,
                       "momnet::flatten: start_dim 4 is outside [-4, 3] for shape [2, 3, 4, 5]");
  REQUIRE_THROWS_EXACT(momnet::flatten(v, 0, -5), std::out_of_range,
                       "momnet::flatten: end_dim -5 is outside [-4, 3] for shape [2, 3, 4, 5]");
  REQUIRE_THROWS_EXACT(momnet::flatten(v, 2, 1), invalid_argument,
                       "momnet::flatten: start_dim 2 comes after end_dim 1 for shape [2, 3, 4, 5]");
  REQUIRE_THROWS_EXACT(momnet::flatten(v, -1, -2), invalid_argument, "momnet::flatten: start_dim -1 comes after end_dim -2");
  momnet::Flatten<double> layer;
  REQUIRE_THROWS_EXACT(layer.forward(tape, tape.constant(Tensor<double>(Shape{3}))), std::out_of_range,
                       "momnet::flatten: start_dim 1 is outside [-1, 0] for shape [3]");
  const Index huge = Index{1} << 40;
  REQUIRE_THROWS_EXACT(momnet::flatten(tape.constant(Tensor<double>(Shape{0, huge, huge}))), std::length_error,
                       "momnet::flatten: dimensions 1 to -1 of [0, 1099511627776, 1099511627776] merge into more than");
}
