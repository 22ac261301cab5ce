// Memory and time of one training step (forward, backward, SGD step) versus
// depth, for an MLP residual stack under four modes: Residual (a plain
// ResNet), MomentumResidual with stored activations, with the exact
// memory-free backward, and with the floating-point inverse. In the same run
// it times Eigen's plain GEMMs on the step's shapes, so that the step's
// efficiency is a ratio measured on one machine at one time.
//
// Options (before Google Benchmark's own --benchmark_* flags):
//   --depths=16,64,256,1024  --batch=1024  --width=256  --hidden=256
//   --activation=tanh|relu|gelu|sigmoid|softplus  --gamma=0.9
//   --tied=both|yes|no  --modes=residual,stored,exact,float  --threads=1
//
// Counters per run: peak_bytes (the tape's counting allocator over the step),
// bit_store_bytes, parameter_bytes, peak_rss_bytes (the process's resident
// high-water mark, reset before the run where Linux allows), flops (counted
// per step: 12 B d h per layer for forward + backward, 4 B d h more for a
// rebuilt forward) and GFLOPs (flops per second), threads.
//
// Allocator: Eigen allocates and frees its GEMM packing buffers (hundreds of
// KiB) in every product. With glibc's defaults those come from mmap or are
// trimmed back to the system on free, so every product page-faults them in
// again: on the 2-core VM this was measured on, that cut Eigen's GEMM from 120
// to 32 GFLOP/s. Long-running programs usually escape it (freeing a large
// block raises glibc's thresholds), but which state a benchmark starts in is
// luck. main() therefore fixes glibc's thresholds for the whole run, baseline
// GEMM and training steps alike; see the README's performance notes.
#include <benchmark/benchmark.h>

#include <momnet/momnet.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/resource.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using Block = momnet::MLPBlock<T>;

struct Settings {
  std::vector<std::size_t> depths{16, 64, 256, 1024};
  Eigen::Index batch = 1024, width = 256, hidden = 256;
  momnet::ActivationKind activation = momnet::ActivationKind::tanh;
  double gamma = 0.9;
  std::vector<bool> tied{true, false};
  std::vector<std::string> modes{"residual", "stored", "exact", "float"};
  int threads = 1;
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

momnet::ActivationKind parse_activation(const std::string& name) {
  for (auto kind : {momnet::ActivationKind::tanh, momnet::ActivationKind::relu, momnet::ActivationKind::gelu,
                    momnet::ActivationKind::sigmoid, momnet::ActivationKind::softplus,
                    momnet::ActivationKind::identity}) {
    if (name == momnet::to_string(kind)) return kind;
  }
  throw std::invalid_argument("unknown --activation=" + name);
}

// Takes our options out of argv, leaving Google Benchmark's.
Settings parse(int& argc, char** argv) {
  Settings s;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--depths") {
      s.depths.clear();
      for (const auto& d : split(value)) s.depths.push_back(std::stoul(d));
    } else if (key == "--batch") {
      s.batch = std::stol(value);
    } else if (key == "--width") {
      s.width = std::stol(value);
    } else if (key == "--hidden") {
      s.hidden = std::stol(value);
    } else if (key == "--activation") {
      s.activation = parse_activation(value);
    } else if (key == "--gamma") {
      s.gamma = std::stod(value);
    } else if (key == "--tied") {
      if (value == "both") s.tied = {true, false};
      else if (value == "yes") s.tied = {true};
      else if (value == "no") s.tied = {false};
      else throw std::invalid_argument("--tied must be both, yes or no");
    } else if (key == "--modes") {
      s.modes = split(value);
      for (const auto& m : s.modes) {
        if (m != "residual" && m != "stored" && m != "exact" && m != "float") {
          throw std::invalid_argument("unknown mode in --modes: " + m);
        }
      }
    } else if (key == "--threads") {
      s.threads = std::stoi(value);
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  return s;
}

// Gives the heap's free pages back to the system (glibc), so that memory an
// earlier, larger run freed does not count in this run's resident set.
void return_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// Resets the process's resident-set high-water mark (Linux >= 4.0).
void reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  if (clear) clear << "5";
}

double peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return 1024.0 * std::stod(line.substr(6));  // kB
  }
#if defined(__linux__)
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return 1024.0 * static_cast<double>(usage.ru_maxrss);
#else
  return 0.0;
#endif
}

momnet::Tensor<T> random_tensor(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  momnet::Tensor<T> t(momnet::Shape{rows, cols});
  momnet::Rng rng(seed);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(rng.uniform(-1, 1));
  return t;
}

std::vector<Block> make_blocks(const Settings& s, std::size_t count) {
  momnet::Rng rng(7);
  std::vector<Block> blocks;
  blocks.reserve(count);
  for (std::size_t i = 0; i < count; ++i) blocks.emplace_back(s.width, s.hidden, rng, s.activation);
  return blocks;
}

// One training step is forward, backward and an SGD step; the float_inverse
// mode skips the SGD step (`update` false): past a few hundred layers its
// gradients are garbage (its drift check is off here, to time it), and
// applying them would turn the weights to NaN.
template <class Model>
void train_steps(benchmark::State& state, Model& model, const Settings& s, std::size_t depth, bool rebuilds,
                 bool update) {
  const momnet::Tensor<T> input = random_tensor(s.batch, s.width, 1);
  momnet::SGD<T> sgd(momnet::parameters_of(model), {1e-4});
  // The arena's chunks grow to 4 MiB, glibc's mmap threshold as set in main():
  // its memory goes back to the system with the tape, keeping later runs'
  // peak RSS honest.
  momnet::Tape<T> tape;
  std::size_t store_bytes = 0;
  auto step = [&] {
    tape.clear();
    sgd.zero_grad();
    const momnet::Var<T> x = tape.constant(input);
    momnet::Var<T> out;
    if constexpr (std::is_same_v<Model, momnet::Residual<Block>>) {
      out = model(tape, x);
    } else {
      const auto result = model.forward(tape, x);
      out = result.x;
      store_bytes = result.bit_store_bytes;
    }
    tape.backward(momnet::mean(momnet::square(out)));
    if (update) sgd.step();
  };
  return_free_memory();  // what earlier runs freed is not this run's
  step();                // warm-up: the arena reaches its working size
  tape.memory().reset_peak();
  reset_peak_rss();
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  const double bdh = static_cast<double>(s.batch) * static_cast<double>(s.width) * static_cast<double>(s.hidden);
  const double flops = (rebuilds ? 16.0 : 12.0) * bdh * static_cast<double>(depth);
  state.counters["peak_bytes"] = static_cast<double>(tape.memory().peak_bytes());
  state.counters["bit_store_bytes"] = static_cast<double>(store_bytes);
  state.counters["parameter_bytes"] = static_cast<double>(momnet::parameter_count(model)) * 2 * sizeof(T);
  state.counters["peak_rss_bytes"] = peak_rss_bytes();
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["depth"] = static_cast<double>(depth);
  state.counters["threads"] = static_cast<double>(Eigen::nbThreads());
}

void run_mode(benchmark::State& state, const Settings& s, const std::string& mode, std::size_t depth, bool tied) {
  auto blocks = make_blocks(s, tied ? 1 : depth);
  if (mode == "residual") {
    momnet::Residual<Block> model = tied ? momnet::Residual<Block>(blocks[0], depth)
                                         : momnet::Residual<Block>(std::move(blocks));
    train_steps(state, model, s, depth, false, true);
    return;
  }
  momnet::MomentumOptions options;
  options.gamma = s.gamma;
  options.mode = mode == "stored" ? momnet::BackwardMode::stored
                 : mode == "exact" ? momnet::BackwardMode::exact
                                   : momnet::BackwardMode::float_inverse;
  // The float inverse drifts at depth: measure its speed, not its refusal.
  options.float_drift_tolerance = INFINITY;
  momnet::MomentumResidual<Block> model = tied ? momnet::MomentumResidual<Block>(blocks[0], depth, options)
                                               : momnet::MomentumResidual<Block>(std::move(blocks), options);
  train_steps(state, model, s, depth, mode != "stored", mode != "float");
}

// The six GEMMs of one MLP block's training step, on the step's shapes and
// row-major layout: forward X W1^T and H W2^T, backward dY W, dY^T X for each.
void gemm_rate(benchmark::State& state, const Settings& s) {
  using Matrix = momnet::RowMatrix<T>;
  const Eigen::Index B = s.batch, d = s.width, h = s.hidden;
  const Matrix X = Matrix::Random(B, d), W1 = Matrix::Random(h, d), W2 = Matrix::Random(d, h);
  Matrix H(B, h), Y(B, d), dH(B, h), dX(B, d), dW1(h, d), dW2(d, h);
  const Matrix dY = Matrix::Random(B, d);
  for (auto _ : state) {
    H.noalias() = X * W1.transpose();
    Y.noalias() = H * W2.transpose();
    dH.noalias() = dY * W2;
    dW2.noalias() = dY.transpose() * H;
    dX.noalias() = dH * W1;
    dW1.noalias() = dH.transpose() * X;
    benchmark::DoNotOptimize(Y.data());
    benchmark::DoNotOptimize(dX.data());
    benchmark::ClobberMemory();
  }
  const double flops = 12.0 * static_cast<double>(B) * static_cast<double>(d) * static_cast<double>(h);
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = static_cast<double>(Eigen::nbThreads());
}

}  // namespace

// Keeps blocks under 4 MiB (Eigen's packing buffers, arena chunks) on the
// heap and the heap's top untrimmed up to 64 MiB; larger blocks still come
// from mmap and return to the system when freed, so peak RSS stays meaningful.
void keep_small_blocks_resident() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

int main(int argc, char** argv) {
  keep_small_blocks_resident();
  Settings settings;
  try {
    settings = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "memory_vs_depth: " << e.what() << "\n";
    return 2;
  }
  Eigen::setNbThreads(settings.threads);
  const std::string shape = "B" + std::to_string(settings.batch) + "_d" + std::to_string(settings.width) + "_h" +
                            std::to_string(settings.hidden);
  benchmark::RegisterBenchmark(("gemm/" + shape).c_str(), [settings](benchmark::State& st) { gemm_rate(st, settings); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (bool tied : settings.tied) {
    for (const std::string& mode : settings.modes) {
      for (std::size_t depth : settings.depths) {
        const std::string name = "step/" + mode + "/" + (tied ? "tied" : "untied") + "/" + shape + "/depth:" +
                                 std::to_string(depth);
        benchmark::RegisterBenchmark(name.c_str(), [settings, mode, depth, tied](benchmark::State& st) {
          run_mode(st, settings, mode, depth, tied);
        })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
  }
  benchmark::AddCustomContext("momnet.threads", std::to_string(settings.threads));
  benchmark::AddCustomContext("momnet.eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("momnet.activation", momnet::to_string(settings.activation));
  benchmark::AddCustomContext("momnet.gamma", std::to_string(settings.gamma));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
