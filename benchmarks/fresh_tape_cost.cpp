// What a new Tape per training step costs against one reused Tape (clear()
// between steps), and with a ChunkCache kept across the fresh tapes: time per
// step and minor page faults (getrusage), for an MLP of 8 layers (Linear 256 ->
// 256 and tanh), batch 256, float, SGD. glibc's default malloc thresholds are
// left alone on purpose: this is what a user's program sees.
//
//   build/release/benchmarks/fresh_tape_cost [steps] [batch] [fresh]
//
// (built with the benchmarks; a plain program, since it measures whole
// processes' allocator state, which Google Benchmark's repetitions would mix).
#include <momnet/momnet.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace momnet;

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

struct Model {
  std::vector<Linear<float>> layers;
  explicit Model(Rng& rng) {
    for (int i = 0; i < 8; ++i) layers.emplace_back(256, 256, rng);
  }
  Var<float> operator()(Tape<float>& tape, Var<float> x) {
    for (Linear<float>& layer : layers) x = tanh(layer.forward(tape, x));
    return x;
  }
  std::vector<Parameter<float>*> parameters() {
    std::vector<Parameter<float>*> all;
    for (Linear<float>& layer : layers) {
      all.push_back(&layer.weight());
      all.push_back(&layer.bias());
    }
    return all;
  }
};

struct Cost {
  double ms_per_step;
  double faults_per_step;
};

template <class Step>
Cost measure(int steps, Step&& step) {
  for (int i = 0; i < 3; ++i) step();  // warm up
  const long faults = minor_faults();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Cost{1e3 * seconds / steps, static_cast<double>(minor_faults() - faults) / steps};
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 200;
  const Eigen::Index batch = argc > 2 ? std::atoi(argv[2]) : 256;
  Rng rng(1);
  Model model(rng);
  SGD<float> sgd(model.parameters(), {1e-4});
  Eigen::MatrixXf x(batch, 256), y(batch, 256);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform(-1, 1));
  for (Eigen::Index i = 0; i < y.size(); ++i) y.data()[i] = static_cast<float>(rng.uniform(-1, 1));

  auto train = [&](Tape<float>& tape) {
    const Var<float> loss = mse(model(tape, tape.constant(x)), tape.constant(y));
    sgd.zero_grad();
    tape.backward(loss);
    sgd.step();
  };

  Tape<float> reused;
  const auto run_reused = [&] {
    train(reused);
    reused.clear();
  };
  const auto run_fresh = [&] {
    Tape<float> tape;
    train(tape);
  };
  ChunkCache cache;
  const auto run_cached = [&] {
    Tape<float> tape(cache);
    train(tape);
  };

  // Interleaved rounds: the machine's load drifts, the comparison should not.
  Cost best_reused{1e30, 0}, best_fresh{1e30, 0};
  Cost best_cached{1e30, 0};
  // "fresh" as a third argument measures fresh tapes first, before any
  // other pattern has shaped the allocator's thresholds.
  const bool fresh_first = argc > 3 && std::string(argv[3]) == "fresh";
  for (int round = 0; round < 3; ++round) {
    const Cost f0 = fresh_first ? measure(steps, run_fresh) : Cost{1e30, 0};
    const Cost r = measure(steps, run_reused);
    Cost f = measure(steps, run_fresh);
    if (f0.ms_per_step < f.ms_per_step) f = f0;
    if (r.ms_per_step < best_reused.ms_per_step) best_reused = r;
    if (f.ms_per_step < best_fresh.ms_per_step) best_fresh = f;
    const Cost c = measure(steps, run_cached);
    if (c.ms_per_step < best_cached.ms_per_step) best_cached = c;
  }
  std::printf("reused tape: %.3f ms/step, %.1f minor faults/step\n", best_reused.ms_per_step,
              best_reused.faults_per_step);
  std::printf("fresh tape:  %.3f ms/step, %.1f minor faults/step, %.3fx the reused tape\n", best_fresh.ms_per_step,
              best_fresh.faults_per_step, best_fresh.ms_per_step / best_reused.ms_per_step);
  std::printf("fresh tape + ChunkCache: %.3f ms/step, %.1f minor faults/step, %.3fx the reused tape\n",
              best_cached.ms_per_step, best_cached.faults_per_step,
              best_cached.ms_per_step / best_reused.ms_per_step);
  return 0;
}
