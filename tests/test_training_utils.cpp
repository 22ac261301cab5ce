// Training utilities: learning-rate schedules (values against PyTorch's
// formulas, composition boundaries, driving SGD/Adam/AdamW, resuming),
// classification metrics (argmax ties as torch.argmax), the progress bar in
// both modes under a fake clock, and the CSV log (quoting, numbers that read
// back exactly, errors, flushing, appending).
#include <catch2/catch.hpp>

#include <momnet/optim/adam.hpp>
#include <momnet/optim/lr_scheduler.hpp>
#include <momnet/optim/sgd.hpp>
#include <momnet/parameter.hpp>
#include <momnet/tape.hpp>
#include <momnet/tensor.hpp>
#include <momnet/train/csv_log.hpp>
#include <momnet/train/metrics.hpp>
#include <momnet/train/progress_bar.hpp>

#include "support.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace {

using momnet::LRScheduler;
using momnet::Schedule;
using momnet::Shape;
using momnet::Tensor;

const double pi = 3.14159265358979323846;

// schedule.learning_rate(base, t) for t = 0 .. expected.size() - 1 against `expected`.
void check_rates(const Schedule& schedule, double base, const std::vector<double>& expected) {
  for (std::size_t t = 0; t < expected.size(); ++t) {
    INFO("step " << t);
    CHECK(schedule.learning_rate(base, static_cast<long>(t)) == Approx(expected[t]).epsilon(1e-13).margin(1e-300));
  }
}

Tensor<double> matrix(Eigen::Index rows, Eigen::Index cols, const std::vector<double>& values) {
  Tensor<double> t(Shape{rows, cols});
  for (std::size_t i = 0; i < values.size(); ++i) t.data()[i] = values[i];
  return t;
}

// A file name under the temporary directory, distinct per process and name.
std::string temp_path(const std::string& name) {
  return "/tmp/momnet_test_" + std::to_string(static_cast<long>(::getpid())) + "_" + name;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

// ---- learning-rate schedules -----------------------------------------------------

TEST_CASE("StepLR, MultiStepLR and ExponentialLR follow PyTorch's formulas", "[schedule]") {
  // PyTorch 1.13 (torch.optim.lr_scheduler, stepped after each optimiser step)
  // printed these same values, up to the last bit of its recursive products.
  SECTION("StepLR(3, 0.5): base * 0.5^floor(t / 3)") {
    check_rates(momnet::StepLR(3, 0.5), 0.1, {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125});
    CHECK(momnet::StepLR(5).gamma() == 0.1);  // PyTorch's default
  }
  SECTION("MultiStepLR({2, 5, 8}, 0.1): one factor 0.1 per milestone reached") {
    check_rates(momnet::MultiStepLR({2, 5, 8}, 0.1), 1.0,
                {1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001});
    check_rates(momnet::MultiStepLR({}, 0.1), 2.0, {2.0, 2.0, 2.0});  // no milestones: constant
    check_rates(momnet::MultiStepLR({0}, 0.5), 2.0, {1.0, 1.0});      // milestone 0 applies at step 0
  }
  SECTION("ExponentialLR(0.9): base * 0.9^t") {
    check_rates(momnet::ExponentialLR(0.9), 0.1, {0.1, 0.09, 0.081, 0.0729, 0.06561, 0.059049});
    check_rates(momnet::ExponentialLR(1.5), 1.0, {1.0, 1.5, 2.25});  // gamma > 1 grows, as in PyTorch
  }
}

TEST_CASE("CosineAnnealingLR follows the closed form and rises again past T_max", "[schedule]") {
  const momnet::CosineAnnealingLR cosine(10, 0.001);
  std::vector<double> expected;
  for (int t = 0; t <= 25; ++t) expected.push_back(0.001 + (0.1 - 0.001) * (1.0 + std::cos(pi * t / 10.0)) / 2.0);
  check_rates(cosine, 0.1, expected);
  // Fixed points of the formula, and PyTorch 1.13's values at t = 1 and 3.
  CHECK(cosine.learning_rate(0.1, 0) == Approx(0.1).epsilon(1e-15));
  CHECK(cosine.learning_rate(0.1, 5) == Approx(0.0505).epsilon(1e-14));  // half way
  CHECK(cosine.learning_rate(0.1, 10) == Approx(0.001).epsilon(1e-14));  // eta_min at T_max
  CHECK(cosine.learning_rate(0.1, 20) == Approx(0.1).epsilon(1e-14));    // a whole period later
  CHECK(cosine.learning_rate(0.1, 1) == Approx(0.09757729755661011).epsilon(1e-14));
  CHECK(cosine.learning_rate(0.1, 3) == Approx(0.07959536998847742).epsilon(1e-14));
  CHECK(momnet::CosineAnnealingLR(4).learning_rate(1.0, 4) == Approx(0.0).margin(1e-16));  // eta_min 0
}

TEST_CASE("LinearLR and ConstantLR warm up, then hold the base rate", "[schedule]") {
  // LinearLR(0.25, 1, 4): factor 0.25 + 0.75 min(t, 4) / 4.
  check_rates(momnet::LinearLR(0.25, 1.0, 4), 0.2, {0.05, 0.0875, 0.125, 0.1625, 0.2, 0.2, 0.2});
  // PyTorch's defaults: 1/3 to 1 over 5 steps.
  const momnet::LinearLR defaults;
  CHECK(defaults.start_factor() == 1.0 / 3.0);
  CHECK(defaults.end_factor() == 1.0);
  CHECK(defaults.total_iters() == 5);
  // Decaying to end_factor 0 (a linear decay schedule).
  check_rates(momnet::LinearLR(1.0, 0.0, 2), 1.0, {1.0, 0.5, 0.0, 0.0});
  // ConstantLR(0.5, 3): half the rate for three steps.
  check_rates(momnet::ConstantLR(0.5, 3), 0.2, {0.1, 0.1, 0.1, 0.2, 0.2});
}

TEST_CASE("SequentialLR switches schedule at each milestone and restarts it at its step 0", "[schedule]") {
  SECTION("linear warm-up for 5 steps, then cosine over 10") {
    const momnet::SequentialLR warm_cosine({momnet::LinearLR(0.1, 1.0, 5), momnet::CosineAnnealingLR(10)}, {5});
    std::vector<double> expected;
    for (int t = 0; t < 5; ++t) expected.push_back(0.1 + 0.9 * t / 5.0);
    for (int t = 5; t <= 20; ++t) expected.push_back((1.0 + std::cos(pi * (t - 5) / 10.0)) / 2.0);
    check_rates(warm_cosine, 1.0, expected);
    // The boundary: the last warm-up step is 0.82, the milestone is the cosine's
    // step 0 (the base rate), the warm-up's own step 5 (also 1.0) never shows.
    CHECK(warm_cosine.learning_rate(1.0, 4) == Approx(0.82).epsilon(1e-14));
    CHECK(warm_cosine.learning_rate(1.0, 5) == 1.0);
    CHECK(warm_cosine.learning_rate(1.0, 15) == Approx(0.0).margin(1e-16));
    // PyTorch 1.13's SequentialLR gave 0.9755282581475768 at step 6.
    CHECK(warm_cosine.learning_rate(1.0, 6) == Approx(0.9755282581475768).epsilon(1e-14));
  }
  SECTION("three schedules: constant, step decay, exponential; each counts from its milestone") {
    const momnet::SequentialLR three({momnet::ConstantLR(0.5, 100), momnet::StepLR(2, 0.1), momnet::ExponentialLR(0.5)},
                                     {2, 6});
    check_rates(three, 1.0, {0.5, 0.5, 1.0, 1.0, 0.1, 0.1, 1.0, 0.5, 0.25});
  }
  SECTION("one schedule and no milestone is that schedule; milestone 0 skips the first") {
    check_rates(momnet::SequentialLR({momnet::StepLR(1, 0.5)}, {}), 1.0, {1.0, 0.5, 0.25});
    check_rates(momnet::SequentialLR({momnet::ConstantLR(0.1, 9), momnet::StepLR(1, 0.5)}, {0}), 1.0, {1.0, 0.5});
  }
}

TEST_CASE("schedules reject bad arguments, naming the schedule and the value", "[schedule][errors]") {
  using E = std::invalid_argument;
  REQUIRE_THROWS_EXACT(momnet::StepLR(0), E, "momnet::StepLR", "step_size must be >= 1, got 0");
  REQUIRE_THROWS_EXACT(momnet::StepLR(2, 0.0), E, "momnet::StepLR", "gamma must be positive and finite, got 0");
  REQUIRE_THROWS_EXACT(momnet::StepLR(2, -0.5), E, "gamma", "got -0.5");
  REQUIRE_THROWS_EXACT(momnet::ExponentialLR(std::numeric_limits<double>::infinity()), E, "momnet::ExponentialLR",
                       "gamma must be positive and finite, got inf");
  REQUIRE_THROWS_EXACT(momnet::ExponentialLR(std::nan("")), E, "momnet::ExponentialLR", "gamma");
  REQUIRE_THROWS_EXACT(momnet::MultiStepLR({3, 3}), E, "momnet::MultiStepLR",
                       "milestones must be strictly increasing, got 3 then 3 at index 1");
  REQUIRE_THROWS_EXACT(momnet::MultiStepLR({5, 2, 8}), E, "strictly increasing, got 5 then 2 at index 1");
  REQUIRE_THROWS_EXACT(momnet::MultiStepLR({-1, 2}), E, "milestones must be >= 0, got -1 at index 0");
  REQUIRE_THROWS_EXACT(momnet::CosineAnnealingLR(0), E, "momnet::CosineAnnealingLR", "T_max must be >= 1, got 0");
  REQUIRE_THROWS_EXACT(momnet::CosineAnnealingLR(10, -0.1), E, "eta_min must be >= 0 and finite, got -0.1");
  // LinearLR's ranges are PyTorch's: start in (0, 1], end in [0, 1].
  REQUIRE_THROWS_EXACT(momnet::LinearLR(0.0), E, "momnet::LinearLR", "start_factor must lie in (0, 1], got 0");
  REQUIRE_THROWS_EXACT(momnet::LinearLR(1.5), E, "start_factor must lie in (0, 1], got 1.5");
  REQUIRE_THROWS_EXACT(momnet::LinearLR(0.5, 1.1), E, "end_factor must lie in [0, 1], got 1.1");
  REQUIRE_THROWS_EXACT(momnet::LinearLR(0.5, -0.1), E, "end_factor must lie in [0, 1], got -0.1");
  REQUIRE_THROWS_EXACT(momnet::LinearLR(0.5, 1.0, 0), E, "total_iters must be >= 1, got 0");
  REQUIRE_NOTHROW(momnet::LinearLR(1.0, 0.0, 1));  // both ends of the ranges
  REQUIRE_THROWS_EXACT(momnet::ConstantLR(1.2), E, "momnet::ConstantLR", "factor must lie in [0, 1], got 1.2");
  REQUIRE_THROWS_EXACT(momnet::ConstantLR(0.5, 0), E, "total_iters must be >= 1, got 0");
  REQUIRE_THROWS_EXACT(momnet::SequentialLR({}, {}), E, "momnet::SequentialLR", "needs at least one schedule");
  REQUIRE_THROWS_EXACT(momnet::SequentialLR({momnet::StepLR(1), momnet::StepLR(2)}, {}), E,
                       "needs one milestone fewer than schedules, got 2 schedules and 0 milestones");
  REQUIRE_THROWS_EXACT(
      momnet::SequentialLR({momnet::StepLR(1), momnet::StepLR(2), momnet::StepLR(3)}, {5, 5}), E,
      "milestones must be >= 0 and strictly increasing, got 5 at index 1 after 5");
  REQUIRE_THROWS_EXACT(momnet::SequentialLR({momnet::StepLR(1), momnet::StepLR(2)}, {-2}), E,
                       "got -2 at index 0");
  REQUIRE_THROWS_EXACT(momnet::StepLR(1).learning_rate(0.1, -1), E, "momnet::StepLR", "step must be >= 0, got -1");
  REQUIRE_THROWS_EXACT(momnet::SequentialLR({momnet::StepLR(1)}, {}).learning_rate(0.1, -3), E,
                       "momnet::SequentialLR", "step must be >= 0, got -3");
}

TEMPLATE_TEST_CASE("an LRScheduler drives SGD, Adam and AdamW: each step moves by the scheduled rate",
                   "[schedule][optim]", float, double) {
  using T = TestType;
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  // One parameter with gradient 1: SGD moves it by lr; Adam with epsilon 0 and a
  // fixed gradient has m^ = g and v^ = g^2, so it moves it by lr too.
  momnet::Parameter<T> p(Shape{1}, "p");
  const auto run = [&](auto& optimiser, double base_lr) {
    p.array()[0] = T(0);
    p.grad_array()[0] = T(1);
    LRScheduler<std::remove_reference_t<decltype(optimiser)>> scheduler(
        optimiser, momnet::SequentialLR({momnet::LinearLR(0.25, 1.0, 2), momnet::StepLR(2, 0.5)}, {2}));
    CHECK(scheduler.base_learning_rate() == base_lr);
    const std::vector<double> expected{0.25, 0.625, 1.0, 1.0, 0.5, 0.5};  // times base_lr
    for (std::size_t t = 0; t < expected.size(); ++t) {
      INFO("step " << t);
      CHECK(scheduler.last_step() == static_cast<long>(t));
      CHECK(optimiser.learning_rate() == Approx(expected[t] * base_lr).epsilon(1e-15));
      CHECK(scheduler.learning_rate() == optimiser.learning_rate());
      const double before = static_cast<double>(p.array()[0]);
      optimiser.step();
      const double moved = before - static_cast<double>(p.array()[0]);
      CHECK(moved == Approx(expected[t] * base_lr).epsilon(tolerance));
      scheduler.step();
    }
  };
  SECTION("SGD") {
    momnet::SGD<T> sgd({&p}, momnet::SGDOptions{0.5});
    run(sgd, 0.5);
  }
  momnet::AdamOptions adam_options;
  adam_options.learning_rate = 0.25;
  adam_options.epsilon = 0.0;
  SECTION("Adam") {
    momnet::Adam<T> adam({&p}, adam_options);
    run(adam, 0.25);
    CHECK(adam.steps() == 6);  // the bias correction kept counting across rate changes
  }
  SECTION("AdamW (no decay)") {
    adam_options.weight_decay = 0.0;
    momnet::AdamW<T> adamw({&p}, adam_options);
    run(adamw, 0.25);
  }
}

TEST_CASE("Adam's and SGD's learning rate can be read and set, with SGD's validation", "[schedule][optim][errors]") {
  momnet::Parameter<double> p(Shape{1}, "p");
  momnet::Adam<double> adam({&p}, momnet::AdamOptions{});
  CHECK(adam.learning_rate() == 1e-3);
  adam.set_learning_rate(0.5);
  CHECK(adam.learning_rate() == 0.5);
  CHECK(adam.options().learning_rate == 0.5);
  REQUIRE_THROWS_EXACT(adam.set_learning_rate(-1.0), std::invalid_argument, "momnet::Adam",
                       "learning_rate must be >= 0");
  REQUIRE_THROWS_EXACT(adam.set_learning_rate(std::nan("")), std::invalid_argument, "learning_rate");
  CHECK(adam.learning_rate() == 0.5);  // unchanged by the refused values
  momnet::AdamW<double> adamw({&p});
  REQUIRE_THROWS_EXACT(adamw.set_learning_rate(-0.1), std::invalid_argument, "momnet::AdamW",
                       "learning_rate must be >= 0");
  momnet::SGD<double> sgd({&p}, momnet::SGDOptions{0.3});
  CHECK(sgd.learning_rate() == 0.3);
}

TEST_CASE("an LRScheduler resumed at a saved step continues identically", "[schedule]") {
  momnet::Parameter<double> p(Shape{1}, "p");
  const Schedule schedule =
      momnet::SequentialLR({momnet::LinearLR(0.1, 1.0, 3), momnet::CosineAnnealingLR(8, 0.01)}, {3});
  momnet::SGD<double> first({&p}, momnet::SGDOptions{0.2});
  LRScheduler<momnet::SGD<double>> whole(first, schedule);
  std::vector<double> rates{first.learning_rate()};
  for (int t = 1; t < 12; ++t) {
    whole.step();
    rates.push_back(first.learning_rate());
  }
  SECTION("a new optimiser with the same options, moved to the saved step") {
    momnet::SGD<double> second({&p}, momnet::SGDOptions{0.2});
    LRScheduler<momnet::SGD<double>> resumed(second, schedule);
    resumed.set_last_step(7);
    for (int t = 7; t < 12; ++t) {
      CHECK(resumed.last_step() == t);
      CHECK(second.learning_rate() == rates[static_cast<std::size_t>(t)]);  // bit for bit
      resumed.step();
    }
  }
  SECTION("an optimiser whose rate was already scheduled takes the base rate explicitly") {
    momnet::SGD<double> restored({&p}, momnet::SGDOptions{0.2});
    restored.set_learning_rate(rates[7]);  // as a restored optimiser might hold it
    LRScheduler<momnet::SGD<double>> resumed(restored, schedule, 0.2);
    resumed.set_last_step(7);
    CHECK(restored.learning_rate() == rates[7]);
    resumed.step();
    CHECK(restored.learning_rate() == rates[8]);
    CHECK(resumed.learning_rate_at(11) == rates[11]);
    CHECK(resumed.last_step() == 8);  // learning_rate_at does not move
  }
  SECTION("bad steps and base rates") {
    REQUIRE_THROWS_EXACT(whole.set_last_step(-1), std::invalid_argument, "momnet::LRScheduler::set_last_step",
                         "step must be >= 0, got -1");
    CHECK(whole.last_step() == 11);
    REQUIRE_THROWS_EXACT(LRScheduler<momnet::SGD<double>>(first, schedule, -0.1), std::invalid_argument,
                         "momnet::LRScheduler", "base learning rate must be >= 0 and finite, got -0.1");
  }
}

namespace {
// Any class with set_learning_rate can be scheduled (the base rate given).
struct RateRecorder {
  std::vector<double> rates;
  void set_learning_rate(double rate) { rates.push_back(rate); }
};
}  // namespace

TEST_CASE("an LRScheduler drives any class with set_learning_rate", "[schedule]") {
  RateRecorder recorder;
  LRScheduler<RateRecorder> scheduler(recorder, momnet::ExponentialLR(0.5), 8.0);
  scheduler.step();
  scheduler.step();
  CHECK(recorder.rates == std::vector<double>{8.0, 4.0, 2.0});
}

// ---- metrics ------------------------------------------------------------------------

TEMPLATE_TEST_CASE("accuracy takes the first maximum, as torch.argmax does", "[metrics]", float, double) {
  using T = TestType;
  // Row 0: a clear maximum at 2. Row 1: a tie between 0 and 2 (argmax 0).
  // Row 2: all equal (argmax 0). Row 3: a NaN, which counts as the maximum.
  const double nan = std::nan("");
  Tensor<T> logits(Shape{4, 3});
  const double values[12] = {0.1, 0.2, 0.9, 0.7, 0.1, 0.7, 0.5, 0.5, 0.5, 0.3, nan, 0.9};
  for (int i = 0; i < 12; ++i) logits.data()[i] = static_cast<T>(values[i]);

  CHECK(momnet::count_correct(logits, {2, 0, 0, 1}) == 4);
  CHECK(momnet::accuracy(logits, {2, 0, 0, 1}) == 1.0);
  CHECK(momnet::accuracy(logits, {2, 2, 1, 2}) == 0.25);  // the tie goes to 0, not 2
  CHECK(momnet::accuracy(logits, {0, 1, 2, 0}) == 0.0);

  momnet::Tape<T> tape;
  const momnet::Var<T> v = tape.constant(logits);
  CHECK(momnet::accuracy(v, {2, 2, 0, 1}) == 0.75);
  CHECK(momnet::count_correct(v, {2, 2, 0, 1}) == 3);
}

TEST_CASE("top_k_accuracy ranks ties by index, so top-1 equals accuracy", "[metrics]") {
  // Row 0: 0.4 0.4 0.1 0.4 (three-way tie: order 0, 1, 3, then 2).
  // Row 1: 0.1 0.9 0.5 0.2 (order 1, 2, 3, 0).
  const Tensor<double> logits = matrix(2, 4, {0.4, 0.4, 0.1, 0.4, 0.1, 0.9, 0.5, 0.2});
  for (int label0 = 0; label0 < 4; ++label0) {
    for (int label1 = 0; label1 < 4; ++label1) {
      INFO("labels " << label0 << ", " << label1);
      CHECK(momnet::top_k_accuracy(logits, {label0, label1}, 1) == momnet::accuracy(logits, {label0, label1}));
    }
  }
  // Row 0's label 3 is third (after 0 and 1); row 1's label 3 is third too.
  CHECK(momnet::count_top_k(logits, {3, 3}, 2) == 0);
  CHECK(momnet::count_top_k(logits, {3, 3}, 3) == 2);
  CHECK(momnet::count_top_k(logits, {1, 2}, 2) == 2);
  CHECK(momnet::top_k_accuracy(logits, {2, 0}, 3) == 0.0);  // both last
  CHECK(momnet::top_k_accuracy(logits, {2, 0}, 4) == 1.0);  // k = classes: every label
  momnet::Tape<double> tape;
  CHECK(momnet::top_k_accuracy(tape.constant(logits), {1, 3}, 2) == 0.5);
  // A NaN ranks first, as in argmax.
  const Tensor<double> with_nan = matrix(1, 3, {0.9, std::nan(""), 0.1});
  CHECK(momnet::count_top_k(with_nan, {1}, 1) == 1);
  CHECK(momnet::count_top_k(with_nan, {0}, 1) == 0);
  CHECK(momnet::count_top_k(with_nan, {0}, 2) == 1);
}

TEST_CASE("metrics reject bad logits, labels and k", "[metrics][errors]") {
  using E = std::invalid_argument;
  const Tensor<double> logits = matrix(2, 3, {1, 2, 3, 4, 5, 6});
  REQUIRE_THROWS_EXACT(momnet::accuracy(logits, {0}), E, "momnet::accuracy", "1 labels for a batch of 2");
  REQUIRE_THROWS_EXACT(momnet::accuracy(logits, {0, 3}), E, "momnet::accuracy",
                       "label 3 at index 1 is outside [0, 3)");
  REQUIRE_THROWS_EXACT(momnet::count_correct(logits, {-1, 0}), E, "momnet::count_correct", "label -1 at index 0");
  REQUIRE_THROWS_EXACT(momnet::accuracy(Tensor<double>(Shape{6}), {0}), E, "momnet::accuracy",
                       "logits must be [batch, classes]", "[6]");
  REQUIRE_THROWS_EXACT(momnet::accuracy(Tensor<double>(Shape{0, 3}), {}), E, "momnet::accuracy",
                       "the accuracy of an empty batch is undefined");
  CHECK(momnet::count_correct(Tensor<double>(Shape{0, 3}), {}) == 0);
  REQUIRE_THROWS_EXACT(momnet::top_k_accuracy(logits, {0, 1}, 0), E, "momnet::top_k_accuracy",
                       "k must lie in [1, 3], got 0");
  REQUIRE_THROWS_EXACT(momnet::count_top_k(logits, {0, 1}, 4), E, "k must lie in [1, 3], got 4");
}

TEST_CASE("RunningMean weights each batch by its size", "[metrics]") {
  momnet::RunningMean loss;
  REQUIRE_THROWS_EXACT(loss.mean(), std::logic_error, "momnet::RunningMean::mean", "no values added");
  loss.add(2.0, 32);  // a batch of 32 with mean loss 2
  loss.add(1.0, 32);
  loss.add(4.0, 16);  // a short last batch
  // (64 + 32 + 64) / 80 = 2, where the unweighted mean of batch means is 7/3.
  CHECK(loss.mean() == 2.0);
  CHECK(loss.count() == 80.0);
  CHECK(loss.sum() == 160.0);
  loss.add(100.0, 0);  // weight 0 changes nothing
  CHECK(loss.mean() == 2.0);
  REQUIRE_THROWS_EXACT(loss.add(1.0, -1), std::invalid_argument, "momnet::RunningMean::add",
                       "weight must be >= 0");
  loss.reset();
  loss.add(3.0);
  CHECK(loss.mean() == 3.0);
}

TEST_CASE("ConfusionMatrix counts labels (rows) against predictions (columns)", "[metrics]") {
  momnet::ConfusionMatrix confusion(3);
  // Predictions: 2, 0 (a tie of 0 and 2), 1, 1.
  confusion.add(matrix(4, 3, {0, 0, 1, 5, 1, 5, 0, 2, 1, 0, 3, 2}), {2, 2, 1, 0});
  CHECK(confusion.count(2, 2) == 1);
  CHECK(confusion.count(2, 0) == 1);
  CHECK(confusion.count(1, 1) == 1);
  CHECK(confusion.count(0, 1) == 1);
  CHECK(confusion.count(0, 0) == 0);
  CHECK(confusion.total() == 4);
  CHECK(confusion.accuracy() == 0.5);
  REQUIRE_THROWS_EXACT(confusion.count(3, 0), std::out_of_range, "momnet::ConfusionMatrix::count",
                       "class 3 is outside [0, 3)");
  REQUIRE_THROWS_EXACT(confusion.add(matrix(1, 2, {0, 1}), {0}), std::invalid_argument,
                       "momnet::ConfusionMatrix::add", "logits [1, 2] for 3 classes");
  REQUIRE_THROWS_EXACT(momnet::ConfusionMatrix(0), std::invalid_argument, "classes must be >= 1, got 0");
  confusion.reset();
  CHECK(confusion.total() == 0);
  REQUIRE_THROWS_AS(confusion.accuracy(), std::invalid_argument);
}

// ---- progress bar -----------------------------------------------------------------

namespace {
momnet::ProgressBarOptions fake_clock(double& now, momnet::ProgressBarOptions::Mode mode) {
  momnet::ProgressBarOptions options;
  options.mode = mode;
  options.width = 10;
  options.clock = [&now] { return now; };
  return options;
}
}  // namespace

TEST_CASE("ProgressBar on a terminal redraws one line, at most every 0.1 s", "[progress]") {
  double now = 100.0;  // the fake clock, in seconds
  std::ostringstream out;
  std::size_t seen = 0;
  const auto fresh = [&] {  // the output since the last call
    const std::string all = out.str();
    const std::string part = all.substr(seen);
    seen = all.size();
    return part;
  };
  momnet::ProgressBar bar(10, "epoch 1/2", out, fake_clock(now, momnet::ProgressBarOptions::Mode::terminal));
  CHECK(bar.terminal());
  CHECK(fresh().empty());  // nothing before the first update

  now = 100.5;
  bar.update(4, "loss 0.500");  // 4 items in 0.5 s: 8 it/s, 6 left: 0.75 s
  CHECK(fresh() == "\repoch 1/2 [====>     ] 4/10  40% 8.0 it/s ETA 0:01 loss 0.500");
  CHECK(bar.rate() == 8.0);

  now = 100.55;
  bar.update(1);  // 0.05 s after the last draw: throttled
  CHECK(fresh().empty());
  CHECK(bar.done() == 5);

  now = 100.625;
  bar.update(1, "loss 0.4");  // 6 in 0.625 s = 9.6 it/s; 4 left: 0.42 s; shorter suffix: padded
  CHECK(fresh() == "\repoch 1/2 [======>   ] 6/10  60% 9.6 it/s ETA 0:00 loss 0.4  ");

  now = 100.63;
  bar.update(4);  // throttled, but the total is reached: drawn
  CHECK(fresh() == "\repoch 1/2 [==========] 10/10 100% 15.9 it/s ETA 0:00 loss 0.4");

  now = 102.0;
  bar.finish("val 0.9");  // elapsed 2 s, the rate 10 / 2; one space covers the longer last line
  CHECK(fresh() == "\repoch 1/2 [==========] 10/10 100% 5.0 it/s took 0:02 val 0.9 \n");
  bar.finish();
  CHECK(fresh().empty());  // once
  REQUIRE_THROWS_EXACT(bar.update(1), std::logic_error, "momnet::ProgressBar::update", "finished");
}

TEST_CASE("ProgressBar elsewhere prints a plain line every 10% or interval, and a final line", "[progress]") {
  double now = 0.0;
  std::ostringstream out;
  const auto lines = [&] {
    std::vector<std::string> result;
    std::istringstream in(out.str());
    for (std::string l; std::getline(in, l);) result.push_back(l);
    return result;
  };
  SECTION("every 10% when fast") {
    momnet::ProgressBar bar(100, "train", out, fake_clock(now, momnet::ProgressBarOptions::Mode::plain));
    CHECK_FALSE(bar.terminal());
    for (int i = 0; i < 100; ++i) {
      now += 0.01;
      bar.update(1, "loss " + std::to_string(i));
    }
    bar.finish();
    const std::vector<std::string> l = lines();
    REQUIRE(l.size() == 10);  // 10%, ..., 90%, and the final line (not a separate 100% line)
    CHECK(l[0] == "train 10/100  10% 100.0 it/s ETA 0:01 loss 9");
    CHECK(l[2] == "train 30/100  30% 100.0 it/s ETA 0:01 loss 29");
    CHECK(l[8] == "train 90/100  90% 100.0 it/s ETA 0:00 loss 89");
    CHECK(l[9] == "train 100/100 100% 100.0 it/s took 0:01 loss 99");
    CHECK(out.str().find('\r') == std::string::npos);
  }
  SECTION("every interval when slow, and by the fraction chosen") {
    momnet::ProgressBarOptions options = fake_clock(now, momnet::ProgressBarOptions::Mode::plain);
    options.plain_interval = 30.0;
    options.plain_fraction = 0.5;
    momnet::ProgressBar bar(1000, "", out, options);
    for (int i = 0; i < 40; ++i) {  // one item every 2 s: lines at 30 s and 60 s
      now += 2.0;
      bar.update();
    }
    CHECK(lines().size() == 2);
    now = 100.0;
    bar.update(460);  // 500: half way
    std::vector<std::string> l = lines();
    REQUIRE(l.size() == 3);
    CHECK(l[0] == "15/1000   1% 0.5 it/s ETA 32:50");
    CHECK(l[1] == "30/1000   3% 0.5 it/s ETA 32:20");
    CHECK(l[2] == "500/1000  50% 5.0 it/s ETA 1:40");
    now = 3740.0;  // the interval has passed: a line at the next update
    bar.update(0);
    CHECK(lines().back() == "500/1000  50% 0.1 it/s ETA 1:02:20");
    now = 37400.0;
    bar.update(0);
    CHECK(lines().back() == "500/1000  50% 74.8 s/it ETA 10:23:20");  // slower than one every 10 s
  }
  SECTION("an unknown total (0) shows the count and rate only") {
    momnet::ProgressBar bar(0, "eval", out, fake_clock(now, momnet::ProgressBarOptions::Mode::plain));
    now = 4.0;
    bar.update(10);
    bar.finish();
    CHECK(out.str() == "eval 10 2.5 it/s took 0:04\n");
  }
  SECTION("the destructor writes the final line when finish() was not called") {
    {
      momnet::ProgressBar bar(4, "x", out, fake_clock(now, momnet::ProgressBarOptions::Mode::plain));
      now = 1.0;
      bar.update(1);
    }
    CHECK(lines().back() == "x 1/4  25% 1.0 it/s took 0:01");
  }
}

TEST_CASE("ProgressBar chooses plain lines for a stream that is not a terminal, and checks its arguments",
          "[progress][errors]") {
  std::ostringstream out;
  momnet::ProgressBar automatic(5, "a", out);  // a string stream is never a terminal
  CHECK_FALSE(automatic.terminal());
  automatic.update(5);
  automatic.finish();
  CHECK(out.str().find("a 5/5 100%") == 0);
  REQUIRE_THROWS_EXACT(momnet::ProgressBar(-1, "a", out), std::invalid_argument, "momnet::ProgressBar",
                       "total must be >= 0, got -1");
  momnet::ProgressBarOptions options;
  options.width = 0;
  REQUIRE_THROWS_EXACT(momnet::ProgressBar(5, "a", out, options), std::invalid_argument, "width must be >= 1");
  options = momnet::ProgressBarOptions{};
  options.plain_fraction = 0.0;
  REQUIRE_THROWS_EXACT(momnet::ProgressBar(5, "a", out, options), std::invalid_argument,
                       "plain_fraction must lie in (0, 1]");
  momnet::ProgressBar bar(5, "a", out);
  REQUIRE_THROWS_EXACT(bar.update(-2), std::invalid_argument, "momnet::ProgressBar::update",
                       "increment must be >= 0, got -2");
}

// ---- CSV log ------------------------------------------------------------------------

TEST_CASE("CsvLog writes the header and rows with RFC 4180 quoting", "[csv]") {
  const std::string path = temp_path("quoting.csv");
  {
    momnet::CsvLog log(path, {"epoch", "lr", "note", "a,b"});
    log.row(1, 0.5, "plain", "x");
    log.row(2, 0.25, "with, comma", "say \"hi\"");
    log.row(3L, 1e-300, "two\nlines", std::string("cr\r"));
    log.row(std::vector<momnet::CsvLog::Cell>{4LL, 0.125, std::string(""), std::string("\"")});
  }
  CHECK(read_all(path) ==
        "epoch,lr,note,\"a,b\"\n"
        "1,0.5,plain,x\n"
        "2,0.25,\"with, comma\",\"say \"\"hi\"\"\"\n"
        "3,1e-300,\"two\nlines\",\"cr\r\"\n"
        "4,0.125,,\"\"\"\"\n");
  std::remove(path.c_str());

  // An empty field alone on its row is quoted, or the row would be a blank line.
  const std::string single = temp_path("single.csv");
  {
    momnet::CsvLog log(single, {"note"});
    log.row("");
    log.row("x");
  }
  CHECK(read_all(single) == "note\n\"\"\nx\n");
  std::remove(single.c_str());
}

TEST_CASE("CsvLog writes numbers that read back exactly", "[csv]") {
  const std::string path = temp_path("numbers.csv");
  const double third = 1.0 / 3.0;
  {
    momnet::CsvLog log(path, {"double", "float", "int", "bool"});
    log.row(0.1, 0.1f, -7, true);
    log.row(third, 1.0f / 3.0f, 9007199254740993LL, false);
    log.row(std::nan(""), std::numeric_limits<float>::infinity(), 0u, true);
    log.row(-std::numeric_limits<double>::infinity(), -0.0f, static_cast<short>(-3), false);
  }
  CHECK(read_all(path) ==
        "double,float,int,bool\n"
        "0.1,0.1,-7,true\n"
        "0.3333333333333333,0.33333334,9007199254740993,false\n"
        "nan,inf,0,true\n"
        "-inf,-0,-3,false\n");
  CHECK(std::stod(momnet::CsvLog::number(third)) == third);
  CHECK(std::stod(momnet::CsvLog::number(6.02214076e23)) == 6.02214076e23);
  CHECK(std::stof(momnet::CsvLog::number(1.0f / 3.0f)) == 1.0f / 3.0f);
  CHECK(momnet::CsvLog::number(1e21) == "1e+21");
  std::remove(path.c_str());
}

TEST_CASE("CsvLog flushes each row: the file is valid while the run is still going", "[csv]") {
  const std::string path = temp_path("flush.csv");
  momnet::CsvLog log(path, {"epoch", "loss"});
  CHECK(read_all(path) == "epoch,loss\n");
  log.row(1, 0.5);
  CHECK(read_all(path) == "epoch,loss\n1,0.5\n");  // as a run killed now would leave it
  log.row(2, 0.25);
  CHECK(read_all(path) == "epoch,loss\n1,0.5\n2,0.25\n");
  std::remove(path.c_str());
}

TEST_CASE("CsvLog rejects a wrong column count and names the file it cannot open", "[csv][errors]") {
  const std::string path = temp_path("errors.csv");
  momnet::CsvLog log(path, {"a", "b"});
  REQUIRE_THROWS_EXACT(log.row(1), std::invalid_argument, "momnet::CsvLog::row", path,
                       "1 values for 2 columns");
  REQUIRE_THROWS_EXACT(log.row(1, 2, 3), std::invalid_argument, "3 values for 2 columns");
  REQUIRE_THROWS_EXACT(log.row(std::vector<momnet::CsvLog::Cell>{}), std::invalid_argument,
                       "0 values for 2 columns");
  CHECK(read_all(path) == "a,b\n");  // nothing half-written
  std::remove(path.c_str());

  const std::string missing = "/nonexistent-momnet-directory/run.csv";
  REQUIRE_THROWS_EXACT(momnet::CsvLog(missing, {"a"}), std::runtime_error, "momnet::CsvLog",
                       "'" + missing + "'", "cannot open the file for writing", "No such file or directory");
  REQUIRE_THROWS_EXACT(momnet::CsvLog(path, {}), std::invalid_argument, "needs at least one column");
  REQUIRE_THROWS_EXACT(momnet::CsvLog(path, {"a", ""}), std::invalid_argument, "column 1 has an empty name");
  REQUIRE_THROWS_EXACT(momnet::CsvLog(path, {"a", "b", "a"}), std::invalid_argument,
                       "column 'a' appears twice, at 0 and 2");
  std::remove(path.c_str());
}

TEST_CASE("CsvLog appends to a resumed run's log after checking its header", "[csv]") {
  const std::string path = temp_path("append.csv");
  std::remove(path.c_str());
  {
    momnet::CsvLog log(path, {"epoch", "loss"}, momnet::CsvLog::Mode::append);  // no file yet: a new one
    log.row(1, 0.5);
  }
  {
    momnet::CsvLog log(path, {"epoch", "loss"}, momnet::CsvLog::Mode::append);
    log.row(2, 0.25);
  }
  CHECK(read_all(path) == "epoch,loss\n1,0.5\n2,0.25\n");
  {
    std::ofstream partial(path, std::ios::app);
    partial << "3,0.1";  // killed in the middle of a row
  }
  {
    momnet::CsvLog log(path, {"epoch", "loss"}, momnet::CsvLog::Mode::append);
    log.row(3, 0.125);
  }
  CHECK(read_all(path) == "epoch,loss\n1,0.5\n2,0.25\n3,0.1\n3,0.125\n");
  REQUIRE_THROWS_EXACT(momnet::CsvLog(path, {"epoch", "acc"}, momnet::CsvLog::Mode::append), std::runtime_error,
                       "cannot append", "'epoch,loss'", "'epoch,acc'");
  {
    momnet::CsvLog log(path, {"epoch", "acc"});  // truncate: a fresh log
  }
  CHECK(read_all(path) == "epoch,acc\n");
  std::remove(path.c_str());
}
