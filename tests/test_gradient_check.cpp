// The gradient checker itself: it passes correct operations and catches
// wrong ones (naming where), projects non-scalar outputs with non-uniform
// weights, and leaves parameters and inputs as it found them.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace {

using momnet_test::uniform;

using momnet::GradientCheckOptions;
using momnet::GradientCheckResult;
using momnet::Parameter;
using momnet::Rng;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using Vars = std::vector<Var<double>>;


// How a custom op's backward goes wrong.
struct Fault {
  double factor = 1.0;          // multiplies the true gradient ...
  Eigen::Index element = -1;    // ... of this element only (-1: of every element)
  bool ignore_seed = false;     // uses 1 instead of the output gradient
  bool reversed = false;        // writes element i's gradient to element n-1-i
};

// y = x^3 elementwise, recorded with tape.record and a hand-written backward
// that is correct unless `fault` says otherwise.
Var<double> cube(const Var<double>& x, Fault fault = {}) {
  Tape<double>& tape = x.tape();
  const Shape shape = x.shape();
  const Eigen::Index n = shape.size();
  const double* px = x.data();
  double* out = tape.allocate(n);
  for (Eigen::Index i = 0; i < n; ++i) out[i] = px[i] * px[i] * px[i];
  return tape.record(shape, out, {x}, [x, px, n, fault](const double* g) {
    double* gx = x.tape().gradient_for(x);
    for (Eigen::Index i = 0; i < n; ++i) {
      const double seed = fault.ignore_seed ? 1.0 : g[i];
      const double factor = fault.element < 0 || fault.element == i ? fault.factor : 1.0;
      gx[fault.reversed ? n - 1 - i : i] += seed * 3.0 * px[i] * px[i] * factor;
    }
  });
}

// y = alpha * x for a one-element parameter alpha, with the parameter's
// gradient multiplied by `alpha_factor`.
Var<double> scaled(Tape<double>& tape, const Var<double>& x, Parameter<double>& alpha, double alpha_factor) {
  const Var<double> a = tape.param(alpha);
  const Shape shape = x.shape();
  const Eigen::Index n = shape.size();
  const double* px = x.data();
  const double* pa = a.data();
  double* out = tape.allocate(n);
  for (Eigen::Index i = 0; i < n; ++i) out[i] = pa[0] * px[i];
  return tape.record(shape, out, {x, a}, [x, a, px, pa, n, alpha_factor](const double* g) {
    if (x.requires_grad()) {
      double* gx = x.tape().gradient_for(x);
      for (Eigen::Index i = 0; i < n; ++i) gx[i] += g[i] * pa[0];
    }
    if (a.requires_grad()) {
      double* ga = a.tape().gradient_for(a);
      for (Eigen::Index i = 0; i < n; ++i) ga[0] += g[i] * px[i] * alpha_factor;
    }
  });
}

// A block around `scaled`, for check_block_gradients.
struct ScaledBlock {
  using Scalar = double;
  Parameter<double> alpha{Shape{}, "alpha"};
  double alpha_factor = 1.0;
  Var<double> forward(Tape<double>& tape, const Var<double>& x) {
    return momnet::tanh(scaled(tape, x, alpha, alpha_factor));
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    visit(alpha);
  }
};

}  // namespace

TEST_CASE("the gradient checker passes a correct operation", "[gradient_check]") {
  const Tensor<double> x = uniform(Shape{2, 3}, 1, 0.5, 1.5);
  const GradientCheckResult result =
      momnet::check_gradients([](Tape<double>&, const Vars& v) { return cube(v[0]); }, {x});
  INFO(result.worst);
  CHECK(result.passed);
  CHECK(static_cast<bool>(result));
  CHECK(result.checked == 6);
  CHECK(result.max_error < 1e-8);
  CHECK(result.worst.find("input 0 [2, 3] element") != std::string::npos);  // named even on a pass

  // Several inputs, some unused: an unused input's gradient is 0 both ways.
  const GradientCheckResult two = momnet::check_gradients(
      [](Tape<double>&, const Vars& v) { return momnet::sum(cube(v[0])); }, {x, uniform(Shape{4}, 2)});
  INFO(two.worst);
  CHECK(two.passed);
  CHECK(two.checked == 10);
}

TEST_CASE("the gradient checker fails a backward that is off by a factor, and names where",
          "[gradient_check]") {
  const Tensor<double> x = uniform(Shape{2, 3}, 3, 0.5, 1.5);

  SECTION("every element off by 1.5") {
    Fault fault;
    fault.factor = 1.5;
    const GradientCheckResult result =
        momnet::check_gradients([fault](Tape<double>&, const Vars& v) { return cube(v[0], fault); }, {x});
    CHECK_FALSE(result.passed);
    CHECK_FALSE(static_cast<bool>(result));
    CHECK(result.max_error == Approx(1.0 / 3.0).epsilon(1e-6));  // |1.5 a - a| / (1.5 a)
    CHECK(result.worst.find("input 0 [2, 3] element") != std::string::npos);
    CHECK(result.worst.find("analytic") != std::string::npos);
    CHECK(result.worst.find("numeric") != std::string::npos);
  }
  SECTION("only element 4 off by 1.5") {
    Fault fault;
    fault.factor = 1.5;
    fault.element = 4;
    const GradientCheckResult result =
        momnet::check_gradients([fault](Tape<double>&, const Vars& v) { return cube(v[0], fault); }, {x});
    CHECK_FALSE(result.passed);
    CHECK(result.max_error == Approx(1.0 / 3.0).epsilon(1e-6));
    CHECK(result.worst.find("input 0 [2, 3] element 4:") != std::string::npos);
  }
  SECTION("the second input is the wrong one") {
    Fault fault;
    fault.factor = 0.5;
    const GradientCheckResult result = momnet::check_gradients(
        [fault](Tape<double>&, const Vars& v) { return cube(v[0]) + cube(v[1], fault); },
        {x, uniform(Shape{2, 3}, 4, 0.5, 1.5)});
    CHECK_FALSE(result.passed);
    CHECK(result.worst.find("input 1 [2, 3]") != std::string::npos);
  }
  SECTION("a small error fails the default tolerance and passes a looser one") {
    Fault fault;
    fault.factor = 1.0 + 1e-4;
    const auto f = [fault](Tape<double>&, const Vars& v) { return cube(v[0], fault); };
    const GradientCheckResult strict = momnet::check_gradients(f, {x});
    CHECK_FALSE(strict.passed);
    CHECK(strict.max_error == Approx(1e-4).epsilon(1e-3));
    GradientCheckOptions loose;
    loose.tolerance = 1e-3;
    CHECK(momnet::check_gradients(f, {x}, {}, loose).passed);
  }
  SECTION("a NaN gradient fails") {
    Fault fault;
    fault.factor = std::numeric_limits<double>::quiet_NaN();
    fault.element = 2;
    const GradientCheckResult result =
        momnet::check_gradients([fault](Tape<double>&, const Vars& v) { return cube(v[0], fault); }, {x});
    CHECK_FALSE(result.passed);
    CHECK(std::isinf(result.max_error));
    CHECK(result.worst.find("element 2:") != std::string::npos);
  }
}

TEST_CASE("non-scalar outputs are projected with non-uniform weights", "[gradient_check]") {
  const Tensor<double> x = uniform(Shape{2, 3}, 5, 0.5, 1.5);
  Fault ignore;
  ignore.ignore_seed = true;
  // Summed, the output gradient is 1 everywhere and ignoring it goes unseen ...
  CHECK(momnet::check_gradients(
            [ignore](Tape<double>&, const Vars& v) { return momnet::sum(cube(v[0], ignore)); }, {x})
            .passed);
  // ... but the checker's own projection of the [2, 3] output catches it,
  const GradientCheckResult projected =
      momnet::check_gradients([ignore](Tape<double>&, const Vars& v) { return cube(v[0], ignore); }, {x});
  CHECK_FALSE(projected.passed);
  CHECK(projected.max_error > 0.1);
  // whatever the projection's seed.
  GradientCheckOptions other_seed;
  other_seed.seed = 99;
  CHECK_FALSE(momnet::check_gradients([ignore](Tape<double>&, const Vars& v) { return cube(v[0], ignore); },
                                      {x}, {}, other_seed)
                  .passed);

  // Gradients written to the wrong elements are caught too.
  Fault reversed;
  reversed.reversed = true;
  CHECK_FALSE(
      momnet::check_gradients([reversed](Tape<double>&, const Vars& v) { return cube(v[0], reversed); }, {x})
          .passed);
}

TEST_CASE("parameters: wrong gradients are named, gradients and values are restored", "[gradient_check]") {
  const Tensor<double> x = uniform(Shape{2, 2}, 6);
  Parameter<double> alpha(Shape{}, "alpha");
  alpha.array()[0] = 0.75;

  // A gradient already accumulated in the parameter survives the check.
  alpha.grad_array()[0] = 42.0;
  const Tensor<double> x_before = x;

  const auto correct = [&alpha](Tape<double>& tape, const Vars& v) { return scaled(tape, v[0], alpha, 1.0); };
  const GradientCheckResult good = momnet::check_gradients(correct, {x}, {&alpha});
  INFO(good.worst);
  CHECK(good.passed);
  CHECK(good.checked == 4 + 1);
  CHECK(alpha.grad_array()[0] == 42.0);
  CHECK(alpha.array()[0] == 0.75);
  CHECK(x.matrix() == x_before.matrix());  // the inputs are the caller's, untouched

  const auto wrong = [&alpha](Tape<double>& tape, const Vars& v) { return scaled(tape, v[0], alpha, 2.0); };
  const GradientCheckResult bad = momnet::check_gradients(wrong, {x}, {&alpha});
  CHECK_FALSE(bad.passed);
  CHECK(bad.worst.find("parameter 0 'alpha' [] element 0") != std::string::npos);
  CHECK(bad.max_error == Approx(0.5).epsilon(1e-6));  // |2 a - a| / (2 a)
  CHECK(alpha.grad_array()[0] == 42.0);
  CHECK(alpha.array()[0] == 0.75);

  // check_block_gradients: the same through a block's visit_parameters.
  ScaledBlock block;
  block.alpha.array()[0] = -0.5;
  block.alpha.grad_array()[0] = -7.0;
  const GradientCheckResult block_good = momnet::check_block_gradients(block, x);
  INFO(block_good.worst);
  CHECK(block_good.passed);
  CHECK(block_good.checked == 5);
  block.alpha_factor = 3.0;
  const GradientCheckResult block_bad = momnet::check_block_gradients(block, x);
  CHECK_FALSE(block_bad.passed);
  CHECK(block_bad.worst.find("parameter 0 'alpha'") != std::string::npos);
  CHECK(block.alpha.grad_array()[0] == -7.0);
  CHECK(block.alpha.array()[0] == -0.5);
}

TEST_CASE("a function that throws mid-check leaves the parameters as they were", "[gradient_check]") {
  const Tensor<double> x = uniform(Shape{2, 2}, 7);
  Parameter<double> alpha(Shape{}, "alpha");
  alpha.array()[0] = 0.75;
  alpha.grad_array()[0] = 42.0;
  int evaluations = 0;
  // Evaluation 1 is the analytic pass, 2 to 9 the inputs' differences; the
  // 11th throws in the middle of alpha's, with alpha perturbed to a - h.
  const auto fragile = [&](Tape<double>& tape, const Vars& v) {
    if (++evaluations == 1 + 2 * 4 + 2) throw std::runtime_error("evaluation failed");
    return scaled(tape, v[0], alpha, 1.0);
  };
  REQUIRE_THROWS_WITH(momnet::check_gradients(fragile, {x}, {&alpha}), "evaluation failed");
  CHECK(alpha.array()[0] == 0.75);
  CHECK(alpha.grad_array()[0] == 42.0);
}

namespace {

// y = x^3 / 2 with the reverse rule of cube(): breaks only the input gradient
// when `fault` says so; the forward never changes.
struct CubeBlock {
  using Scalar = double;
  Fault fault;
  Var<double> forward(Tape<double>&, const Var<double>& x) { return momnet::scale(cube(x, fault), 0.5); }
  template <class Visitor>
  void visit_parameters(Visitor&&) {}
};

// The finite-difference step and tolerance the exact mode's 2^-44 rounding needs.
GradientCheckOptions network_check() {
  GradientCheckOptions options;
  options.step = 1e-4;
  options.tolerance = 1e-5;
  return options;
}

template <class Block>
GradientCheckResult check_network(std::vector<Block> blocks, momnet::BackwardMode mode, const Tensor<double>& x) {
  momnet::MomentumOptions options;
  options.gamma = 0.8;
  options.mode = mode;
  momnet::MomentumResidual<Block> net(std::move(blocks), options);
  std::vector<Parameter<double>*> parameters;
  net.visit_parameters([&parameters](Parameter<double>& p) { parameters.push_back(&p); });
  return momnet::check_gradients([&net](Tape<double>& tape, const Vars& v) { return net(tape, v[0]); }, {x},
                                 parameters, network_check());
}

}  // namespace

TEST_CASE("A broken reverse rule fails the whole-network check in every mode, the forward untouched",
          "[gradient_check][momentum]") {
  // The forward is the same with and without the fault: only a reverse rule
  // is wrong, which is what the check exists to catch.
  const Tensor<double> x = uniform(Shape{2, 3}, 8, -0.8, 0.8);
  for (momnet::BackwardMode mode :
       {momnet::BackwardMode::exact, momnet::BackwardMode::stored, momnet::BackwardMode::float_inverse}) {
    INFO("mode " << momnet::to_string(mode));
    // A parameter's reverse rule off by 1.3 in the second of three blocks.
    std::vector<ScaledBlock> scaled_blocks(3);
    for (std::size_t i = 0; i < 3; ++i) scaled_blocks[i].alpha.array()[0] = 0.9 - 0.6 * static_cast<double>(i);
    const GradientCheckResult good = check_network(scaled_blocks, mode, x);
    INFO(good.worst);
    CHECK(good.passed);
    scaled_blocks[1].alpha_factor = 1.3;
    const GradientCheckResult bad = check_network(scaled_blocks, mode, x);
    CHECK_FALSE(bad.passed);
    CHECK(bad.worst.find("parameter 1 'alpha'") != std::string::npos);

    // An input's reverse rule off by 1.5 at one element, in the last block.
    std::vector<CubeBlock> cubes(3);
    CHECK(check_network(cubes, mode, x).passed);
    cubes[2].fault.factor = 1.5;
    cubes[2].fault.element = 4;
    const GradientCheckResult bad_input = check_network(cubes, mode, x);
    CHECK_FALSE(bad_input.passed);
    CHECK(bad_input.worst.find("input 0 [2, 3]") != std::string::npos);
  }
}
