// The foundation for real networks: blocks that take a call context (layer,
// step, train/eval, replay, extra inputs), replayable randomness, stateful
// blocks, named state and Sequential compositions, multi-output nodes, and
// the tape's guards against stale or foreign values.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "helpers.hpp"
#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

using namespace momnet;
using namespace momnet_test;

namespace {

// f(x) = mlp(x) * mask / keep in training, mlp(x) in eval: a dropout whose
// mask is drawn from the context's generator, keyed by (seed, step, layer).
template <class T>
class MaskedMLP {
 public:
  using Scalar = T;
  MaskedMLP(Eigen::Index dim, Eigen::Index hidden, Rng& rng, double keep = 0.7) : mlp_(dim, hidden, rng), keep_(keep) {}

  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    const Var<T> h = mlp_.forward(tape, x);
    if (!context.training) return h;
    const CounterRng random = context.random();
    T* mask = tape.allocate(h.size());
    for (Eigen::Index i = 0; i < h.size(); ++i) {
      mask[i] = random.bernoulli(static_cast<std::uint64_t>(i), keep_) ? static_cast<T>(1.0 / keep_) : T(0);
    }
    return mul(h, tape.leaf(h.shape(), mask, false));
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("mlp", mlp_);
  }

 private:
  MLPBlock<T> mlp_;
  double keep_;
};

// Counts the calls that are not replays, in a buffer named `calls`; also
// records the last layer, step and mode it saw.
struct Counting {
  using Scalar = double;
  Linear<double> fc;
  Tensor<std::int64_t> calls{Shape{}};
  std::size_t replays = 0;
  bool own_mode = true;  // set by set_training
  bool seen_training = true;

  explicit Counting(Rng& rng) : fc(3, 3, rng) {}
  Var<double> forward(Tape<double>& tape, const Var<double>& x, const CallContext<double>& context) {
    if (context.replay) {
      ++replays;
    } else {
      ++calls.data()[0];
    }
    seen_training = context.training;
    return tanh(fc.forward(tape, x));
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("fc", fc);
    visit.buffer("calls", calls);
  }
  void set_training(bool training) { own_mode = training; }
};

// An older block: only visit_parameters, names from Parameter::name().
struct Legacy {
  using Scalar = double;
  Parameter<double> a{Shape{2}, "scale"}, b{Shape{2}};
  template <class V>
  void visit_parameters(V&& visit) {
    visit(a);
    visit(b);
  }
};

// f(x; a, b) = tanh(W x) * a + b: both extras receive gradients in every mode.
struct TwoExtras {
  using Scalar = double;
  Linear<double> fc;
  explicit TwoExtras(Rng& rng) : fc(3, 3, rng) {}
  Var<double> forward(Tape<double>& tape, const Var<double>& x, const CallContext<double>& c) {
    return add(mul(tanh(fc.forward(tape, x)), c.extra(0)), c.extra(1));
  }
  template <class V>
  void visit_state(V& visit) {
    visit.child("fc", fc);
  }
};
// f(x; c) = c: its output is recorded before the layer.
struct ReturnsExtra {
  using Scalar = double;
  Var<double> forward(Tape<double>&, const Var<double>&, const Var<double>& c) { return c; }
  template <class V>
  void visit_state(V&) {}
};

// The README's example block, word for word.
template <class T>
struct DropoutMLP {
  using Scalar = T;
  MLPBlock<T> mlp;
  double keep = 0.9;

  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    Var<T> h = mlp.forward(tape, x);
    if (!context.training) return h;
    const CounterRng random = context.random();  // keyed by (seed, step, layer): replays exactly
    T* mask = tape.allocate(h.size());
    for (Eigen::Index i = 0; i < h.size(); ++i) mask[i] = random.bernoulli(i, keep) ? T(1 / keep) : T(0);
    return mul(h, tape.leaf(h.shape(), mask, false));
  }
  template <class Visitor> void visit_state(Visitor& visit) { visit.child("mlp", mlp); }
};

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Parameter<double>*>>& named) {
  std::vector<std::string> names;
  for (const auto& entry : named) names.push_back(entry.first);
  return names;
}

}  // namespace

TEST_CASE("CounterRng: the same key gives the same bits, any other key different ones", "[foundation][random]") {
  const CounterRng a(7, 3, 11), same(7, 3, 11);
  const CounterRng other_step(7, 4, 11), other_layer(7, 3, 12), other_seed(8, 3, 11), other_stream(7, 3, 11, 1);
  int equal_bits = 0;
  double mean_value = 0;
  for (std::uint64_t i = 0; i < 4096; ++i) {
    REQUIRE(a.bits(i) == same.bits(i));
    equal_bits += a.bits(i) == other_step.bits(i) || a.bits(i) == other_layer.bits(i) ||
                  a.bits(i) == other_seed.bits(i) || a.bits(i) == other_stream.bits(i) || a.bits(i) == a.bits(i + 1);
    mean_value += a.uniform(i) / 4096;
  }
  CHECK(equal_bits == 0);
  CHECK(std::abs(mean_value - 0.5) < 0.02);
}

TEST_CASE("A random mask keyed by (step, layer) in a weight-tied stack of depth 1,000 rebuilds bitwise",
          "[foundation][context][exact]") {
  Rng rng(3);
  const MaskedMLP<double> block(4, 8, rng);
  const Mat<double> input = random_input<double>(3, 4, 4);
  for (double gamma : {0.5, 0.9}) {
    INFO("gamma " << gamma);
    MomentumResidual<MaskedMLP<double>> net(block, 1000, options_for(gamma, BackwardMode::exact));
    require_bitwise_rebuild<double>(net, input);

    // Exact gradients equal the stored mode's, step for step.
    MomentumResidual<MaskedMLP<double>> exact(block, 1000, options_for(gamma, BackwardMode::exact));
    MomentumResidual<MaskedMLP<double>> stored(block, 1000, options_for(gamma, BackwardMode::stored));
    for (int step = 0; step < 2; ++step) {
      const std::vector<double> g_exact = gradients_of(exact, input);
      const std::vector<double> g_stored = gradients_of(stored, input);
      INFO("step " << step);
      CHECK(relative_error(g_exact, g_stored) <= 1e-12);
    }
    // The mask really depends on the step: two steps give different gradients.
    MomentumResidual<MaskedMLP<double>> again(block, 1000, options_for(gamma, BackwardMode::exact));
    const std::vector<double> first = gradients_of(again, input);
    const std::vector<double> second = gradients_of(again, input);
    CHECK(relative_error(first, second) > 1e-3);
    again.set_step(0);
    CHECK(gradients_of(again, input) == first);
  }
}

TEST_CASE("A stateful block is called once per layer per training step in every mode", "[foundation][context]") {
  Rng rng(5);
  const Mat<double> input = random_input<double>(2, 3, 6);
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    std::vector<Counting> blocks;
    for (int i = 0; i < 5; ++i) blocks.emplace_back(rng);
    MomentumResidual<Counting> net(blocks, options_for(0.9, mode));
    for (int step = 1; step <= 3; ++step) {
      gradients_of(net, input);
      for (Counting& b : net.stack().blocks()) {
        CHECK(b.calls.data()[0] == step);
        CHECK(b.replays == static_cast<std::size_t>(mode == BackwardMode::stored ? 0 : step));
      }
    }
    CHECK(net.step() == 3);
    // The tied stack: its one block counts every layer of every step.
    MomentumResidual<Counting> tied(Counting(rng), 4, options_for(0.9, mode));
    gradients_of(tied, input);
    gradients_of(tied, input);
    CHECK(tied.stack().blocks()[0].calls.data()[0] == 8);
  }
  // evaluate is a forward; inverse replays it.
  std::vector<Counting> blocks;
  for (int i = 0; i < 3; ++i) blocks.emplace_back(rng);
  MomentumResidual<Counting> net(blocks, options_for(0.5, BackwardMode::exact));
  MomentumState<double> state = net.evaluate(Tensor<double>(input));
  net.inverse(state);
  for (Counting& b : net.stack().blocks()) {
    CHECK(b.calls.data()[0] == 1);
    CHECK(b.replays == 1);
  }
}

TEST_CASE("train and eval reach every module, and the blocks see the mode in their context", "[foundation][modules]") {
  Rng rng(8);
  Sequential<double> model;
  model.add(Linear<double>(3, 3, rng));
  model.add(Residual<Counting>(std::vector<Counting>{Counting(rng), Counting(rng)}));
  Sequential<double> inner;
  inner.add(MomentumResidual<Counting>(Counting(rng), 3, options_for(0.9, BackwardMode::exact)));
  model.add("inner", std::move(inner));

  eval(model);
  Tape<double> tape;
  model(tape, tape.constant(random_input<double>(2, 3, 9)));
  auto& residual = model.get<Residual<Counting>>(1);
  auto& momentum = model.get<Sequential<double>>(2).get<MomentumResidual<Counting>>(0);
  CHECK_FALSE(residual.training());
  CHECK_FALSE(momentum.training());
  for (Counting& b : residual.stack().blocks()) {
    CHECK_FALSE(b.own_mode);
    CHECK_FALSE(b.seen_training);
  }
  CHECK_FALSE(momentum.stack().blocks()[0].own_mode);
  CHECK_FALSE(momentum.stack().blocks()[0].seen_training);
  train(model);
  model(tape, tape.constant(random_input<double>(2, 3, 9)));
  CHECK(residual.stack().blocks()[1].seen_training);
  CHECK(momentum.stack().blocks()[0].seen_training);
}

TEST_CASE("Named parameters and buffers follow PyTorch's state_dict conventions", "[foundation][modules]") {
  Rng rng(10);
  Sequential<double> model;
  model.add("stem", Linear<double>(4, 6, rng));
  model.add(Residual<MLPBlock<double>>(MLPBlock<double>(6, 8, rng), 50));                   // tied: named once
  model.add(MomentumResidual<MLPBlock<double>>(mlp_blocks<double>(2, 6, 8, 11), {}));      // untied
  model.add(Linear<double>(6, 2, rng, /*with_bias=*/false));
  const std::vector<std::string> expected{
      "stem.weight",     "stem.bias",     "1.0.fc1.weight", "1.0.fc1.bias", "1.0.fc2.weight", "1.0.fc2.bias",
      "2.0.fc1.weight",  "2.0.fc1.bias",  "2.0.fc2.weight", "2.0.fc2.bias", "2.1.fc1.weight", "2.1.fc1.bias",
      "2.1.fc2.weight",  "2.1.fc2.bias",  "3.weight"};
  CHECK(names_of(named_parameters(model)) == expected);
  CHECK(parameters_of(model).size() == expected.size());
  CHECK(named_parameters(model)[0].second == &model.get<Linear<double>>(0).weight());

  // Buffers, and a member added under the empty name joins its parent's names.
  Sequential<double> stage;
  stage.add(Counting(rng));
  Residual<Counting> rest(std::vector<Counting>{Counting(rng), Counting(rng)});
  stage.add("rest", std::move(rest));
  Sequential<double> network;
  network.add("layer1", std::move(stage));
  const auto buffers = named_buffers(network);
  REQUIRE(buffers.size() == 3);
  CHECK(buffers[0].first == "layer1.0.calls");
  CHECK(buffers[1].first == "layer1.rest.0.calls");
  CHECK(buffers[2].first == "layer1.rest.1.calls");
  CHECK(buffers[0].second.integer != nullptr);
  CHECK(buffers[0].second.shape() == Shape{});

  Sequential<double> flat;
  flat.add("", Linear<double>(2, 2, rng));
  CHECK(names_of(named_parameters(flat)) == std::vector<std::string>{"weight", "bias"});

  // Older blocks with only visit_parameters are named by Parameter::name().
  Legacy legacy;
  CHECK(names_of(named_parameters(legacy)) == std::vector<std::string>{"scale", "param1"});

  REQUIRE_THROWS_EXACT(model.add("stem", Linear<double>(2, 2, rng)), std::invalid_argument, "momnet::Sequential::add",
                       "'stem' exists already");
  REQUIRE_THROWS_EXACT(model.get<Linear<double>>(1), std::invalid_argument, "momnet::Sequential::get", "member 1");
  REQUIRE_THROWS_EXACT(model.get<Linear<double>>(9), std::out_of_range, "member 9 of 4");
}

TEST_CASE("to_momentum converts every residual stack of a composition and keeps the rest", "[foundation][modules]") {
  Rng rng(12);
  Sequential<double> stage;
  stage.add(Linear<double>(3, 5, rng));  // the shape-changing first block: kept
  stage.add(Residual<MLPBlock<double>>(mlp_blocks<double>(3, 5, 7, 13)));
  Sequential<double> resnet;
  resnet.add("layer1", std::move(stage));
  resnet.add("fc", Linear<double>(5, 2, rng));

  Sequential<double> momentum = to_momentum(resnet, 0.9);
  Sequential<double>& converted = momentum.get<Sequential<double>>(0);
  CHECK_NOTHROW(converted.get<Linear<double>>(0));
  auto& stack = converted.get<MomentumResidual<MLPBlock<double>>>(1);
  CHECK(stack.options().gamma == 0.9);
  CHECK(stack.depth() == 3);
  const auto before = named_parameters(resnet);
  const auto after = named_parameters(momentum);
  REQUIRE(names_of(before) == names_of(after));
  for (std::size_t i = 0; i < before.size(); ++i) {
    CHECK(before[i].second != after[i].second);  // copies
    CHECK(before[i].second->value() == after[i].second->value());
  }
  // gamma = 0 in stored mode is the ResNet itself, up to fixed-point rounding.
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  Sequential<double> as_resnet = to_momentum(resnet, 0.0, stored);
  const Tensor<double> x(random_input<double>(4, 3, 14));
  const Tensor<double> y = resnet.infer(x), z = as_resnet.infer(x);
  REQUIRE(y.shape() == Shape{4, 2});
  CHECK((y.array() - z.array()).abs().maxCoeff() < 1e-9);
  // infer equals a recorded forward.
  Tape<double> tape;
  const Var<double> recorded = resnet(tape, tape.constant(x));
  CHECK((recorded.array() - y.array()).abs().maxCoeff() == 0.0);
}

TEST_CASE("Blocks with several extra inputs, and a block returning an extra input unchanged", "[foundation][context]") {
  Rng rng(15);
  const TwoExtras block(rng);
  const Tensor<double> x0 = uniform(Shape{2, 3}, 16), a0 = uniform(Shape{3}, 17), b0 = uniform(Shape{2, 3}, 18);
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<TwoExtras> net(std::vector<TwoExtras>{block, block, block}, options_for(0.8, mode));
    const auto result = check_gradients(
        [&net](Tape<double>& tape, const std::vector<Var<double>>& v) { return net(tape, v[0], {v[1], v[2]}); },
        {x0, a0, b0}, parameters_of(net), quantized_check());
    INFO(result.worst);
    CHECK(result.passed);

    MomentumResidual<ReturnsExtra> constant(ReturnsExtra{}, 4, options_for(0.5, mode));
    const auto direct = check_gradients(
        [&constant](Tape<double>& tape, const std::vector<Var<double>>& v) { return constant(tape, v[0], v[1]); },
        {x0, b0}, {}, quantized_check());
    INFO(direct.worst);
    CHECK(direct.passed);
  }
  MomentumResidual<TwoExtras> net(std::vector<TwoExtras>{block}, {});
  Tape<double> tape;
  const Var<double> x = tape.constant(x0);
  REQUIRE_THROWS_EXACT(net(tape, x, {tape.constant(a0)}), std::out_of_range, "momnet::CallContext::extra",
                       "input 1 requested", "given 1 extra input(s)");
}

TEST_CASE("A multi-output node runs its reverse rule once, with zeros for outputs that got no gradient",
          "[foundation][tape]") {
  Tape<double> tape;
  const Var<double> a = tape.variable(Tensor<double>(uniform(Shape{2, 3}, 19)));
  double* twice = tape.allocate(6);
  double* thrice = tape.allocate(6);
  for (int i = 0; i < 6; ++i) {
    twice[i] = 2 * a.data()[i];
    thrice[i] = 3 * a.data()[i];
  }
  int runs = 0;
  const auto [p, q] = tape.record_op<2>(
      {a}, std::array<Tape<double>::Output, 2>{{{Shape{2, 3}, twice}, {Shape{2, 3}, thrice}}},
      [&runs](Gradients<double>& g) {
        ++runs;
        double* ga = g.input(0);
        for (int i = 0; i < 6; ++i) ga[i] += 2 * g.output(0)[i] + 3 * g.output(1)[i];
      });
  tape.backward(add(sum(p), sum(q)));
  CHECK(runs == 1);
  CHECK(a.grad().isConstant(5.0));
  tape.backward(sum(q));  // only the second output: the first reads as zeros
  CHECK(runs == 2);
  CHECK(a.grad().isConstant(3.0));
  std::vector<double> seed(6, 1.0);
  tape.backward(p, seed.data());  // seeding the first output still reaches the rule on the last
  CHECK(a.grad().isConstant(2.0));
  CHECK(runs == 3);
}

TEST_CASE("A second backward on one tape starts every gradient from zero (issue 9, item 2)", "[foundation][tape]") {
  Rng rng(20);
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 3, 5, 21), options_for(0.9, BackwardMode::exact));
  const Tensor<double> input(random_input<double>(2, 3, 22));
  Tape<double> tape;
  const Var<double> x = tape.variable(input);
  const MomentumOutput<double> out = net.forward(tape, x);
  tape.backward(sum(out.v));
  const Var<double> late = square(out.x);  // recorded after the first loss
  std::vector<double> seed(6, 1.0);
  zero_grad(net);
  tape.backward(out.x, seed.data());
  const Mat<double> reused = x.grad();
  CHECK(late.grad().isZero());  // never reached by this pass

  Tape<double> fresh;
  const Var<double> y = fresh.variable(input);
  zero_grad(net);
  fresh.backward(net.forward(fresh, y).x, seed.data());
  CHECK(reused == y.grad());
}

TEST_CASE("A Var of a destroyed tape is refused by a new tape at the same address (issue 9, item 3)",
          "[foundation][tape]") {
  std::optional<Tape<double>> slot;
  slot.emplace();
  const Var<double> old = slot->constant(Tensor<double>(Shape{2}));
  slot.reset();
  slot.emplace();
  slot->constant(Tensor<double>(Shape{2}));
  REQUIRE(&old.tape() == &*slot);
  REQUIRE_THROWS_EXACT(old.shape(), std::logic_error, "momnet::Tape", "tape that no longer exists");
  REQUIRE_THROWS_EXACT(square(old), std::logic_error, "tape that no longer exists");
}

TEST_CASE("A parameter changed between forward and backward is refused (issue 9, item 4)", "[foundation][tape]") {
  Rng rng(23);
  const Tensor<double> input(random_input<double>(2, 3, 24));
  MomentumResidual<MLPBlock<double>> stored(mlp_blocks<double>(2, 3, 4, 25), options_for(0.9, BackwardMode::stored));
  Residual<MLPBlock<double>> resnet(mlp_blocks<double>(2, 3, 4, 26));
  Linear<double> layer(3, 3, rng);
  Tape<double> tape;
  const Var<double> x = tape.constant(input);
  const Var<double> a = sum(stored(tape, x));
  const Var<double> b = sum(resnet(tape, x));
  const Var<double> c = sum(layer.forward(tape, x));
  stored.stack().blocks()[1].first().weight().mark_modified();
  REQUIRE_THROWS_EXACT(tape.backward(a), std::logic_error, "momnet::Tape::backward", "modified after the forward",
                       "version 0, now 1");
  resnet.stack().blocks()[0].second().bias().mark_modified();
  REQUIRE_THROWS_EXACT(tape.backward(b), std::logic_error, "stale");
  layer.weight().mark_modified();
  REQUIRE_THROWS_EXACT(tape.backward(c), std::logic_error, "stale");
  // Recorded again after the change, it runs.
  Tape<double> again;
  again.backward(sum(layer.forward(again, again.constant(input))));
  CHECK(layer.weight().grad().isConstant(layer.weight().grad()(0, 0)) == false);
}

TEST_CASE("A model moved between forward and backward still back-propagates; a destroyed one throws (issue 9, item 10)",
          "[foundation][momentum]") {
  const Tensor<double> input(random_input<double>(2, 3, 27));
  const auto blocks = mlp_blocks<double>(4, 3, 5, 28);
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<MLPBlock<double>> reference(blocks, options_for(0.9, mode));
    const std::vector<double> expected = gradients_of(reference, Mat<double>(input.matrix()));

    std::vector<MomentumResidual<MLPBlock<double>>> models;
    models.emplace_back(blocks, options_for(0.9, mode));
    Tape<double> tape;
    const Var<double> x = tape.variable(input);
    const Var<double> loss = mean(square(models[0](tape, x)));
    for (int i = 0; i < 20; ++i) models.emplace_back(blocks, options_for(0.9, mode));  // reallocates
    tape.backward(loss);
    std::vector<double> got;
    for (Parameter<double>* p : parameters_of(models[0])) got.insert(got.end(), p->grad_data(), p->grad_data() + p->size());
    got.insert(got.end(), x.grad().data(), x.grad().data() + x.size());
    CHECK(got == expected);

    Tape<double> second;
    std::optional<MomentumResidual<MLPBlock<double>>> doomed(std::in_place, blocks, options_for(0.9, mode));
    const Var<double> out = sum((*doomed)(second, second.variable(input)));
    doomed.reset();
    REQUIRE_THROWS_EXACT(second.backward(out), std::logic_error, "momnet::MomentumResidual", "was destroyed");
  }
}

TEST_CASE("inverse refuses a rebuild through changed parameters even when gamma is a power of two (issue 9, item 1)",
          "[foundation][momentum]") {
  for (double gamma : {0.5, 0.25, 0.9}) {
    INFO("gamma " << gamma);
    MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(10, 3, 5, 29), options_for(gamma, BackwardMode::exact));
    const Tensor<double> x(random_input<double>(2, 3, 30));
    MomentumState<double> state = net.evaluate(x);
    for (Parameter<double>* p : parameters_of(net)) p->array() *= 1.001;
    REQUIRE_THROWS_AS(net.inverse(state), ReconstructionError);
    for (Parameter<double>* p : parameters_of(net)) p->array() /= 1.001;
    MomentumState<double> fresh = net.evaluate(x);
    net.inverse(fresh);
    CHECK((fresh.x().array() - x.array()).abs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("Error messages print gamma with the digits it needs (issue 9, item 15)", "[foundation][errors]") {
  Rng rng(31);
  REQUIRE_THROWS_EXACT(MomentumResidual<MLPBlock<double>>(MLPBlock<double>(2, 2, rng), 2,
                                                          options_for(1 - 1e-9, BackwardMode::exact)),
                       std::invalid_argument, "gamma = 0.999999999 rounds to 1");
  REQUIRE_THROWS_EXACT(MomentumResidual<MLPBlock<double>>(MLPBlock<double>(2, 2, rng), 2,
                                                          options_for(1.0000001, BackwardMode::exact)),
                       std::invalid_argument, "gamma must lie in [0, 1], got 1.0000001");
}

TEST_CASE("Shapes refuse sizes that overflow, and split along any axis", "[foundation][shape]") {
  const Eigen::Index big = Eigen::Index{1} << 32;
  REQUIRE_THROWS_EXACT((Shape{big, big}), std::length_error, "momnet::Shape", "[4294967296, 4294967296]");
  CHECK((Shape{big, big, 0}).size() == 0);
  const Shape s{2, 3, 4, 5};
  const AxisSplit middle = s.split(1);
  CHECK((middle.outer == 2 && middle.axis == 3 && middle.inner == 20));
  const AxisSplit last = s.split(-1);
  CHECK((last.outer == 24 && last.axis == 5 && last.inner == 1));
  CHECK(s.with_dim(-2, 7) == Shape{2, 3, 7, 5});
  CHECK(s.without_dim(0) == Shape{3, 4, 5});
  REQUIRE_THROWS_EXACT(Shape{}.split(0, "momnet::sum"), std::out_of_range, "momnet::sum", "axis 0", "rank 0");
}

TEST_CASE("The README's dropout block rebuilds bitwise and is named mlp.fc1.weight, ...", "[foundation][readme]") {
  Rng rng(40);
  MomentumResidual<DropoutMLP<float>> net(DropoutMLP<float>{MLPBlock<float>(6, 12, rng)}, 1000);
  require_bitwise_rebuild<float>(net, random_input<float>(4, 6, 41));
  CHECK(named_parameters(net)[0].first == "0.mlp.fc1.weight");
}

TEST_CASE("A batch of 0 runs through every stack and mode (issue 9, item 9)", "[foundation][empty]") {
  const Tensor<double> empty(Shape{0, 3});
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::stored, BackwardMode::float_inverse}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 3, 5, 42), options_for(0.9, mode));
    Tape<double> tape;
    const Var<double> x = tape.variable(empty);
    const MomentumOutput<double> out = net.forward(tape, x);
    CHECK(out.x.shape() == Shape{0, 3});
    CHECK(out.v.shape() == Shape{0, 3});
    zero_grad(net);
    tape.backward(sum(out.x));
    CHECK(x.grad().size() == 0);
    for (Parameter<double>* p : parameters_of(net)) CHECK(p->grad().isZero());
  }
  Residual<MLPBlock<double>> resnet(mlp_blocks<double>(2, 3, 5, 43));
  Tape<double> tape;
  const Var<double> x = tape.variable(empty);
  tape.backward(sum(resnet(tape, x)));
  CHECK(x.grad().size() == 0);
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(2, 3, 5, 44), {});
  MomentumState<double> state = net.evaluate(empty);
  net.inverse(state);
  CHECK(state.x().shape() == Shape{0, 3});
}

TEST_CASE("A model destroyed or assigned over before backward is refused in stored mode and for plain layers",
          "[foundation][review]") {
  const Tensor<double> input(random_input<double>(2, 3, 50));
  for (int how = 0; how < 2; ++how) {
    INFO((how == 0 ? "destroyed" : "assigned over"));
    std::optional<MomentumResidual<MLPBlock<double>>> net(std::in_place, mlp_blocks<double>(3, 3, 4, 51),
                                                          options_for(0.9, BackwardMode::stored));
    Tape<double> tape;
    const Var<double> loss = sum((*net)(tape, tape.variable(input)));
    if (how == 0) {
      net.reset();
    } else {
      *net = MomentumResidual<MLPBlock<double>>(mlp_blocks<double>(3, 3, 4, 52), options_for(0.9, BackwardMode::stored));
    }
    REQUIRE_THROWS_EXACT(tape.backward(loss), std::logic_error, "momnet::Tape::backward", "was destroyed");
  }
  Rng rng(53);
  std::optional<Linear<double>> layer(std::in_place, 3, 3, rng);
  Tape<double> tape;
  const Var<double> loss = sum(layer->forward(tape, tape.variable(input)));
  layer.reset();
  REQUIRE_THROWS_EXACT(tape.backward(loss), std::logic_error, "was destroyed");
}

TEST_CASE("An optimiser step between forward and backward is refused in the memory-free modes too",
          "[foundation][review]") {
  const Tensor<double> input(random_input<double>(2, 3, 54));
  for (BackwardMode mode : {BackwardMode::exact, BackwardMode::float_inverse, BackwardMode::stored}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 3, 4, 55), options_for(0.9, mode));
    SGD<double> sgd(parameters_of(net), {1e-4});
    Tape<double> tape;
    const Var<double> loss = sum(net(tape, tape.variable(input)));
    sgd.step();  // a tiny change: float_inverse's drift check alone would let it pass
    REQUIRE_THROWS_EXACT(tape.backward(loss), std::logic_error, "modified after the forward pass",
                         "version 0, now 1");
  }
}

TEST_CASE("clear() inside a TapeScope leaves later values alone; a stale mark is refused", "[foundation][review]") {
  Tape<double> tape;
  for (int i = 0; i < 5; ++i) tape.filled(Shape{4}, 1.0);
  std::vector<Var<double>> kept;
  {
    const TapeScope<double> scope(tape);
    tape.clear();
    for (int i = 0; i < 6; ++i) kept.push_back(tape.filled(Shape{4}, double(i)));
  }  // the scope's mark is stale: it releases nothing
  REQUIRE(tape.size() == 6);
  tape.filled(Shape{4}, 7.0);
  for (int i = 0; i < 6; ++i) CHECK(kept[static_cast<std::size_t>(i)].array().isConstant(double(i)));
  const Tape<double>::Mark mark = tape.mark();
  tape.clear();
  for (int i = 0; i < 8; ++i) tape.filled(Shape{4}, 0.0);
  REQUIRE_THROWS_EXACT(tape.rewind(mark), std::logic_error, "momnet::Tape::rewind", "stale");
}

TEST_CASE("A Sequential used as a block passes the stack's context to its members", "[foundation][review]") {
  Rng rng(56);
  Sequential<double> body;
  body.add(DropoutMLP<double>{MLPBlock<double>(4, 8, rng)});
  body.add(DropoutMLP<double>{MLPBlock<double>(4, 8, rng)});
  const Mat<double> input = random_input<double>(3, 4, 57);
  MomentumResidual<Sequential<double>> net(body, 200, options_for(0.9, BackwardMode::exact));
  require_bitwise_rebuild<double>(net, input);
  MomentumResidual<Sequential<double>> exact(body, 200, options_for(0.9, BackwardMode::exact));
  MomentumResidual<Sequential<double>> stored(body, 200, options_for(0.9, BackwardMode::stored));
  CHECK(relative_error(gradients_of(exact, input), gradients_of(stored, input)) <= 1e-12);

  // A stateful member is updated once per layer per step, not again on replay.
  Sequential<double> counted;
  counted.add(Counting(rng));
  MomentumResidual<Sequential<double>> counting(counted, 5, options_for(0.9, BackwardMode::exact));
  gradients_of(counting, random_input<double>(2, 3, 58));
  const Counting& member = counting.stack().blocks()[0].get<Counting>(0);
  CHECK(member.calls.data()[0] == 5);
  CHECK(member.replays == 5);
}

TEST_CASE("Sequential refuses names that would repeat, and says why", "[foundation][review]") {
  Rng rng(59);
  Sequential<double> flat;
  flat.add("", Linear<double>(2, 2, rng));
  REQUIRE_THROWS_EXACT(flat.add("", Linear<double>(2, 2, rng)), std::invalid_argument, "momnet::Sequential::add",
                       "repeat the name 'bias'");
  CHECK(flat.size() == 1);
  Sequential<double> positional;
  positional.add("1", Linear<double>(2, 2, rng));
  REQUIRE_THROWS_EXACT(positional.add(Linear<double>(2, 2, rng)), std::invalid_argument, "'1' exists already",
                       "named by its position");
  // concat takes a braced list of parts.
  Tape<double> tape;
  const Var<double> a = tape.constant(Tensor<double>(Shape{2, 3}));
  CHECK(concat({a, a, a}, -2).shape() == Shape{6, 3});
}
