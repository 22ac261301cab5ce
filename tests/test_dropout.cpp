// Dropout and Dropout2d: masks drawn from the counter-based generator (the
// same key draws the same bits, any other key other bits), the kept fraction
// and the 1 / (1 - p) scale, p = 0, p = 1 and eval mode, gradients equal to
// mask * scale, whole channels for dropout2d, the layers on their own, in a
// Sequential and inside a MomentumResidual of depth 64 whose exact backward
// rebuilds every layer bit for bit and matches stored backprop, and every
// error with its message.
#include <catch2/catch.hpp>

#include <momnet/layers/dropout.hpp>
#include <momnet/momnet.hpp>
#include <momnet/ops/dropout.hpp>

#include "helpers.hpp"
#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using momnet::CallContext;
using momnet::CounterRng;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

// Values in [0.5, 1.5): never 0, so a zero output means a dropped element.
template <class T>
Tensor<T> nonzero_values(const Shape& shape, std::uint64_t seed) {
  Tensor<T> t(shape);
  momnet::Rng rng(seed);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(rng.uniform(0.5, 1.5));
  return t;
}

// Which elements of dropout(x) were kept.
template <class T>
std::vector<bool> kept_of(const Var<T>& y) {
  std::vector<bool> kept(static_cast<std::size_t>(y.size()));
  for (Index i = 0; i < y.size(); ++i) kept[static_cast<std::size_t>(i)] = y.data()[i] != T(0);
  return kept;
}

std::size_t differences(const std::vector<bool>& a, const std::vector<bool>& b) {
  REQUIRE(a.size() == b.size());
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

template <class T>
std::vector<bool> mask_with(const CounterRng& rng, double p = 0.5) {
  Tape<T> tape;
  return kept_of(momnet::dropout(tape.constant(nonzero_values<T>(Shape{64, 64}, 1)), p, true, rng));
}

CallContext<double> context_for(std::uint64_t seed, std::uint64_t step, std::size_t layer, bool training = true) {
  CallContext<double> context;
  context.seed = seed;
  context.step = step;
  context.layer = layer;
  context.training = training;
  return context;
}

// f(x) = dropout(tanh(fc(x))): a tiny block whose mask comes from its context.
struct LinearDropout {
  using Scalar = double;
  momnet::Linear<double> fc;
  momnet::Dropout<double> drop;
  LinearDropout(Eigen::Index dim, momnet::Rng& rng, double p) : fc(dim, dim, rng), drop(p) {}
  Var<double> forward(Tape<double>& tape, const Var<double>& x, const CallContext<double>& context) {
    return drop.forward(tape, momnet::tanh(fc.forward(tape, x)), context);
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("fc", fc);
    visit.child("drop", drop);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("dropout: the same key draws the same mask bit for bit, any other key another mask",
                   "[dropout]", float, double) {
  using T = TestType;
  const CounterRng key(7, 3, 11);
  const std::vector<bool> mask = mask_with<T>(key);
  CHECK(mask_with<T>(CounterRng(7, 3, 11)) == mask);
  // About half of 4096 elements differ between two independent masks at p = 0.5.
  for (const CounterRng& other : {CounterRng(7, 4, 11), CounterRng(7, 3, 12), CounterRng(8, 3, 11),
                                  CounterRng(7, 3, 11, 1)}) {
    const std::size_t n = differences(mask_with<T>(other), mask);
    CHECK(n > 1700);
    CHECK(n < 2400);
  }
  // The documented rule: element i is dropped when rng.uniform(i) < p.
  for (std::size_t i = 0; i < mask.size(); ++i) {
    if (mask[i] != !(key.uniform(i) < 0.5)) FAIL("element " << i << " breaks the documented rule");
  }
  // A context keys the mask by (seed, step, layer): a replay draws it again.
  const CallContext<double> context = context_for(5, 9, 2);
  CHECK(mask_with<T>(context.random()) == mask_with<T>(context_for(5, 9, 2).random()));
  CHECK(differences(mask_with<T>(context.random()), mask_with<T>(context_for(5, 10, 2).random())) > 1700);
  CHECK(differences(mask_with<T>(context.random()), mask_with<T>(context_for(5, 9, 3).random())) > 1700);
  CHECK(differences(mask_with<T>(context.random()), mask_with<T>(context_for(6, 9, 2).random())) > 1700);
}

TEMPLATE_TEST_CASE("dropout keeps a fraction 1 - p of the elements and scales them by 1 / (1 - p)", "[dropout]",
                   float, double) {
  using T = TestType;
  const Tensor<T> input = nonzero_values<T>(Shape{4, 128, 128}, 2);
  for (double p : {0.1, 0.5, 0.8}) {
    INFO("p = " << p);
    Tape<T> tape;
    const Var<T> y = momnet::dropout(tape.constant(input), p, true, CounterRng(1, 2, 3));
    REQUIRE(y.shape() == input.shape());
    const T scale = T(1) / static_cast<T>(1.0 - p);
    Index kept = 0;
    bool exact = true;
    for (Index i = 0; i < y.size(); ++i) {
      if (y.data()[i] == T(0)) continue;
      ++kept;
      exact = exact && y.data()[i] == input.data()[i] * scale;
    }
    CHECK(exact);
    // 65536 draws: the standard deviation of the fraction is below 0.002.
    const double fraction = static_cast<double>(kept) / static_cast<double>(y.size());
    CHECK(std::abs(fraction - (1.0 - p)) < 0.01);
  }
}

TEMPLATE_TEST_CASE("dropout: p = 0 and eval mode return x itself; p = 1 gives zeros (NaN stays NaN, as in PyTorch)",
                   "[dropout]", float, double) {
  using T = TestType;
  Tape<T> tape;
  const Var<T> x = tape.variable(nonzero_values<T>(Shape{3, 5}, 3));
  const CounterRng rng(1, 1, 1);
  CHECK(momnet::dropout(x, 0.0, true, rng).index() == x.index());
  CHECK(momnet::dropout(x, 0.7, false, rng).index() == x.index());
  CHECK(momnet::dropout2d(tape.variable(Tensor<T>(Shape{2, 3, 2})), 0.5, false, rng).shape() == Shape{2, 3, 2});
  const Var<T> zeros = momnet::dropout(x, 1.0, true, rng);
  CHECK(zeros.index() != x.index());
  CHECK((zeros.array() == T(0)).all());
  tape.backward(momnet::sum(zeros));
  CHECK((x.grad().array() == T(0)).all());

  Tensor<T> with_nan(Shape{2});
  with_nan.data()[0] = std::numeric_limits<T>::quiet_NaN();
  with_nan.data()[1] = T(3);
  const Var<T> dropped = momnet::dropout(tape.constant(with_nan), 1.0, true, rng);
  CHECK(std::isnan(dropped.data()[0]));
  CHECK(dropped.data()[1] == T(0));
  // Empty values pass through.
  CHECK(momnet::dropout(tape.variable(Tensor<T>(Shape{0, 4})), 0.5, true, rng).shape() == Shape{0, 4});
  const Index huge = Index{1} << 40;
  CHECK(momnet::dropout2d(tape.variable(Tensor<T>(Shape{0, 2, huge, huge})), 0.5, true, rng).size() == 0);
}

TEST_CASE("dropout's gradient is mask * scale, and the operation keeps nothing but its output", "[dropout]") {
  const CounterRng rng(4, 5, 6);
  for (double p : {0.3, 0.9}) {
    const auto result = momnet::check_gradients(
        [&](Tape<double>&, const Vars& v) { return momnet::dropout(v[0], p, true, rng); },
        {momnet_test::uniform(Shape{3, 4, 5}, 7)});
    INFO(result.worst);
    CHECK(result.passed);
  }
  const auto result = momnet::check_gradients(
      [&](Tape<double>&, const Vars& v) { return momnet::dropout2d(v[0], 0.5, true, rng); },
      {momnet_test::uniform(Shape{2, 4, 2, 3}, 8)});
  INFO(result.worst);
  CHECK(result.passed);

  // The gradient of sum(y) is the mask times the scale, exactly.
  Tape<double> tape;
  const Var<double> x = tape.variable(nonzero_values<double>(Shape{32, 32}, 9));
  const std::size_t before = tape.arena_bytes_in_use();
  const Var<double> y = momnet::dropout(x, 0.25, true, rng);
  // The output and the node's bookkeeping; no mask.
  CHECK(tape.arena_bytes_in_use() - before < static_cast<std::size_t>(y.size()) * sizeof(double) + 256);
  tape.backward(momnet::sum(y));
  const double scale = 1.0 / 0.75;
  bool exact = true;
  for (Index i = 0; i < x.size(); ++i) exact = exact && x.grad().data()[i] == (y.data()[i] != 0.0 ? scale : 0.0);
  CHECK(exact);
}

TEMPLATE_TEST_CASE("dropout2d zeroes whole channels of [N, C, H, W] and of [C, H, W]", "[dropout]", float, double) {
  using T = TestType;
  Tape<T> tape;
  const Tensor<T> input = nonzero_values<T>(Shape{8, 16, 3, 5}, 10);
  const CounterRng rng(2, 2, 2);
  const Var<T> y = momnet::dropout2d(tape.constant(input), 0.4, true, rng);
  const T scale = T(1) / static_cast<T>(0.6);
  Index dropped = 0;
  bool whole = true;
  for (Index c = 0; c < 8 * 16; ++c) {
    const bool drop = y.data()[c * 15] == T(0);
    dropped += drop;
    for (Index i = c * 15; i < (c + 1) * 15; ++i) {
      whole = whole && (drop ? y.data()[i] == T(0) : y.data()[i] == input.data()[i] * scale);
    }
    // Channel n * C + c draws rng.uniform(n * C + c).
    whole = whole && drop == (rng.uniform(static_cast<std::uint64_t>(c)) < 0.4);
  }
  CHECK(whole);
  CHECK(dropped > 30);
  CHECK(dropped < 75);
  // Unbatched: a batch of one.
  Tensor<T> first(Shape{16, 3, 5});
  std::copy(input.data(), input.data() + first.size(), first.data());
  const Var<T> unbatched = momnet::dropout2d(tape.constant(first), 0.4, true, rng);
  REQUIRE(unbatched.shape() == Shape{16, 3, 5});
  CHECK(std::equal(unbatched.data(), unbatched.data() + unbatched.size(), y.data()));
}

TEST_CASE("Dropout and Dropout2d layers: own mode, seed and step on their own; the context's inside a composition",
          "[dropout][layers]") {
  const Tensor<double> input = nonzero_values<double>(Shape{32, 32}, 11);
  Tape<double> tape;
  const Var<double> x = tape.constant(input);

  momnet::Dropout<double> layer(0.5, 42);
  CHECK(layer.p() == 0.5);
  CHECK(layer.training());
  CHECK(momnet::named_parameters(layer).empty());
  // Step 0, then step 1: the call counter keys the mask.
  const std::vector<bool> first = kept_of(layer.forward(tape, x));
  const std::vector<bool> second = kept_of(layer.forward(tape, x));
  CHECK(layer.step() == 2);
  CHECK(first == kept_of(momnet::dropout(x, 0.5, true, CounterRng(42, 0, 0))));
  CHECK(second == kept_of(momnet::dropout(x, 0.5, true, CounterRng(42, 1, 0))));
  CHECK(differences(first, second) > 350);
  layer.set_step(0);
  CHECK(kept_of(layer.forward(tape, x)) == first);
  CHECK(differences(kept_of(momnet::Dropout<double>(0.5, 43).forward(tape, x)), first) > 350);
  CHECK(differences(kept_of(momnet::Dropout<double>(0.5, 42, 1).forward(tape, x)), first) > 350);
  momnet::eval(layer);
  CHECK_FALSE(layer.training());
  CHECK(layer.forward(tape, x).index() == x.index());

  // With a context: its training flag and generator, whatever the layer's own flag.
  const CallContext<double> context = context_for(3, 4, 5);
  CHECK(kept_of(layer.forward(tape, x, context)) == kept_of(momnet::dropout(x, 0.5, true, context.random())));
  CHECK(layer.forward(tape, x, context_for(3, 4, 5, false)).index() == x.index());
  momnet::Dropout<double> stream1(0.5, 0, 1);
  CHECK(kept_of(stream1.forward(tape, x, context)) == kept_of(momnet::dropout(x, 0.5, true, context.random(1))));

  momnet::Dropout2d<double> channels(0.5, 8);
  const Var<double> image = tape.constant(nonzero_values<double>(Shape{2, 6, 2, 2}, 12));
  CHECK(kept_of(channels.forward(tape, image)) == kept_of(momnet::dropout2d(image, 0.5, true, CounterRng(8, 0, 0))));
  CHECK(kept_of(channels.forward(tape, image, context)) ==
        kept_of(momnet::dropout2d(image, 0.5, true, context.random())));

  // In a Sequential: each member draws its own mask; eval reaches them all.
  momnet::Sequential<double> model;
  model.add(momnet::Dropout<double>(0.5));
  model.add(momnet::Dropout<double>(0.5));
  const Var<double> twice = model(tape, x);
  Index kept = 0;
  for (Index i = 0; i < x.size(); ++i) kept += twice.data()[i] != 0.0;
  // Two independent masks keep a quarter; the same mask twice would keep half.
  CHECK(std::abs(static_cast<double>(kept) / static_cast<double>(x.size()) - 0.25) < 0.05);
  momnet::eval(model);
  CHECK_FALSE(model.get<momnet::Dropout<double>>(1).training());
  const Var<double> identity = model(tape, x);
  CHECK(std::equal(identity.data(), identity.data() + identity.size(), x.data()));
}

TEST_CASE("Dropout inside a MomentumResidual of depth 64 rebuilds bitwise and its exact gradients equal stored "
          "backprop",
          "[dropout][exact]") {
  using momnet::BackwardMode;
  using momnet::MomentumResidual;
  momnet::Rng rng(21);
  const momnet_test::Mat<double> input = momnet_test::random_input<double>(3, 4, 22);
  std::vector<LinearDropout> blocks;
  for (int i = 0; i < 64; ++i) blocks.emplace_back(4, rng, 0.3);
  for (double gamma : {0.5, 0.9}) {
    INFO("gamma " << gamma);
    MomentumResidual<LinearDropout> net(blocks, momnet_test::options_for(gamma, BackwardMode::exact));
    momnet_test::require_bitwise_rebuild<double>(net, input);

    MomentumResidual<LinearDropout> exact(blocks, momnet_test::options_for(gamma, BackwardMode::exact));
    MomentumResidual<LinearDropout> stored(blocks, momnet_test::options_for(gamma, BackwardMode::stored));
    for (int step = 0; step < 2; ++step) {
      INFO("step " << step);
      const std::vector<double> g_exact = momnet_test::gradients_of(exact, input);
      const std::vector<double> g_stored = momnet_test::gradients_of(stored, input);
      CHECK(momnet_test::relative_error(g_exact, g_stored) <= 1e-12);
    }
    // The masks really depend on the step, and a step replays.
    MomentumResidual<LinearDropout> again(blocks, momnet_test::options_for(gamma, BackwardMode::exact));
    const std::vector<double> first = momnet_test::gradients_of(again, input);
    const std::vector<double> second = momnet_test::gradients_of(again, input);
    CHECK(momnet_test::relative_error(first, second) > 1e-3);
    again.set_step(0);
    CHECK(momnet_test::gradients_of(again, input) == first);
    // And they are on: eval mode gives other gradients.
    momnet::eval(again);
    again.set_step(0);
    CHECK(momnet_test::relative_error(momnet_test::gradients_of(again, input), first) > 1e-3);
  }
  // Weight-tied: one block, a fresh mask per layer (layer 0's mask is not layer 1's).
  MomentumResidual<LinearDropout> tied(blocks[0], 64, momnet_test::options_for(0.9, BackwardMode::exact));
  momnet_test::require_bitwise_rebuild<double>(tied, input);
}

TEST_CASE("Dropout refuses bad arguments with messages naming the function and the values", "[dropout][errors]") {
  using std::invalid_argument;
  Tape<double> tape;
  const Var<double> x = tape.constant(Tensor<double>(Shape{3, 4}));
  const CounterRng rng(0, 0, 0);
  REQUIRE_THROWS_EXACT(momnet::dropout(x, -0.1, true, rng), invalid_argument,
                       "momnet::dropout: p must lie in [0, 1], got -0.1");
  REQUIRE_THROWS_EXACT(momnet::dropout(x, 1.5, false, rng), invalid_argument,
                       "momnet::dropout: p must lie in [0, 1], got 1.5");
  REQUIRE_THROWS_EXACT(momnet::dropout(x, std::nan(""), true, rng), invalid_argument,
                       "momnet::dropout: p must lie in [0, 1], got nan");
  REQUIRE_THROWS_EXACT(momnet::dropout2d(x, 2.0, true, rng), invalid_argument,
                       "momnet::dropout2d: p must lie in [0, 1], got 2");
  REQUIRE_THROWS_EXACT(momnet::dropout2d(x, 0.5, true, rng), invalid_argument,
                       "momnet::dropout2d: expected an input of rank 4 [N, C, H, W] or 3 [C, H, W], got [3, 4]");
  REQUIRE_THROWS_EXACT(momnet::dropout(Var<double>(), 0.5, true, rng), invalid_argument,
                       "momnet::dropout: empty Var");
  REQUIRE_THROWS_EXACT(momnet::Dropout<double>(1.01), invalid_argument, "momnet::Dropout: p must lie in [0, 1], got 1.01");
  REQUIRE_THROWS_EXACT(momnet::Dropout2d<float>(-1.0), invalid_argument,
                       "momnet::Dropout2d: p must lie in [0, 1], got -1");
}
