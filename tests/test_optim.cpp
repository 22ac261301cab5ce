// SGD, Adam and AdamW against updates worked out by hand, in double and float,
// and their option checks.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <typeinfo>
#include <vector>

namespace {

using momnet::AdamOptions;
using momnet::Parameter;
using momnet::SGDOptions;
using momnet::Shape;


// A two-element parameter p = [1, -2] with the gradient g = [0.5, -1].
template <class T>
Parameter<T> tiny_parameter() {
  Parameter<T> p(Shape{2}, "p");
  p.array() << T(1), T(-2);
  p.grad_array() << T(0.5), T(-1);
  return p;
}

using Trajectory = std::array<std::array<double, 2>, 3>;  // p after steps 1, 2, 3

// Steps `optimiser` three times (the gradient stays fixed: step() does not
// touch it) and compares p after each step with `expected`.
template <class T, class Optimiser>
void check_steps(Optimiser& optimiser, Parameter<T>& p, const Trajectory& expected) {
  const double epsilon = std::is_same_v<T, float> ? 1e-6 : 1e-13;
  for (std::size_t step = 0; step < 3; ++step) {
    optimiser.step();
    INFO("after step " << step + 1);
    CHECK(static_cast<double>(p.array()[0]) == Approx(expected[step][0]).epsilon(epsilon));
    CHECK(static_cast<double>(p.array()[1]) == Approx(expected[step][1]).epsilon(epsilon));
  }
  CHECK(p.grad_array()[0] == T(0.5));  // stepping leaves the gradient alone
}

}  // namespace

TEMPLATE_TEST_CASE("SGD matches updates worked out by hand", "[optim][sgd]", float, double) {
  using T = TestType;
  Parameter<T> p = tiny_parameter<T>();
  SGDOptions options;
  options.learning_rate = 0.1;

  SECTION("plain: p -= lr g") {
    // 1 - 0.05 = 0.95, - 0.05 = 0.90, - 0.05 = 0.85;  -2 + 0.1 = -1.9, -1.8, -1.7
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.95, -1.9}, {0.90, -1.8}, {0.85, -1.7}}});
  }
  SECTION("momentum 0.9: b = g first, then b = 0.9 b + g") {
    // b1 = 0.5            p1 = 1 - 0.05 = 0.95
    // b2 = 0.45 + 0.5 = 0.95    p2 = 0.95 - 0.095 = 0.855
    // b3 = 0.855 + 0.5 = 1.355  p3 = 0.855 - 0.1355 = 0.7195
    // (the second element is -2 times the first: the update is linear in p and g)
    options.momentum = 0.9;
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.95, -1.9}, {0.855, -1.71}, {0.7195, -1.439}}});
  }
  SECTION("momentum 0.9, dampening 0.5: b = 0.9 b + 0.5 g after the first step") {
    // b1 = 0.5 (no dampening on the first step)   p1 = 0.95
    // b2 = 0.45 + 0.25 = 0.7                        p2 = 0.95 - 0.07 = 0.88
    // b3 = 0.63 + 0.25 = 0.88                       p3 = 0.88 - 0.088 = 0.792
    options.momentum = 0.9;
    options.dampening = 0.5;
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.95, -1.9}, {0.88, -1.76}, {0.792, -1.584}}});
  }
  SECTION("Nesterov momentum 0.9: step along g + 0.9 b") {
    // b1 = 0.5     d1 = 0.5 + 0.45 = 0.95      p1 = 1 - 0.095 = 0.905
    // b2 = 0.95    d2 = 0.5 + 0.855 = 1.355    p2 = 0.905 - 0.1355 = 0.7695
    // b3 = 1.355   d3 = 0.5 + 1.2195 = 1.7195  p3 = 0.7695 - 0.17195 = 0.59755
    options.momentum = 0.9;
    options.nesterov = true;
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.905, -1.81}, {0.7695, -1.539}, {0.59755, -1.1951}}});
  }
  SECTION("weight decay 0.1: g + 0.1 p") {
    // d1 = 0.5 + 0.1 = 0.6        p1 = 1 - 0.06 = 0.94
    // d2 = 0.5 + 0.094 = 0.594    p2 = 0.94 - 0.0594 = 0.8806
    // d3 = 0.5 + 0.08806 = 0.58806  p3 = 0.8806 - 0.058806 = 0.821794
    options.weight_decay = 0.1;
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.94, -1.88}, {0.8806, -1.7612}, {0.821794, -1.643588}}});
  }
  SECTION("weight decay 0.1 with momentum 0.9") {
    // d1 = 0.6        b1 = 0.6                      p1 = 0.94
    // d2 = 0.594      b2 = 0.54 + 0.594 = 1.134     p2 = 0.94 - 0.1134 = 0.8266
    // d3 = 0.58266    b3 = 1.0206 + 0.58266 = 1.60326  p3 = 0.8266 - 0.160326 = 0.666274
    options.momentum = 0.9;
    options.weight_decay = 0.1;
    momnet::SGD<T> sgd({&p}, options);
    check_steps(sgd, p, {{{0.94, -1.88}, {0.8266, -1.6532}, {0.666274, -1.332548}}});
  }
  SECTION("set_learning_rate and zero_grad") {
    momnet::SGD<T> sgd({&p}, options);
    sgd.set_learning_rate(1.0);
    CHECK(sgd.options().learning_rate == 1.0);
    sgd.step();  // 1 - 0.5, -2 + 1
    CHECK(p.array()[0] == T(0.5));
    CHECK(p.array()[1] == T(-1));
    sgd.zero_grad();
    CHECK(p.grad_array().isZero());
    sgd.step();  // no gradient, no move
    CHECK(p.array()[0] == T(0.5));
  }
}

TEMPLATE_TEST_CASE("Adam and AdamW match updates worked out by hand", "[optim][adam]", float, double) {
  using T = TestType;
  Parameter<T> p = tiny_parameter<T>();
  AdamOptions options;
  options.learning_rate = 0.1;  // beta1 0.9, beta2 0.999, epsilon 1e-8

  SECTION("Adam with a fixed gradient steps lr g / (|g| + eps) each time") {
    // m_t = (1 - 0.9^t) g and v_t = (1 - 0.999^t) g^2, so the bias-corrected
    // m^ = g and v^ = g^2 exactly; the step is 0.1 * 0.5 / (0.5 + 1e-8) =
    // 0.1 / (1 + 2e-8) = 0.099999998 for the first element and
    // 0.1 * 1 / (1 + 1e-8) = 0.099999999 for the second.
    momnet::Adam<T> adam({&p}, options);
    check_steps(adam, p,
                {{{0.900000002, -1.900000001}, {0.800000004, -1.800000002}, {0.700000006, -1.700000003}}});
    CHECK(adam.steps() == 3);
  }
  SECTION("Adam with L2 weight decay: g + wd p enters both moments") {
    options.weight_decay = 0.1;
    momnet::Adam<T> adam({&p}, options);
    // The arithmetic written out for each element.
    Trajectory expected{};
    for (int e = 0; e < 2; ++e) {
      double value = e == 0 ? 1.0 : -2.0;
      const double g = e == 0 ? 0.5 : -1.0;
      double m = 0.0, v = 0.0;
      for (int t = 1; t <= 3; ++t) {
        const double d = g + 0.1 * value;
        m = 0.9 * m + 0.1 * d;
        v = 0.999 * v + 0.001 * d * d;
        const double m_hat = m / (1.0 - std::pow(0.9, t));
        const double v_hat = v / (1.0 - std::pow(0.999, t));
        value -= 0.1 * m_hat / (std::sqrt(v_hat) + 1e-8);
        expected[static_cast<std::size_t>(t - 1)][static_cast<std::size_t>(e)] = value;
      }
    }
    // Step 1 by hand: d = 0.6, m^ = 0.6, v^ = 0.36, p = 1 - 0.1 * 0.6 / (0.6 + 1e-8).
    CHECK(expected[0][0] == Approx(1.0 - 0.1 * 0.6 / (0.6 + 1e-8)).epsilon(1e-15));
    // Step 2 by hand: d = 0.5 + 0.1 p1 = 0.59 (to 1e-9), m = 0.054 + 0.059 = 0.113,
    // v = 0.00035964 + 0.0003481 = 0.00070774, m^ = 0.113 / 0.19, v^ = 0.00070774 / 0.001999.
    CHECK(expected[1][0] ==
          Approx(expected[0][0] - 0.1 * (0.113 / 0.19) / std::sqrt(0.00070774 / 0.001999)).epsilon(1e-8));
    check_steps(adam, p, expected);
  }
  SECTION("Adam with a gradient that changes between steps") {
    // g = 0.5, then -0.25, then 1.0 on the first element (the second is fixed at -1).
    momnet::Adam<T> adam({&p}, options);
    const double g[3] = {0.5, -0.25, 1.0};
    // m1 = 0.05, v1 = 0.00025: m^ = 0.5, v^ = 0.25 -> p1 = 1 - 0.1 * 0.5 / 0.50000001
    // m2 = 0.045 - 0.025 = 0.02, v2 = 0.00024975 + 0.0000625 = 0.00031225
    //   m^ = 0.02 / 0.19, v^ = 0.00031225 / 0.001999
    // m3 = 0.018 + 0.1 = 0.118, v3 = 0.00031193775 + 0.001 = 0.00131193775
    //   m^ = 0.118 / 0.271, v^ = 0.00131193775 / 0.002997001
    const double p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8);
    const double p2 = p1 - 0.1 * (0.02 / 0.19) / (std::sqrt(0.00031225 / 0.001999) + 1e-8);
    const double p3 = p2 - 0.1 * (0.118 / 0.271) / (std::sqrt(0.00131193775 / 0.002997001) + 1e-8);
    const double expected[3] = {p1, p2, p3};
    const double epsilon = std::is_same_v<T, float> ? 1e-6 : 1e-12;
    for (int t = 0; t < 3; ++t) {
      p.grad_array()[0] = T(g[t]);
      adam.step();
      INFO("after step " << t + 1);
      CHECK(static_cast<double>(p.array()[0]) == Approx(expected[t]).epsilon(epsilon));
    }
    CHECK(static_cast<double>(p.array()[1]) == Approx(-1.700000003).epsilon(epsilon));
  }
  SECTION("AdamW decays the weights directly: p *= 1 - lr wd, then the Adam step") {
    options.weight_decay = 0.1;
    momnet::AdamW<T> adamw({&p}, options);
    // The gradient stays fixed, so each Adam step is 0.099999998 (first element)
    // and -0.099999999 (second); before it, p is multiplied by 1 - 0.1 * 0.1 = 0.99.
    // p1 = 0.99 - 0.099999998 = 0.890000002
    // p2 = 0.99 * 0.890000002 - 0.099999998 = 0.88110000198 - 0.099999998 = 0.78110000398
    // p3 = 0.99 * 0.78110000398 - 0.099999998 = 0.7732890039402 - 0.099999998 = 0.6732890059402
    // second: q1 = -1.98 + 0.099999999 = -1.880000001
    // q2 = 0.99 * -1.880000001 + 0.099999999 = -1.86120000099 + 0.099999999 = -1.76120000199
    // q3 = 0.99 * -1.76120000199 + 0.099999999 = -1.7435880019701 + 0.099999999 = -1.6435880029701
    check_steps(adamw, p,
                {{{0.890000002, -1.880000001},
                  {0.78110000398, -1.76120000199},
                  {0.6732890059402, -1.6435880029701}}});
    CHECK(adamw.options().decoupled_weight_decay);
  }
  SECTION("AdamW defaults to PyTorch's weight decay of 1e-2") {
    momnet::AdamW<T> adamw({&p});
    CHECK(adamw.options().weight_decay == 1e-2);
    CHECK(adamw.options().learning_rate == 1e-3);
    CHECK(adamw.options().decoupled_weight_decay);
    adamw.step();
    // p1 = 1 * (1 - 1e-3 * 1e-2) - 1e-3 * 0.5 / (0.5 + 1e-8)
    CHECK(static_cast<double>(p.array()[0]) ==
          Approx(0.99999 - 1e-3 / (1.0 + 2e-8)).epsilon(std::is_same_v<T, float> ? 1e-7 : 1e-14));
    adamw.zero_grad();
    CHECK(p.grad_array().isZero());
  }
}

TEST_CASE("optimisers reject invalid options with a clear message", "[optim][errors]") {
  Parameter<double> p = tiny_parameter<double>();
  const std::vector<Parameter<double>*> params{&p};

  SGDOptions sgd;
  sgd.learning_rate = -0.1;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "momnet::SGD",
                       "learning_rate must be >= 0", "-0.1");
  sgd.learning_rate = std::nan("");
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "momnet::SGD", "learning_rate");
  sgd = SGDOptions{};
  sgd.momentum = -0.5;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "momnet::SGD",
                       "momentum must be >= 0");
  sgd = SGDOptions{};
  sgd.dampening = -1;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "dampening must be >= 0");
  sgd = SGDOptions{};
  sgd.weight_decay = -1;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "weight_decay must be >= 0");
  sgd = SGDOptions{};
  sgd.nesterov = true;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "momnet::SGD",
                       "Nesterov momentum needs momentum > 0 and dampening 0");
  sgd.momentum = 0.9;
  sgd.dampening = 0.1;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>(params, sgd), std::invalid_argument, "Nesterov");
  sgd.dampening = 0.0;
  REQUIRE_NOTHROW(momnet::SGD<double>(params, sgd));
  REQUIRE_THROWS_EXACT(momnet::SGD<double>({nullptr}, SGDOptions{}), std::invalid_argument, "momnet::SGD",
                       "null parameter");
  momnet::SGD<double> valid(params, SGDOptions{});
  REQUIRE_THROWS_EXACT(valid.set_learning_rate(-1.0), std::invalid_argument, "learning_rate must be >= 0");
  CHECK(valid.options().learning_rate == 1e-2);

  AdamOptions adam;
  adam.learning_rate = -1e-3;
  REQUIRE_THROWS_EXACT(momnet::Adam<double>(params, adam), std::invalid_argument, "momnet::Adam",
                       "learning_rate must be >= 0");
  adam = AdamOptions{};
  adam.beta1 = 1.0;
  REQUIRE_THROWS_EXACT(momnet::Adam<double>(params, adam), std::invalid_argument, "momnet::Adam",
                       "betas must lie in [0, 1)", "got 1.0");
  adam = AdamOptions{};
  adam.beta2 = -0.1;
  REQUIRE_THROWS_EXACT(momnet::Adam<double>(params, adam), std::invalid_argument, "betas must lie in [0, 1)",
                       "got -0.1");
  adam.beta2 = 1.5;
  REQUIRE_THROWS_EXACT(momnet::AdamW<double>(params, adam), std::invalid_argument, "momnet::AdamW",
                       "betas must lie in [0, 1)");
  adam = AdamOptions{};
  adam.beta1 = 0.0;  // the lower end is allowed
  REQUIRE_NOTHROW(momnet::Adam<double>(params, adam));
  adam.epsilon = -1e-8;
  REQUIRE_THROWS_EXACT(momnet::Adam<double>(params, adam), std::invalid_argument, "epsilon must be >= 0");
  adam = AdamOptions{};
  adam.weight_decay = -0.01;
  REQUIRE_THROWS_EXACT(momnet::AdamW<double>(params, adam), std::invalid_argument, "momnet::AdamW",
                       "weight_decay must be >= 0");
  REQUIRE_THROWS_EXACT(momnet::Adam<double>({&p, nullptr}, AdamOptions{}), std::invalid_argument,
                       "momnet::Adam", "null parameter");
}

TEST_CASE("optimisers refuse a parameter listed twice, naming both positions", "[optim][errors][hardening]") {
  // Listed twice, a parameter would be stepped twice per step. PyTorch raises
  // for a parameter in two groups (and warns that duplicates within a group
  // will become an error); momnet has one group and raises.
  Parameter<double> p = tiny_parameter<double>();
  Parameter<double> q(Shape{3}, "q");
  Parameter<double> unnamed(Shape{1});
  REQUIRE_THROWS_EXACT(momnet::SGD<double>({&p, &q, &p}, SGDOptions{}), std::invalid_argument, "momnet::SGD",
                       "parameter 'p' appears twice, at positions 0 and 2");
  REQUIRE_THROWS_EXACT(momnet::Adam<double>({&q, &q}, AdamOptions{}), std::invalid_argument, "momnet::Adam",
                       "parameter 'q' appears twice, at positions 0 and 1");
  REQUIRE_THROWS_EXACT(momnet::AdamW<double>({&p, &unnamed, &q, &unnamed}), std::invalid_argument, "momnet::AdamW",
                       "a parameter appears twice, at positions 1 and 3");
  SGDOptions with_momentum;
  with_momentum.momentum = 0.9;
  REQUIRE_THROWS_EXACT(momnet::SGD<double>({&q, &p, &p}, with_momentum), std::invalid_argument,
                       "positions 1 and 2");
  REQUIRE_THROWS_EXACT(momnet::SGD<double>({&p, nullptr}, SGDOptions{}), std::invalid_argument,
                       "null parameter at position 1");
  // Distinct parameters are fine, and each is stepped once.
  momnet::SGD<double> sgd({&p, &q}, SGDOptions{0.1});
  sgd.step();
  CHECK(p.array()[0] == Approx(0.95));
}

TEMPLATE_TEST_CASE("every optimiser step marks the parameters it changes", "[optim][hardening]", float, double) {
  using T = TestType;
  Parameter<T> p = tiny_parameter<T>();
  Parameter<T> q = tiny_parameter<T>();
  const auto check_marks = [&](auto& optimiser) {
    const std::uint64_t p0 = p.version(), q0 = q.version();
    optimiser.step();
    CHECK(p.version() == p0 + 1);
    CHECK(q.version() == q0 + 1);
    optimiser.step();
    CHECK(p.version() == p0 + 2);
    optimiser.zero_grad();  // gradients are not the value: no mark
    CHECK(p.version() == p0 + 2);
  };
  SECTION("SGD") {
    momnet::SGD<T> sgd({&p, &q}, SGDOptions{0.1});
    check_marks(sgd);
  }
  SECTION("SGD with momentum and Nesterov") {
    SGDOptions options;
    options.momentum = 0.9;
    options.nesterov = true;
    momnet::SGD<T> sgd({&p, &q}, options);
    check_marks(sgd);
  }
  SECTION("Adam") {
    momnet::Adam<T> adam({&p, &q}, AdamOptions{});
    check_marks(adam);
  }
  SECTION("AdamW") {
    momnet::AdamW<T> adamw({&p, &q});
    check_marks(adamw);
  }
}

TEST_CASE("a backward pass through parameters an optimiser stepped after the forward is refused",
          "[optim][hardening]") {
  Parameter<double> w = tiny_parameter<double>();
  momnet::SGD<double> sgd({&w}, SGDOptions{0.1});
  momnet::Tape<double> tape;
  const momnet::Var<double> loss = momnet::sum(momnet::square(tape.param(w)));
  sgd.step();  // between the forward and its backward: the tape's activations are stale
  CHECK_THROWS_AS(tape.backward(loss), std::logic_error);
  CHECK_THROWS_WITH(tape.backward(loss), Catch::Contains("modified after the forward pass recorded it"));
  momnet::Tape<double> fresh;  // recorded after the step: fine
  REQUIRE_NOTHROW(fresh.backward(momnet::sum(momnet::square(fresh.param(w)))));
}
