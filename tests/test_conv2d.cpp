// conv2d and the Conv2d layer: forward values against a direct 7-loop
// reference in float and double over strides, paddings, dilations, groups
// (depthwise too), non-square kernels, rectangular inputs and 1x1 kernels;
// finite-difference gradients of the input, weight and bias over the same
// cases; gradients computed only for what needs them; the same bits on
// recomputation; every bad argument refused with its message; the layer's
// names, initialisation and use inside residual stacks (the exact backward
// rebuilding conv blocks bit for bit).
#include <catch2/catch.hpp>

#include <momnet/layers/conv2d.hpp>
#include <momnet/momnet.hpp>
#include <momnet/ops/conv2d.hpp>

#include "helpers.hpp"
#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using momnet::Conv2d;
using momnet::Conv2dOptions;
using momnet::Shape;
using momnet::Size2;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using momnet_test::uniform;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

Conv2dOptions options(Size2 stride, Size2 padding, Size2 dilation = {1, 1}, Index groups = 1, bool bias = true) {
  Conv2dOptions o;
  o.stride = stride;
  o.padding = padding;
  o.dilation = dilation;
  o.groups = groups;
  o.bias = bias;
  return o;
}

struct Case {
  const char* label;
  Index n, c, h, w, k, kh, kw;
  Conv2dOptions o;
  Shape input() const { return Shape{n, c, h, w}; }
  Shape weight() const { return Shape{k, c / o.groups, kh, kw}; }
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {"3x3, padding 1", 2, 3, 5, 4, 4, 3, 3, options({1, 1}, {1, 1})},
      {"1x1, stride 1, no padding (the input is its own unrolling)", 2, 3, 4, 5, 2, 1, 1, options({1, 1}, {0, 0})},
      {"1x1, stride 2, no bias (a ResNet downsample)", 2, 2, 5, 5, 3, 1, 1, options({2, 2}, {0, 0}, {1, 1}, 1, false)},
      {"1x1, padding 1", 1, 2, 3, 3, 2, 1, 1, options({1, 1}, {1, 1})},
      {"3x3, stride 2, rectangular input", 1, 2, 7, 9, 3, 3, 3, options({2, 2}, {1, 1})},
      {"2x3 kernel, stride (2, 1), padding (0, 2), dilation (2, 1)", 1, 2, 8, 7, 3, 2, 3,
       options({2, 1}, {0, 2}, {2, 1})},
      {"groups 2", 2, 4, 4, 4, 4, 3, 3, options({1, 1}, {1, 1}, {1, 1}, 2)},
      {"depthwise", 1, 3, 5, 6, 3, 3, 3, options({1, 1}, {1, 1}, {1, 1}, 3)},
      {"depthwise, multiplier 2, stride 2", 1, 3, 6, 6, 6, 3, 3, options({2, 2}, {1, 1}, {1, 1}, 3)},
      {"dilation 2, padding 2", 1, 2, 7, 7, 2, 3, 3, options({1, 1}, {2, 2}, {2, 2})},
      {"stride 3 over a 2x2 kernel (skipped pixels)", 1, 2, 8, 7, 2, 2, 2, options({3, 3}, {0, 0})},
      {"kernel as large as the padded input (1x1 output)", 1, 2, 3, 4, 2, 5, 6, options({1, 1}, {1, 1})},
      {"padding larger than the kernel", 1, 1, 3, 3, 2, 2, 2, options({1, 1}, {3, 3})},
      {"groups 2, 3x2 kernel, stride (2, 3), padding (1, 2), dilation (2, 3), no bias", 1, 4, 7, 8, 4, 3, 2,
       options({2, 3}, {1, 2}, {2, 3}, 2, false)},
  };
  return all;
}

Index out_size(Index in, Index k, Index s, Index p, Index d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

// The direct definition, accumulated in double: out[n, k, oh, ow] = bias[k] +
// sum over c in k's group, i, j of x[n, c, oh s - p + i d, ow s - p + j d] w[k, c', i, j].
std::vector<double> reference(const Case& t, const std::vector<double>& x, const std::vector<double>& w,
                              const std::vector<double>* b) {
  const Conv2dOptions& o = t.o;
  const Index oh_n = out_size(t.h, t.kh, o.stride[0], o.padding[0], o.dilation[0]);
  const Index ow_n = out_size(t.w, t.kw, o.stride[1], o.padding[1], o.dilation[1]);
  const Index cg = t.c / o.groups, kg = t.k / o.groups;
  std::vector<double> out(static_cast<std::size_t>(t.n * t.k * oh_n * ow_n));
  for (Index n = 0; n < t.n; ++n) {
    for (Index k = 0; k < t.k; ++k) {
      for (Index oh = 0; oh < oh_n; ++oh) {
        for (Index ow = 0; ow < ow_n; ++ow) {
          double s = b != nullptr ? (*b)[static_cast<std::size_t>(k)] : 0.0;
          for (Index cc = 0; cc < cg; ++cc) {
            const Index c = (k / kg) * cg + cc;
            for (Index i = 0; i < t.kh; ++i) {
              for (Index j = 0; j < t.kw; ++j) {
                const Index ih = oh * o.stride[0] - o.padding[0] + i * o.dilation[0];
                const Index iw = ow * o.stride[1] - o.padding[1] + j * o.dilation[1];
                if (ih < 0 || ih >= t.h || iw < 0 || iw >= t.w) continue;
                s += x[static_cast<std::size_t>(((n * t.c + c) * t.h + ih) * t.w + iw)] *
                     w[static_cast<std::size_t>(((k * cg + cc) * t.kh + i) * t.kw + j)];
              }
            }
          }
          out[static_cast<std::size_t>(((n * t.k + k) * oh_n + oh) * ow_n + ow)] = s;
        }
      }
    }
  }
  return out;
}

// The gradients of sum(out * gy) by the same direct loops: gx, gw, gb.
struct ReferenceGradients {
  std::vector<double> x, w, b;
};
ReferenceGradients reference_gradients(const Case& t, const std::vector<double>& x, const std::vector<double>& w,
                                       const std::vector<double>& gy) {
  const Conv2dOptions& o = t.o;
  const Index oh_n = out_size(t.h, t.kh, o.stride[0], o.padding[0], o.dilation[0]);
  const Index ow_n = out_size(t.w, t.kw, o.stride[1], o.padding[1], o.dilation[1]);
  const Index cg = t.c / o.groups, kg = t.k / o.groups;
  ReferenceGradients g{std::vector<double>(x.size()), std::vector<double>(w.size()),
                       std::vector<double>(static_cast<std::size_t>(t.k))};
  for (Index n = 0; n < t.n; ++n) {
    for (Index k = 0; k < t.k; ++k) {
      for (Index oh = 0; oh < oh_n; ++oh) {
        for (Index ow = 0; ow < ow_n; ++ow) {
          const double d = gy[static_cast<std::size_t>(((n * t.k + k) * oh_n + oh) * ow_n + ow)];
          g.b[static_cast<std::size_t>(k)] += d;
          for (Index cc = 0; cc < cg; ++cc) {
            const Index c = (k / kg) * cg + cc;
            for (Index i = 0; i < t.kh; ++i) {
              for (Index j = 0; j < t.kw; ++j) {
                const Index ih = oh * o.stride[0] - o.padding[0] + i * o.dilation[0];
                const Index iw = ow * o.stride[1] - o.padding[1] + j * o.dilation[1];
                if (ih < 0 || ih >= t.h || iw < 0 || iw >= t.w) continue;
                const auto xi = static_cast<std::size_t>(((n * t.c + c) * t.h + ih) * t.w + iw);
                const auto wi = static_cast<std::size_t>(((k * cg + cc) * t.kh + i) * t.kw + j);
                g.x[xi] += d * w[wi];
                g.w[wi] += d * x[xi];
              }
            }
          }
        }
      }
    }
  }
  return g;
}

double max_difference(const double* a, const std::vector<double>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

template <class T>
Tensor<T> cast(const Tensor<double>& t) {
  Tensor<T> out(t.shape());
  for (Index i = 0; i < t.size(); ++i) out.data()[i] = static_cast<T>(t.data()[i]);
  return out;
}

// Values of a Tensor<T> read back as doubles (so the reference sees exactly
// what the float operation saw).
template <class T>
std::vector<double> as_double(const Tensor<T>& t) {
  return std::vector<double>(t.data(), t.data() + t.size());
}

template <class T>
Var<T> conv(const Var<T>& x, const Var<T>& w, const Var<T>& b, const Conv2dOptions& o) {
  return o.bias ? momnet::conv2d(x, w, b, o) : momnet::conv2d(x, w, o);
}

}  // namespace

TEMPLATE_TEST_CASE("conv2d equals the direct 7-loop definition", "[conv2d]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 2e-6 : 1e-14;
  std::uint64_t seed = 100;
  for (const Case& t : cases()) {
    INFO(t.label);
    const Tensor<T> x = cast<T>(uniform(t.input(), ++seed));
    const Tensor<T> w = cast<T>(uniform(t.weight(), ++seed));
    const Tensor<T> b = cast<T>(uniform(Shape{t.k}, ++seed));
    Tape<T> tape;
    const Var<T> y = conv(tape.constant(x), tape.constant(w), tape.constant(b), t.o);
    const std::vector<double> bias = as_double(b);
    const std::vector<double> expected = reference(t, as_double(x), as_double(w), t.o.bias ? &bias : nullptr);
    const Index oh = out_size(t.h, t.kh, t.o.stride[0], t.o.padding[0], t.o.dilation[0]);
    const Index ow = out_size(t.w, t.kw, t.o.stride[1], t.o.padding[1], t.o.dilation[1]);
    REQUIRE(y.shape() == Shape({t.n, t.k, oh, ow}));
    double scale = 1.0;
    for (double e : expected) scale = std::max(scale, std::abs(e));
    double worst = 0.0;
    for (Index i = 0; i < y.size(); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(y.data()[i]) - expected[static_cast<std::size_t>(i)]));
    }
    CHECK(worst <= tolerance * scale);
  }
}

TEST_CASE("conv2d: a bias is added to every pixel of its channel, padding alone gives the bias", "[conv2d]") {
  // 1 channel of 1x1 padded by 2 with a 1x1 kernel: the ring of padding sees
  // only zeros, the centre x * w.
  Tape<double> tape;
  const Var<double> x = tape.constant(Shape{1, 1, 1, 1}, std::vector<double>{3.0}.data());
  const Var<double> w = tape.constant(Shape{2, 1, 1, 1}, std::vector<double>{2.0, -1.0}.data());
  const Var<double> b = tape.constant(Shape{2}, std::vector<double>{0.5, 7.0}.data());
  const Var<double> y = momnet::conv2d(x, w, b, options({1, 1}, {2, 2}));
  REQUIRE(y.shape() == Shape({1, 2, 5, 5}));
  for (Index k = 0; k < 2; ++k) {
    for (Index p = 0; p < 25; ++p) {
      const double expected = (k == 0 ? 0.5 : 7.0) + (p == 12 ? (k == 0 ? 6.0 : -3.0) : 0.0);
      CHECK(y.data()[k * 25 + p] == expected);
    }
  }
}

TEST_CASE("conv2d passes the gradient check for the input, the weight and the bias", "[conv2d][gradients]") {
  std::uint64_t seed = 300;
  for (const Case& t : cases()) {
    INFO(t.label);
    std::vector<Tensor<double>> inputs{uniform(t.input(), ++seed), uniform(t.weight(), ++seed)};
    if (t.o.bias) inputs.push_back(uniform(Shape{t.k}, ++seed));
    const Conv2dOptions o = t.o;
    const momnet::GradientCheckResult result = momnet::check_gradients(
        [o](Tape<double>&, const Vars& v) { return conv(v[0], v[1], o.bias ? v[2] : Var<double>(), o); }, inputs);
    INFO(result.worst << " (error " << result.max_error << ")");
    CHECK(result.passed);
    CHECK(result.checked == static_cast<std::size_t>(t.input().size() + t.weight().size() + (o.bias ? t.k : 0)));
  }
}

TEST_CASE("conv2d on images large enough to be unrolled a few output rows at a time", "[conv2d][gradients]") {
  // The kernels unroll at most kernels::conv2d_chunk_bytes of input at once;
  // these shapes take three chunks. Forward and all three gradients against
  // direct loops (finite differences over 60,000 inputs would be slow).
  for (const Case& t : {Case{"3x3, padding 1", 1, 8, 80, 48, 2, 3, 3, options({1, 1}, {1, 1})},
                        Case{"stride (2, 1), groups 2", 1, 8, 160, 48, 4, 3, 3, options({2, 1}, {1, 1}, {1, 1}, 2)}}) {
    INFO(t.label);
    momnet::kernels::Conv2dGeometry g;
    g.in_channels = t.c;
    g.kernel_h = t.kh;
    g.kernel_w = t.kw;
    g.out_h = out_size(t.h, t.kh, t.o.stride[0], t.o.padding[0], t.o.dilation[0]);
    g.out_w = out_size(t.w, t.kw, t.o.stride[1], t.o.padding[1], t.o.dilation[1]);
    const Index band = momnet::kernels::conv2d_chunk_rows<double>(g);
    REQUIRE((g.out_h + band - 1) / band == 3);
    const Tensor<double> x = uniform(t.input(), 30), w = uniform(t.weight(), 31), b = uniform(Shape{t.k}, 32);
    const Tensor<double> gy = uniform(Shape{t.n, t.k, g.out_h, g.out_w}, 33);
    Tape<double> tape;
    const Var<double> vx = tape.variable(x), vw = tape.variable(w), vb = tape.variable(b);
    const Var<double> y = momnet::conv2d(vx, vw, vb, t.o);
    tape.backward(y, gy.data());
    const std::vector<double> bias(b.data(), b.data() + b.size());
    const std::vector<double> xs(x.data(), x.data() + x.size()), ws(w.data(), w.data() + w.size());
    const std::vector<double> expected = reference(t, xs, ws, &bias);
    const ReferenceGradients grads =
        reference_gradients(t, xs, ws, std::vector<double>(gy.data(), gy.data() + gy.size()));
    CHECK(max_difference(y.data(), expected) < 1e-12);
    CHECK(max_difference(vx.grad().data(), grads.x) < 1e-12);
    CHECK(max_difference(vw.grad().data(), grads.w) < 1e-9);
    CHECK(max_difference(vb.grad().data(), grads.b) < 1e-9);
  }
}

TEST_CASE("conv2d adds into gradients that other operations share", "[conv2d][gradients]") {
  // x feeds the convolution and the sum, whose rule runs first: the
  // convolution must add to x's gradient, for the 1x1 case (a GEMM straight
  // into it) and the unrolled one (col2im) alike.
  for (const Index k : {1, 3}) {
    INFO("kernel " << k);
    const Tensor<double> x = uniform(Shape{2, 3, 4, 4}, 20), w = uniform(Shape{3, 3, k, k}, 21);
    const Conv2dOptions o = options({1, 1}, {k / 2, k / 2});
    const momnet::GradientCheckResult result = momnet::check_gradients(
        [o](Tape<double>&, const Vars& v) { return momnet::add(momnet::conv2d(v[0], v[1], o), v[0]); }, {x, w});
    INFO(result.worst);
    CHECK(result.passed);
  }
}

TEST_CASE("conv2d computes each gradient only when it is needed, with the same values", "[conv2d][gradients]") {
  const Case& t = cases()[6];  // groups 2
  const Tensor<double> x = uniform(t.input(), 1), w = uniform(t.weight(), 2), b = uniform(Shape{t.k}, 3);
  struct Grads {
    std::vector<double> x, w, b;
  };
  const auto run = [&](bool gx, bool gw, bool gb) {
    Tape<double> tape;
    const Var<double> vx = gx ? tape.variable(x) : tape.constant(x);
    const Var<double> vw = gw ? tape.variable(w) : tape.constant(w);
    const Var<double> vb = gb ? tape.variable(b) : tape.constant(b);
    const Var<double> y = momnet::conv2d(vx, vw, vb, t.o);
    Grads g;
    if (!y.requires_grad()) return g;
    tape.backward(momnet::sum(momnet::square(y)));
    if (gx) g.x.assign(vx.grad().data(), vx.grad().data() + x.size());
    if (gw) g.w.assign(vw.grad().data(), vw.grad().data() + w.size());
    if (gb) g.b.assign(vb.grad().data(), vb.grad().data() + b.size());
    return g;
  };
  const Grads all = run(true, true, true);
  CHECK(run(true, false, false).x == all.x);
  CHECK(run(false, true, false).w == all.w);
  CHECK(run(false, false, true).b == all.b);
  const Grads two = run(false, true, true);
  CHECK(two.w == all.w);
  CHECK(two.b == all.b);
  CHECK(run(false, false, false).x.empty());
}

TEST_CASE("conv2d gives the same bits when recomputed", "[conv2d][determinism]") {
  // float, a size where Eigen's GEMMs use their vectorised blocked path.
  const Case t{"", 3, 8, 11, 10, 12, 3, 3, options({1, 1}, {1, 1}, {1, 1}, 2)};
  const Tensor<float> x = cast<float>(uniform(t.input(), 5)), w = cast<float>(uniform(t.weight(), 6));
  const Tensor<float> b = cast<float>(uniform(Shape{t.k}, 7)), r = cast<float>(uniform(Shape{3, 12, 11, 10}, 8));
  const auto run = [&] {
    Tape<float> tape;
    const Var<float> vx = tape.variable(x), vw = tape.variable(w), vb = tape.variable(b);
    const Var<float> y = momnet::conv2d(vx, vw, vb, t.o);
    tape.backward(momnet::sum(momnet::mul(y, tape.constant(r))));
    std::vector<float> all(y.data(), y.data() + y.size());
    for (const Var<float>& v : {vx, vw, vb}) all.insert(all.end(), v.grad().data(), v.grad().data() + v.size());
    return all;
  };
  const std::vector<float> first = run(), second = run();
  REQUIRE(first.size() == second.size());
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)) == 0);
}

TEST_CASE("conv2d accepts an unbatched [C, H, W] input like PyTorch", "[conv2d]") {
  const Case& t = cases()[5];
  const Tensor<double> x = uniform(Shape{t.c, t.h, t.w}, 11), w = uniform(t.weight(), 12), b = uniform(Shape{t.k}, 13);
  Tensor<double> batched = x;
  batched.reshape(Shape{1, t.c, t.h, t.w});
  Tape<double> tape;
  const Var<double> y = momnet::conv2d(tape.constant(x), tape.constant(w), tape.constant(b), t.o);
  const Var<double> yb = momnet::conv2d(tape.constant(batched), tape.constant(w), tape.constant(b), t.o);
  REQUIRE(yb.shape().rank() == 4);
  CHECK(y.shape() == yb.shape().without_dim(0));
  CHECK(std::equal(y.data(), y.data() + y.size(), yb.data()));

  const Conv2dOptions o = t.o;
  const momnet::GradientCheckResult result = momnet::check_gradients(
      [o](Tape<double>&, const Vars& v) { return momnet::conv2d(v[0], v[1], v[2], o); }, {x, w, b});
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("conv2d of an empty batch is empty and its weight gradient zero", "[conv2d]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{0, 3, 5, 5}));
  const Var<double> w = tape.variable(uniform(Shape{4, 3, 3, 3}, 1));
  const Var<double> b = tape.variable(uniform(Shape{4}, 2));
  const Var<double> y = momnet::conv2d(x, w, b, options({2, 2}, {1, 1}));
  CHECK(y.shape() == Shape({0, 4, 3, 3}));
  tape.backward(momnet::sum(y));
  CHECK(w.grad().isZero());
  CHECK(b.grad().isZero());
}

TEST_CASE("conv2d refuses bad arguments, naming them", "[conv2d][errors]") {
  Tape<double> tape;
  const auto var = [&tape](const Shape& s) { return tape.constant(Tensor<double>(s)); };
  const Var<double> x = var(Shape{2, 4, 5, 5});
  const Var<double> w = var(Shape{6, 4, 3, 3});
  const char* op = "momnet::conv2d";

  SECTION("the input's rank") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(var(Shape{4, 25}), w), std::invalid_argument, op, "expects a 4-D input",
                         "[4, 25]");
  }
  SECTION("the weight's rank and size") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{6, 4, 9})), std::invalid_argument, op, "weight must be 4-D",
                         "[6, 4, 9]");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{0, 4, 3, 3})), std::invalid_argument, op, "zero dimension",
                         "[0, 4, 3, 3]");
  }
  SECTION("the channel count") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{6, 3, 3, 3})), std::invalid_argument, op,
                         "input [2, 4, 5, 5] has 4 channels", "weight [6, 3, 3, 3] with groups=1 expects 3 (3 x 1)");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{6, 1, 3, 3}), options({1, 1}, {0, 0}, {1, 1}, 2)),
                         std::invalid_argument, op, "has 4 channels", "with groups=2 expects 2 (1 x 2)");
  }
  SECTION("groups that do not divide the channels") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{5, 2, 3, 3}), options({1, 1}, {0, 0}, {1, 1}, 2)),
                         std::invalid_argument, op, "groups=2", "5 output channels", "not divisible");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, var(Shape{6, 1, 3, 3}), options({1, 1}, {0, 0}, {1, 1}, 3)),
                         std::invalid_argument, op, "groups=3", "input's 4 channels", "not divisible");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, 1}, {0, 0}, {1, 1}, 0)), std::invalid_argument, op,
                         "groups must be positive, got 0");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, 1}, {0, 0}, {1, 1}, -2)), std::invalid_argument, op,
                         "groups must be positive, got -2");
  }
  SECTION("a kernel larger than the padded input") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(var(Shape{1, 4, 2, 5}), w), std::invalid_argument, op,
                         "kernel size can't be greater than the padded input size", "padded input 2x5",
                         "dilated kernel 3x3");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, 1}, {0, 0}, {3, 1})), std::invalid_argument, op,
                         "padded input 5x5", "dilated kernel 7x3");
    CHECK(momnet::conv2d(x, w, options({1, 1}, {1, 0}, {3, 1})).shape() == Shape({2, 6, 1, 3}));
  }
  SECTION("an input with no pixels") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(var(Shape{1, 4, 0, 5}), w, options({1, 1}, {2, 2})),
                         std::invalid_argument, op, "height and width must not be zero", "[1, 4, 0, 5]");
  }
  SECTION("stride, padding and dilation") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({0, 1}, {0, 0})), std::invalid_argument, op,
                         "stride must be positive, got (0, 1)");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, -2}, {0, 0})), std::invalid_argument, op,
                         "stride must be positive, got (1, -2)");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, 1}, {0, -1})), std::invalid_argument, op,
                         "padding must not be negative, got (0, -1)");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, options({1, 1}, {0, 0}, {1, 0})), std::invalid_argument, op,
                         "dilation must be at least 1, got (1, 0)");
  }
  SECTION("the bias's shape") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, var(Shape{5})), std::invalid_argument, op,
                         "bias must be 1-D with the weight's 6 output channels", "got [5]");
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, var(Shape{1, 6})), std::invalid_argument, op, "got [1, 6]");
  }
  SECTION("empty and foreign Vars") {
    REQUIRE_THROWS_EXACT(momnet::conv2d(Var<double>(), w), std::invalid_argument, op, "empty Var");
    Tape<double> other;
    REQUIRE_THROWS_EXACT(momnet::conv2d(x, w, other.constant(Tensor<double>(Shape{6}))), std::invalid_argument, op,
                         "different tapes");
  }
}

TEST_CASE("Conv2d: PyTorch's names, shapes and accessors", "[conv2d][layer]") {
  momnet::Rng rng(1);
  Conv2d<double> with_bias(4, 6, Size2{3, 5}, rng, options({2, 1}, {1, 2}, {1, 2}, 2));
  CHECK(with_bias.weight().shape() == Shape({6, 2, 3, 5}));
  CHECK(with_bias.bias().shape() == Shape({6}));
  CHECK(with_bias.in_channels() == 4);
  CHECK(with_bias.out_channels() == 6);
  CHECK(with_bias.kernel_size() == Size2{3, 5});
  CHECK(with_bias.stride() == Size2{2, 1});
  CHECK(with_bias.padding() == Size2{1, 2});
  CHECK(with_bias.dilation() == Size2{1, 2});
  CHECK(with_bias.groups() == 2);
  CHECK(with_bias.has_bias());
  const auto names = momnet::named_parameters(with_bias);
  REQUIRE(names.size() == 2);
  CHECK(names[0].first == "weight");
  CHECK(names[0].second == &with_bias.weight());
  CHECK(names[1].first == "bias");

  Conv2dOptions no_bias;
  no_bias.bias = false;
  Conv2d<float> without(3, 8, 1, rng, no_bias);
  CHECK(without.kernel_size() == Size2{1, 1});
  CHECK_FALSE(without.has_bias());
  const auto only = momnet::named_parameters(without);
  REQUIRE(only.size() == 1);
  CHECK(only[0].first == "weight");
  REQUIRE_THROWS_EXACT(without.bias(), std::logic_error, "momnet::Conv2d::bias", "no bias");
}

TEST_CASE("Conv2d computes conv2d of its parameters and passes the block gradient check", "[conv2d][layer]") {
  momnet::Rng rng(2);
  Conv2d<double> layer(4, 6, Size2{3, 2}, rng, options({2, 1}, {1, 1}, {1, 2}, 2));
  const Tensor<double> input = uniform(Shape{2, 4, 6, 5}, 3);
  {
    Tape<double> tape;
    const Var<double> y = layer.forward(tape, tape.constant(input));
    Tape<double> direct;
    const Var<double> expected = momnet::conv2d(direct.constant(input), direct.param(layer.weight()),
                                                direct.param(layer.bias()), layer.options());
    REQUIRE(y.shape() == expected.shape());
    CHECK(std::equal(y.data(), y.data() + y.size(), expected.data()));
  }
  const momnet::GradientCheckResult result = momnet::check_block_gradients(layer, input);
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("Conv2d initialises as PyTorch: U(+-1/sqrt(fan_in)) for weight and bias", "[conv2d][layer][init]") {
  momnet::Rng rng(3);
  // fan_in = in / groups * kH * kW = 8 / 2 * 3 * 5 = 60.
  Conv2d<double> layer(8, 64, Size2{3, 5}, rng, options({1, 1}, {0, 0}, {1, 1}, 2));
  const double bound = 1.0 / std::sqrt(60.0);
  CHECK(momnet::init::fan_in_of(layer.weight().shape()) == 60);
  CHECK(momnet::init::fan_out_of(layer.weight().shape()) == 64 * 15);
  const auto w = layer.weight().array();
  CHECK(w.abs().maxCoeff() < bound);
  CHECK(w.abs().maxCoeff() > 0.99 * bound);
  CHECK(std::abs(w.mean()) < 0.05 * bound);
  const auto b = layer.bias().array();
  CHECK(b.abs().maxCoeff() < bound);
  CHECK(b.abs().maxCoeff() > 0.8 * bound);
  // Different seeds, different weights; the same seed, the same.
  momnet::Rng again(3), other(4);
  CHECK(Conv2d<double>(8, 64, Size2{3, 5}, again, options({1, 1}, {0, 0}, {1, 1}, 2)).weight().array().isApprox(w));
  CHECK_FALSE(
      Conv2d<double>(8, 64, Size2{3, 5}, other, options({1, 1}, {0, 0}, {1, 1}, 2)).weight().array().isApprox(w));
}

TEST_CASE("init::kaiming_normal_fan_out draws N(0, 2 / fan_out) as torchvision's ResNet", "[conv2d][init]") {
  momnet::Rng rng(5);
  momnet::Parameter<double> w(Shape{64, 32, 3, 3});
  momnet::init::kaiming_normal_fan_out(w, rng);
  const double expected = std::sqrt(2.0 / (64 * 9));
  const double mean = w.array().mean();
  const double stddev = std::sqrt((w.array() - mean).square().mean());
  CHECK(std::abs(mean) < 0.03 * expected);
  CHECK(stddev == Approx(expected).epsilon(0.02));
  momnet::Parameter<double> vector(Shape{5});
  REQUIRE_THROWS_EXACT(momnet::init::kaiming_normal_fan_out(vector, rng), std::invalid_argument,
                       "momnet::init::fan_out_of", "at least 2 dimensions", "[5]");
  REQUIRE_THROWS_EXACT(momnet::init::fan_in_of(Shape{5}), std::invalid_argument, "momnet::init::fan_in_of", "[5]");
}

TEST_CASE("Conv2d refuses bad sizes", "[conv2d][layer][errors]") {
  momnet::Rng rng(6);
  const char* layer = "momnet::Conv2d";
  REQUIRE_THROWS_EXACT(Conv2d<float>(0, 4, 3, rng), std::invalid_argument, layer, "in_channels=0, out_channels=4");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, -1, 3, rng), std::invalid_argument, layer, "in_channels=4, out_channels=-1");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 4, Size2{3, 0}, rng), std::invalid_argument, layer,
                       "kernel_size must be positive, got (3, 0)");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 6, 3, rng, options({1, 1}, {0, 0}, {1, 1}, 4)), std::invalid_argument, layer,
                       "in_channels=4 and out_channels=6 must both be divisible by groups=4");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 4, 3, rng, options({0, 1}, {0, 0})), std::invalid_argument, layer,
                       "stride must be positive, got (0, 1)");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 4, 3, rng, options({1, 1}, {-1, 0})), std::invalid_argument, layer,
                       "padding must not be negative");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 4, 3, rng, options({1, 1}, {0, 0}, {0, 0})), std::invalid_argument, layer,
                       "dilation must be at least 1");
  REQUIRE_THROWS_EXACT(Conv2d<float>(4, 4, 3, rng, options({1, 1}, {0, 0}, {1, 1}, 0)), std::invalid_argument, layer,
                       "groups must be positive, got 0");
  Conv2d<float> ok(4, 4, 3, rng);
  Tape<float> tape;
  REQUIRE_THROWS_EXACT(ok.forward(tape, tape.constant(Tensor<float>(Shape{1, 3, 5, 5}))), std::invalid_argument,
                       "momnet::conv2d", "has 3 channels", "expects 4");
}

namespace {

// conv -> tanh, keeping the shape: a residual function for the stacks.
template <class T>
struct ConvBlock {
  using Scalar = T;
  Conv2d<T> conv;
  ConvBlock(Index channels, momnet::Rng& rng) : conv(channels, channels, 3, rng, options({1, 1}, {1, 1})) {}
  Var<T> forward(Tape<T>& tape, const Var<T>& x) { return momnet::tanh(conv.forward(tape, x)); }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("conv", conv);
  }
};

template <class T>
std::vector<ConvBlock<T>> conv_blocks(std::size_t count, Index channels, std::uint64_t seed) {
  momnet::Rng rng(seed);
  std::vector<ConvBlock<T>> blocks;
  for (std::size_t i = 0; i < count; ++i) blocks.emplace_back(channels, rng);
  return blocks;
}

}  // namespace

TEST_CASE("Conv2d blocks in a Residual stack: names and gradients", "[conv2d][residual]") {
  momnet::Residual<ConvBlock<double>> net(conv_blocks<double>(2, 2, 7));
  const auto names = momnet::named_parameters(net);
  REQUIRE(names.size() == 4);
  CHECK(names[0].first == "0.conv.weight");
  CHECK(names[1].first == "0.conv.bias");
  CHECK(names[3].first == "1.conv.bias");
  const momnet::GradientCheckResult result = momnet::check_gradients(
      [&net](Tape<double>& tape, const Vars& v) { return net(tape, v[0]); }, {uniform(Shape{2, 2, 4, 3}, 8)},
      momnet::parameters_of(net));
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("MomentumResidual rebuilds conv blocks bit for bit in the exact backward", "[conv2d][momentum]") {
  using T = float;
  const std::vector<ConvBlock<T>> blocks = conv_blocks<T>(12, 3, 9);
  momnet::MomentumResidual<ConvBlock<T>> exact(blocks, momnet_test::options_for(0.9, momnet::BackwardMode::exact));
  momnet::MomentumResidual<ConvBlock<T>> stored(blocks, momnet_test::options_for(0.9, momnet::BackwardMode::stored));
  const Tensor<T> input = cast<T>(uniform(Shape{2, 3, 6, 5}, 10));
  momnet_test::StateLog log;
  log.attach(exact);
  const auto gradients = [&input](auto& net) {
    momnet::zero_grad(net);
    Tape<T> tape;
    const Var<T> x = tape.variable(input);
    tape.backward(momnet::mean(momnet::square(net(tape, x))));
    std::vector<T> all(x.grad().data(), x.grad().data() + x.size());
    for (momnet::Parameter<T>* p : momnet::parameters_of(net)) {
      all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
    }
    return all;
  };
  const std::vector<T> from_exact = gradients(exact);
  REQUIRE(log.backward_layers_seen == blocks.size());
  CHECK(log.mismatches() == 0);
  exact.set_observer(nullptr);
  CHECK(momnet_test::relative_error(from_exact, gradients(stored)) < 1e-4);
}
