// The exact mode's integer work alone: nanoseconds per element per layer for
// the forward step and for the inverse, on batch x width elements (default
// 1024 x 256). These loops must vectorise (about 1 and 2 ns per element with
// AVX-512); a change that stops GCC vectorising them shows here at once as a
// five- to tenfold jump, and in memory_vs_depth only as a lower efficiency.
//
//   bit_store [--elements=262144] [--layers=64] [--gamma=0.9] [benchmark flags]

#include <benchmark/benchmark.h>

#include <momnet/exact_momentum.hpp>
#include <momnet/random.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

struct Settings {
  Eigen::Index elements = 1024 * 256;
  std::size_t layers = 64;
  double gamma = 0.9;
};

std::vector<float> uniform_values(Eigen::Index n, std::uint64_t seed) {
  momnet::Rng rng(seed);
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& value : values) value = static_cast<float>(rng.uniform(-1.0, 1.0));
  return values;
}

// Each iteration loads a state, runs `layers` forward steps and inverts them
// all; the manual time is the forward half or the inverse half.
void run(benchmark::State& state, const Settings& s, bool time_inverse) {
  momnet::MemoryCounter counter;
  momnet::ExactMomentum<float> engine(s.elements, momnet::FixedPointFormat(momnet::default_fraction_bits<float>()),
                                      momnet::RationalGamma(s.gamma, 16), counter);
  const std::vector<float> x = uniform_values(s.elements, 1);
  const std::vector<float> f = uniform_values(s.elements, 2);
  using Clock = std::chrono::steady_clock;
  double timed_seconds = 0.0;
  for (auto _ : state) {
    engine.load(x.data(), nullptr);
    const auto start = Clock::now();
    for (std::size_t layer = 0; layer < s.layers; ++layer) engine.step(f.data(), layer);
    const auto middle = Clock::now();
    for (std::size_t layer = s.layers; layer-- > 0;) {
      engine.unstep_position(layer);
      engine.unstep_velocity(f.data(), layer);
    }
    const auto end = Clock::now();
    engine.verify_store_empty();
    const double timed = std::chrono::duration<double>(time_inverse ? end - middle : middle - start).count();
    state.SetIterationTime(timed);
    timed_seconds += timed;
    benchmark::DoNotOptimize(engine.x());
  }
  const double element_layers = static_cast<double>(s.elements) * static_cast<double>(s.layers);
  state.counters["ns_per_element"] = timed_seconds * 1e9 / (element_layers * static_cast<double>(state.iterations()));
  state.counters["spills"] = static_cast<double>(engine.spill_count());
}

bool read_flag(const std::string& arg, const char* name, std::string& value) {
  const std::string prefix = std::string("--") + name + "=";
  if (arg.compare(0, prefix.size(), prefix) != 0) return false;
  value = arg.substr(prefix.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    try {
      if (read_flag(arg, "elements", value)) {
        settings.elements = std::stol(value);
      } else if (read_flag(arg, "layers", value)) {
        settings.layers = std::stoul(value);
      } else if (read_flag(arg, "gamma", value)) {
        settings.gamma = std::stod(value);
      } else {
        rest.push_back(argv[i]);
      }
    } catch (const std::exception&) {
      std::cerr << "bit_store: cannot read " << arg << "\n";
      return 2;
    }
  }
  if (settings.elements < 1 || settings.layers < 1 || !(settings.gamma > 0.0 && settings.gamma < 1.0)) {
    std::cerr << "bit_store: --elements and --layers must be positive and --gamma in (0, 1)\n";
    return 2;
  }
  int rest_count = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_count, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_count, rest.data())) return 2;
  const std::string shape = "E" + std::to_string(settings.elements) + "_L" + std::to_string(settings.layers);
  benchmark::RegisterBenchmark(("bit_store/forward/" + shape).c_str(),
                               [settings](benchmark::State& st) { run(st, settings, false); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(("bit_store/inverse/" + shape).c_str(),
                               [settings](benchmark::State& st) { run(st, settings, true); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
