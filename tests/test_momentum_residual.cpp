// MomentumResidual and Residual: bitwise reconstruction at depth, gradients
// against stored backprop and finite differences, flat memory, every option
// and every bad input.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "helpers.hpp"

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

using namespace momnet;

using namespace momnet_test;

TEMPLATE_TEST_CASE("Exact backward rebuilds every x_n and v_n bit for bit at depth 10,000", "[momentum][exact]",
                   float, double) {
  using T = TestType;
  const std::size_t depth = 10000;
  for (double gamma : {0.5, 0.9, 0.99}) {
    INFO("gamma " << gamma);
    MomentumResidual<MLPBlock<T>> net(mlp_blocks<T>(1, 4, 8, 3)[0], depth, options_for(gamma, BackwardMode::exact));
    require_bitwise_rebuild<T>(net, random_input<T>(2, 4, 17));
  }
}

TEMPLATE_TEST_CASE("Stored mode runs the same forward as the exact mode", "[momentum]", float, double) {
  using T = TestType;
  const auto blocks = mlp_blocks<T>(50, 6, 12, 4);
  const Mat<T> input = random_input<T>(5, 6, 8);
  std::vector<Mat<T>> outputs;
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored}) {
    MomentumResidual<MLPBlock<T>> net(blocks, options_for(0.9, mode));
    Tape<T> tape;
    const MomentumOutput<T> out = net.forward(tape, tape.constant(input));
    outputs.push_back(out.x.value());
    outputs.push_back(out.v.value());
  }
  REQUIRE(outputs[0] == outputs[2]);  // x_N, bitwise
  REQUIRE(outputs[1] == outputs[3]);  // v_N, bitwise
}

TEMPLATE_TEST_CASE("Memory-free gradients agree with stored backprop at depth 1,000", "[momentum][exact]", float,
                   double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto blocks = mlp_blocks<T>(1000, 4, 8, 21);
  const Mat<T> input = random_input<T>(3, 4, 22);
  for (double gamma : {0.5, 0.9}) {
    INFO("gamma " << gamma);
    MomentumResidual<MLPBlock<T>> exact(blocks, options_for(gamma, BackwardMode::exact));
    MomentumResidual<MLPBlock<T>> stored(blocks, options_for(gamma, BackwardMode::stored));
    const std::vector<T> g_exact = gradients_of(exact, input);
    const std::vector<T> g_stored = gradients_of(stored, input);
    const double error = relative_error(g_exact, g_stored);
    INFO("relative error " << error);
    CHECK(error <= tolerance);
  }
}

TEST_CASE("Exact gradients match an independent floating-point recurrence at depth 1,000", "[momentum][exact]") {
  // The recurrence written with plain tape operations in double: it differs
  // from the fixed-point forward only by rounding (2^-44 per layer).
  auto blocks = mlp_blocks<double>(1000, 4, 8, 31);
  const Mat<double> input = random_input<double>(3, 4, 32);
  const double gamma = 0.9;
  MomentumResidual<MLPBlock<double>> exact(blocks, options_for(gamma, BackwardMode::exact));
  const std::vector<double> g_exact = gradients_of(exact, input);

  const RationalGamma rounded(gamma, 16);
  const double g = rounded.value(), c = rounded.complement();
  for (auto& block : blocks) zero_grad(block);
  Tape<double> tape;
  const Var<double> x0 = tape.variable(input);
  Var<double> x = x0, v = tape.filled(x0.shape(), 0.0);
  for (auto& block : blocks) {
    v = add(scale(v, g), scale(block.forward(tape, x), c));
    x = add(x, v);
  }
  tape.backward(mean(square(x)));
  std::vector<double> g_plain;
  for (auto& block : blocks) {
    for (Parameter<double>* p : parameters_of(block)) g_plain.insert(g_plain.end(), p->grad_data(), p->grad_data() + p->size());
  }
  g_plain.insert(g_plain.end(), x0.grad().data(), x0.grad().data() + x0.size());
  const double error = relative_error(g_exact, g_plain);
  INFO("relative error " << error);
  CHECK(error <= 1e-9);
}

TEST_CASE("Whole-network gradients pass the finite-difference check in every mode", "[momentum]") {
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(5, 3, 6, 41), options_for(0.8, mode));
    const auto result = check_gradients(
        [&net](Tape<double>& tape, const std::vector<Var<double>>& in) { return net(tape, in[0]); },
        {Tensor<double>(random_input<double>(4, 3, 42))}, parameters_of(net), quantized_check());
    INFO(result.worst);
    CHECK(result.passed);
    CHECK(result.checked == 12 + 5 * (3 * 6 + 6 + 6 * 3 + 3));
  }
}

TEST_CASE("Memory does not grow with depth, except for the bit store", "[momentum][memory]") {
  // One training step (forward, backward, SGD step) of a weight-tied MLP stack.
  const Eigen::Index batch = 32, dim = 16, hidden = 32;
  const Mat<float> input = random_input<float>(batch, dim, 51);
  const double gamma = 0.9;
  auto step_peak = [&](auto& model) {
    SGD<float> sgd(parameters_of(model), {1e-3});
    Tape<float> tape(std::size_t{64} << 10);  // 64 KiB chunks: a fine-grained peak
    const Var<float> x = tape.constant(input);
    tape.backward(mean(square(model(tape, x))));
    sgd.step();
    return tape.memory().peak_bytes();
  };
  const MLPBlock<float> block = mlp_blocks<float>(1, dim, hidden, 52)[0];
  MomentumResidual<MLPBlock<float>> shallow(block, 20, options_for(gamma, BackwardMode::exact));
  MomentumResidual<MLPBlock<float>> deep(block, 2000, options_for(gamma, BackwardMode::exact));
  const std::size_t exact_20 = step_peak(shallow), exact_2000 = step_peak(deep);

  const std::size_t elements = static_cast<std::size_t>(batch * dim);
  const RationalGamma g(gamma, 16);
  const std::size_t allowed = bit_store_bytes_bound(elements, 2000, g) - bit_store_bytes_bound(elements, 20, g) +
                              round_up_to_alignment(elements * 8);
  INFO("exact peak: depth 20 " << exact_20 << " B, depth 2000 " << exact_2000 << " B, growth allowed " << allowed);
  CHECK(exact_2000 - exact_20 <= allowed);

  Residual<MLPBlock<float>> resnet_20(block, 20), resnet_2000(block, 2000);
  const std::size_t residual_20 = step_peak(resnet_20), residual_2000 = step_peak(resnet_2000);
  INFO("residual peak: depth 20 " << residual_20 << " B, depth 2000 " << residual_2000 << " B");
  CHECK(residual_2000 >= 50 * residual_20);
}

TEST_CASE("Training steps on one tape take no new memory after the first, in every mode", "[momentum][memory]") {
  // The exact state (X, V, bit store) and its rebuilding copy are as large as
  // the activations: taken from the system on every step they are
  // page-faulted in anew (about a second per step for a conv stage at batch
  // 128). They must come from the tape's reused memory instead.
  const Eigen::Index batch = 64, dim = 16, hidden = 32;
  const Mat<float> input = random_input<float>(batch, dim, 53);
  const MLPBlock<float> block = mlp_blocks<float>(1, dim, hidden, 54)[0];
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored}) {
    for (bool with_gradients : {true, false}) {
      INFO("mode " << to_string(mode) << (with_gradients ? ", training step" : ", no-grad forward"));
      MomentumResidual<MLPBlock<float>> net(block, 30, options_for(0.9, mode));
      SGD<float> sgd(parameters_of(net), {1e-3});
      Tape<float> tape;
      std::vector<std::size_t> counts;
      for (int step = 0; step < 4; ++step) {
        tape.clear();
        sgd.zero_grad();
        std::optional<Tape<float>::NoGradScope> no_grad;
        if (!with_gradients) no_grad.emplace(tape);
        const Var<float> out = net(tape, tape.constant(input));
        if (with_gradients) {
          tape.backward(mean(square(out)));
          sgd.step();
        }
        counts.push_back(tape.memory().allocation_count());
      }
      INFO("allocations after each step: " << counts[0] << ", " << counts[1] << ", " << counts[2] << ", "
                                           << counts[3]);
      CHECK(counts[3] == counts[1]);
      CHECK(counts[2] == counts[1]);
    }
  }
}

TEST_CASE("Init velocity: v_0 = g(x_0) receives gradients through its block", "[momentum]") {
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(4, 3, 5, 61), options_for(0.7, BackwardMode::exact));
  MLPBlock<double> init = mlp_blocks<double>(1, 3, 4, 62)[0];
  std::vector<Parameter<double>*> parameters = parameters_of(net);
  for (Parameter<double>* p : parameters_of(init)) parameters.push_back(p);
  const auto result = check_gradients(
      [&](Tape<double>& tape, const std::vector<Var<double>>& in) {
        const MomentumOutput<double> out = net.forward(tape, in[0], init.forward(tape, in[0]));
        return add(out.x, scale(out.v, 0.5));  // both outputs carry gradient
      },
      {Tensor<double>(random_input<double>(3, 3, 63))}, parameters, quantized_check());
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("The velocity output alone carries gradient", "[momentum]") {
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 3, 5, 64), options_for(0.6, BackwardMode::exact));
  const auto result = check_gradients(
      [&](Tape<double>& tape, const std::vector<Var<double>>& in) { return net.forward(tape, in[0], in[1]).v; },
      {Tensor<double>(random_input<double>(2, 3, 65)), Tensor<double>(random_input<double>(2, 3, 66))},
      parameters_of(net), quantized_check());
  INFO(result.worst);
  CHECK(result.passed);
}

namespace {

// g(x) = x + MLP(x): a block that adds its own input.
struct NonResidualBlock {
  using Scalar = double;
  MLPBlock<double> inner;
  Var<double> forward(Tape<double>& tape, const Var<double>& x) { return add(x, inner.forward(tape, x)); }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    inner.visit_parameters(visit);
  }
};

// g(x) = 3 (x + MLP(x)) in float: g(x) - x is not exact (g and x are not
// within a factor of two), so x + (g(x) - x) and g(x) differ in the last bit.
struct Whole {
  using Scalar = float;
  MLPBlock<float> inner;
  Var<float> forward(Tape<float>& tape, const Var<float>& x) { return scale(add(x, inner.forward(tape, x)), 3.0f); }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    inner.visit_parameters(visit);
  }
};

// f(x, context) = MLP(x) + context W: reads an extra input every layer.
struct ContextBlock {
  using Scalar = double;
  MLPBlock<double> mlp;
  Linear<double> project;
  Var<double> forward(Tape<double>& tape, const Var<double>& x, const Var<double>& context) {
    return add(mlp.forward(tape, x), project.forward(tape, context));
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    mlp.visit_parameters(visit);
    project.visit_parameters(visit);
  }
};

// Returns twice the features: breaks the residual contract.
struct Widening {
  using Scalar = double;
  Var<double> forward(Tape<double>&, const Var<double>& x) { return concat(x, x); }
  template <class Visitor>
  void visit_parameters(Visitor&&) {}
};

// Grows its input a thousandfold: overflows the fixed-point range.
struct Exploding {
  using Scalar = double;
  Var<double> forward(Tape<double>&, const Var<double>& x) { return scale(x, 1e3); }
  template <class Visitor>
  void visit_parameters(Visitor&&) {}
};

// A different output on every call: the rebuild cannot match the forward.
struct Drifting {
  using Scalar = double;
  Parameter<double> w{Shape{1}, "w"};
  int calls = 0;
  Var<double> forward(Tape<double>& t, const Var<double>& x) {
    return mul(tanh(x), scale(t.param(w), 1.0 + 1e-6 * ++calls));
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    visit(w);
  }
};

}  // namespace

TEST_CASE("Non-residual blocks: f(x) = g(x) - x", "[momentum]") {
  const auto inner = mlp_blocks<double>(3, 3, 5, 71);
  std::vector<NonResidualBlock> blocks;
  for (const auto& b : inner) blocks.push_back(NonResidualBlock{b});
  // The exact and float sweeps take f = g(x) - x off the tape and subtract
  // the seed in the backward themselves; stored mode records the subtraction.
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumOptions options = options_for(0.75, mode);
    options.residual_blocks = false;
    MomentumResidual<NonResidualBlock> net(blocks, options);
    const Mat<double> input = random_input<double>(2, 3, 72);
    // Same outputs as the residual form of the inner blocks, to rounding.
    MomentumResidual<MLPBlock<double>> residual_form(inner, options_for(0.75, mode));
    Tape<double> tape;
    const Mat<double> a = net(tape, tape.constant(input)).value();
    const Mat<double> b = residual_form(tape, tape.constant(input)).value();
    CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-12);
    const auto result = check_gradients(
        [&](Tape<double>& t, const std::vector<Var<double>>& in) { return net(t, in[0]); },
        {Tensor<double>(input)}, parameters_of(net), quantized_check());
    INFO(result.worst);
    CHECK(result.passed);
  }
}

TEST_CASE("A plain stack of non-residual blocks passes each block's output on unchanged", "[momentum]") {
  // x_{n+1} = g(x_n), not x_n + (g(x_n) - x_n), which rounds differently.
  const auto inner = mlp_blocks<float>(4, 6, 8, 73);
  std::vector<Whole> blocks;
  for (const auto& b : inner) blocks.push_back(Whole{b});
  ResidualOptions options;
  options.residual_blocks = false;
  Residual<Whole> net(blocks, options);
  Tape<float> tape;
  const Var<float> x = tape.constant(random_input<float>(16, 6, 74));
  Var<float> expected = x;
  for (Whole& block : blocks) expected = block.forward(tape, expected);
  const Var<float> out = net(tape, x);
  CHECK((out.value().array() == expected.value().array()).all());
  // Its gradients, in double, against finite differences.
  std::vector<NonResidualBlock> double_blocks;
  for (const auto& b : mlp_blocks<double>(3, 3, 5, 75)) double_blocks.push_back(NonResidualBlock{b});
  Residual<NonResidualBlock> double_net(double_blocks, options);
  const auto result = check_gradients(
      [&](Tape<double>& t, const std::vector<Var<double>>& in) { return double_net(t, in[0]); },
      {Tensor<double>(random_input<double>(2, 3, 76))}, parameters_of(double_net));
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("Extra per-block inputs receive gradients", "[momentum]") {
  Rng rng(81);
  std::vector<ContextBlock> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(ContextBlock{MLPBlock<double>(3, 5, rng), Linear<double>(2, 3, rng)});
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<ContextBlock> net(blocks, options_for(0.6, mode));
    Residual<ContextBlock> resnet(blocks);
    for (int which = 0; which < 2; ++which) {
      const auto result = check_gradients(
          [&](Tape<double>& tape, const std::vector<Var<double>>& in) {
            return which == 0 ? net(tape, in[0], in[1]) : resnet(tape, in[0], in[1]);
          },
          {Tensor<double>(random_input<double>(4, 3, 82)), Tensor<double>(random_input<double>(4, 2, 83))},
          which == 0 ? parameters_of(net) : parameters_of(resnet), quantized_check());
      INFO(result.worst);
      CHECK(result.passed);
    }
  }
}

TEST_CASE("Weight-tied depth sums the gradients of every layer", "[momentum]") {
  const MLPBlock<double> block = mlp_blocks<double>(1, 3, 5, 91)[0];
  MomentumResidual<MLPBlock<double>> tied(block, 6, options_for(0.8, BackwardMode::exact));
  CHECK(tied.stack().weight_tied());
  CHECK(parameter_count(tied) == 3 * 5 + 5 + 5 * 3 + 3);
  const Mat<double> input = random_input<double>(2, 3, 92);
  const auto result = check_gradients(
      [&](Tape<double>& tape, const std::vector<Var<double>>& in) { return tied(tape, in[0]); },
      {Tensor<double>(input)}, parameters_of(tied), quantized_check());
  INFO(result.worst);
  CHECK(result.passed);
  // The same block copied into six untied layers: its gradients, summed, are the tied gradient.
  MomentumResidual<MLPBlock<double>> untied(std::vector<MLPBlock<double>>(6, block),
                                            options_for(0.8, BackwardMode::exact));
  const std::vector<double> g_tied = gradients_of(tied, input);
  const std::vector<double> g_untied = gradients_of(untied, input);
  const std::size_t per_block = static_cast<std::size_t>(parameter_count(tied));
  std::vector<double> summed(per_block, 0.0);
  for (std::size_t layer = 0; layer < 6; ++layer) {
    for (std::size_t i = 0; i < per_block; ++i) summed[i] += g_untied[layer * per_block + i];
  }
  std::vector<double> tied_parameters(g_tied.begin(), g_tied.begin() + static_cast<std::ptrdiff_t>(per_block));
  CHECK(relative_error(tied_parameters, summed) <= 1e-12);
}

TEST_CASE("to_momentum converts a residual network with a copy of its parameters", "[momentum]") {
  Residual<MLPBlock<double>> resnet(mlp_blocks<double>(4, 3, 5, 101));
  MomentumResidual<MLPBlock<double>> net = to_momentum(resnet, 0.9);
  CHECK(net.depth() == 4);
  CHECK(net.options().gamma == 0.9);
  auto ours = parameters_of(net);
  auto theirs = parameters_of(resnet);
  REQUIRE(ours.size() == theirs.size());
  for (std::size_t i = 0; i < ours.size(); ++i) {
    CHECK(ours[i]->value() == theirs[i]->value());
    CHECK(ours[i]->value_data() != theirs[i]->value_data());  // a copy, not shared
  }
  const Mat<double> input = random_input<double>(2, 3, 102);
  const auto result = check_gradients(
      [&](Tape<double>& tape, const std::vector<Var<double>>& in) { return net(tape, in[0]); },
      {Tensor<double>(input)}, parameters_of(net), quantized_check());
  INFO(result.worst);
  CHECK(result.passed);
  // gamma = 0 in stored mode is the ResNet itself, up to fixed-point rounding.
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  MomentumResidual<MLPBlock<double>> as_resnet = to_momentum(resnet, 0.0, stored);
  Tape<double> tape;
  const Mat<double> a = as_resnet(tape, tape.constant(input)).value();
  const Mat<double> b = resnet(tape, tape.constant(input)).value();
  CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-12);
}

TEMPLATE_TEST_CASE("evaluate and inverse rebuild the input exactly at depth 10,000", "[momentum][exact]", float,
                   double) {
  using T = TestType;
  MomentumResidual<MLPBlock<T>> net(mlp_blocks<T>(1, 4, 8, 111)[0], 10000, options_for(0.9, BackwardMode::exact));
  const Tensor<T> x0(random_input<T>(2, 4, 112));
  const Tensor<T> v0(random_input<T>(2, 4, 113, 0.1));
  MomentumState<T> state = net.evaluate(x0, &v0);
  CHECK(state.layer() == 10000);
  CHECK(1 + state.exact().spill_count() <= bit_store_words_per_element(10000, net.gamma()));
  const Tensor<T> x_out = state.x();
  CHECK((x_out.array() - x0.array()).abs().maxCoeff() > T(1));  // it moved
  net.inverse(state);
  CHECK(state.layer() == 0);
  // Bitwise equal to the input as held in fixed point: round(x 2^F) 2^-F.
  const int F = net.fixed_point().fraction_bits();
  auto in_fixed_point = [F](const Tensor<T>& t) {
    return t.array().unaryExpr([F](T value) { return static_cast<T>(std::ldexp(std::nearbyint(std::ldexp(static_cast<double>(value), F)), -F)); }).eval();
  };
  CHECK(state.x().array().cwiseEqual(in_fixed_point(x0)).all());
  CHECK(state.v().array().cwiseEqual(in_fixed_point(v0)).all());
  REQUIRE_THROWS_WITH(net.inverse(state), Catch::Contains("stands at layer 0, not at the output"));
  // The spills are given back with the bits: what is left is the hot words.
  CHECK(state.bit_store_bytes() == round_up_to_alignment(static_cast<std::size_t>(x0.size()) * 8));
}

TEST_CASE("An inverse that fails part-way leaves a state that refuses another", "[momentum][errors]") {
  Drifting drifting;
  drifting.w.value().setConstant(0.5);
  MomentumResidual<Drifting> net(drifting, 50, options_for(0.9, BackwardMode::exact));
  const Tensor<double> x0(random_input<double>(2, 3, 114));
  MomentumState<double> state = net.evaluate(x0);
  REQUIRE_THROWS_AS(net.inverse(state), ReconstructionError);
  CHECK(state.layer() == MomentumState<double>::broken);
  REQUIRE_THROWS_WITH(net.inverse(state), Catch::Contains("an earlier inverse of this state failed part-way"));
}

TEST_CASE("backward works from inside a NoGradScope", "[momentum]") {
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 3, 5, 115), options_for(0.9, BackwardMode::exact));
  const Mat<double> input = random_input<double>(2, 3, 116);
  const std::vector<double> expected = gradients_of(net, input);
  zero_grad(net);
  Tape<double> tape;
  const Var<double> x = tape.variable(input);
  const Var<double> loss = mean(square(net(tape, x)));
  {
    Tape<double>::NoGradScope no_grad(tape);  // e.g. an evaluation loop around the step
    tape.backward(loss);
    CHECK_FALSE(tape.grad_enabled());
  }
  std::vector<double> got;
  for (Parameter<double>* p : parameters_of(net)) got.insert(got.end(), p->grad_data(), p->grad_data() + p->size());
  got.insert(got.end(), x.grad().data(), x.grad().data() + x.size());
  CHECK(got == expected);
}

TEMPLATE_TEST_CASE("float_inverse drifts with depth, and says so instead of returning garbage", "[momentum]", float,
                   double) {
  using T = TestType;
  const Mat<T> input = random_input<T>(3, 4, 121);
  const Tensor<T> input_rows(input);  // momnet's row-major order, as the observer sees it
  const MLPBlock<T> block = mlp_blocks<T>(1, 4, 8, 122)[0];
  // Drift of the rebuilt x_0, measured through the observer at layer 0.
  auto drift_at = [&](std::size_t depth) {
    MomentumOptions options = options_for(0.9, BackwardMode::float_inverse);
    options.float_drift_tolerance = INFINITY;
    MomentumResidual<MLPBlock<T>> net(block, depth, options);
    double drift = 0;
    net.set_observer([&](const LayerEvent<T>& e) {
      if (e.phase == LayerEvent<T>::Phase::backward && e.layer == 0) {
        for (Eigen::Index i = 0; i < e.elements; ++i) {
          drift = std::max(drift, std::abs(static_cast<double>(e.x[i] - input_rows.data()[i])));
        }
      }
    });
    Tape<T> tape;
    tape.backward(sum(net(tape, tape.variable(input))));
    return drift;
  };
  const double d10 = drift_at(10), d100 = drift_at(100), d400 = drift_at(400);
  INFO("drift of the rebuilt input: depth 10 " << d10 << ", 100 " << d100 << ", 400 " << d400);
  CHECK(d10 <= (std::is_same_v<T, float> ? 1e-5 : 1e-13));
  CHECK(d100 > d10);
  CHECK(d400 > 1e-3);  // far past any useful gradient
  // With the default tolerance the deep network refuses.
  MomentumResidual<MLPBlock<T>> deep(block, 400, options_for(0.9, BackwardMode::float_inverse));
  Tape<T> tape;
  const Var<T> loss = sum(deep(tape, tape.variable(input)));
  REQUIRE_THROWS_AS(tape.backward(loss), ReconstructionError);
  Tape<T> again;
  const Var<T> loss2 = sum(deep(again, again.variable(input)));
  REQUIRE_THROWS_WITH(again.backward(loss2), Catch::Contains("float_inverse backward drifted"));
  // The shallow one agrees with stored backprop.
  MomentumResidual<MLPBlock<T>> shallow(block, 10, options_for(0.9, BackwardMode::float_inverse));
  MomentumResidual<MLPBlock<T>> stored(block, 10, options_for(0.9, BackwardMode::stored));
  CHECK(relative_error(gradients_of(shallow, input), gradients_of(stored, input)) <=
        (std::is_same_v<T, float> ? 1e-3 : 1e-8));
}

TEST_CASE("Bad inputs are refused with clear errors", "[momentum][errors]") {
  const MLPBlock<double> block = mlp_blocks<double>(1, 3, 4, 131)[0];
  using Net = MomentumResidual<MLPBlock<double>>;
  SECTION("gamma outside [0, 1]") {
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(1.5, BackwardMode::exact)),
                        Catch::Contains("gamma must lie in [0, 1], got 1.5"));
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(-0.2, BackwardMode::stored)),
                        Catch::Contains("gamma must lie in [0, 1], got -0.2"));
    REQUIRE_THROWS_AS(Net(block, 3, options_for(std::nan(""), BackwardMode::exact)), std::invalid_argument);
  }
  SECTION("gamma = 0 in a memory-free mode") {
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(0.0, BackwardMode::exact)), Catch::Contains("has no inverse"));
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(0.0, BackwardMode::float_inverse)),
                        Catch::Contains("has no inverse"));
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(1e-6, BackwardMode::stored)),
                        Catch::Contains("gamma = 1e-06 rounds to 0 at gamma_bits = 16; use more gamma_bits"));
    REQUIRE_THROWS_WITH(Net(block, 3, options_for(0.999995, BackwardMode::exact)),
                        Catch::Contains("rounds to 1 at gamma_bits = 16"));
    MomentumOptions finer = options_for(0.999995, BackwardMode::exact);
    finer.gamma_bits = 24;
    REQUIRE_NOTHROW(Net(block, 3, finer));
    REQUIRE_NOTHROW(Net(block, 3, options_for(0.0, BackwardMode::stored)));
  }
  SECTION("fixed-point options") {
    MomentumOptions options;
    options.fraction_bits = 70;
    REQUIRE_THROWS_WITH(Net(block, 3, options), Catch::Contains("fraction_bits must lie in [1, 60], got 70"));
    options.fraction_bits = 0;
    options.gamma_bits = 27;
    REQUIRE_THROWS_WITH(Net(block, 3, options), Catch::Contains("gamma_bits must lie in [1, 26], got 27"));
    options.gamma_bits = 16;
    options.float_drift_tolerance = -1;
    REQUIRE_THROWS_WITH(Net(block, 3, options), Catch::Contains("float_drift_tolerance must be >= 0"));
  }
  Net net(block, 3, options_for(0.9, BackwardMode::exact));
  Tape<double> tape;
  SECTION("an input the block does not accept, or a block that changes the shape") {
    REQUIRE_THROWS_WITH(net(tape, tape.constant(random_input<double>(2, 5, 1))),
                        Catch::Contains("MLPBlock: expects [..., 3], got [2, 5]"));
    MomentumResidual<Widening> widening(Widening{}, 2, options_for(0.9, BackwardMode::exact));
    REQUIRE_THROWS_WITH(widening(tape, tape.constant(random_input<double>(2, 3, 1))),
                        Catch::Contains("block 0 returned [2, 6] for an input of [2, 3]"));
    Residual<Widening> widening_resnet(Widening{}, 2);
    REQUIRE_THROWS_WITH(widening_resnet(tape, tape.constant(random_input<double>(2, 3, 1))),
                        Catch::Contains("momnet::Residual: block 0 returned [2, 6]"));
  }
  SECTION("NaN, Inf and values outside the fixed-point range") {
    Mat<double> input = random_input<double>(2, 3, 1);
    input(1, 2) = std::nan("");
    REQUIRE_THROWS_AS(net(tape, tape.constant(input)), std::domain_error);
    REQUIRE_THROWS_WITH(net(tape, tape.constant(input)), Catch::Contains("the input x holds nan at element 5"));
    input(1, 2) = INFINITY;
    REQUIRE_THROWS_WITH(net(tape, tape.constant(input)), Catch::Contains("the input x holds inf at element 5"));
    input(1, 2) = 1e6;  // the double range is +-2^18
    REQUIRE_THROWS_AS(net(tape, tape.constant(input)), std::range_error);
    REQUIRE_THROWS_WITH(net(tape, tape.constant(input)), Catch::Contains("outside the exact range +-262144"));
  }
  SECTION("a block that overflows in the middle of the network names its layer") {
    MomentumResidual<Exploding> exploding(Exploding{}, 10, options_for(0.5, BackwardMode::exact));
    REQUIRE_THROWS_AS(exploding(tape, tape.constant(random_input<double>(2, 3, 1))), std::range_error);
    REQUIRE_THROWS_WITH(exploding(tape, tape.constant(random_input<double>(2, 3, 1))), Catch::Contains("layer 2: the block returned"));
  }
  SECTION("velocity and context mismatches") {
    const Var<double> x = tape.constant(random_input<double>(2, 3, 1));
    REQUIRE_THROWS_WITH(net.forward(tape, x, tape.constant(random_input<double>(2, 2, 1))),
                        Catch::Contains("the velocity must have the shape of x: [2, 3] and [2, 2]"));
    REQUIRE_THROWS_WITH(net.forward(tape, x, Var<double>(), x),
                        Catch::Contains("the stack was given 1 extra input(s), but the block has no forward that takes one extra input"));
    Tape<double> other;
    REQUIRE_THROWS_WITH(net(other, x), Catch::Contains("x belongs to another tape"));
  }
  SECTION("a block that is not deterministic is caught by the exact backward") {
    Drifting drifting;
    drifting.w.value().setConstant(0.5);
    MomentumResidual<Drifting> bad(drifting, 4, options_for(0.9, BackwardMode::exact));
    const Var<double> loss = sum(bad(tape, tape.variable(random_input<double>(2, 3, 1))));
    REQUIRE_THROWS_AS(tape.backward(loss), ReconstructionError);
  }
}
