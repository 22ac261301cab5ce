// Memory and time of one training step (forward, backward, SGD step) of a
// conv stage versus depth: `depth` torchvision BasicBlocks (3x3 convolutions,
// batch norm in training mode, ReLU after the addition) at a fixed
// resolution and width, as a ResNet stage (Residual) and as a Momentum ResNet
// stage (MomentumResidual, exact backward). In the same run it times the
// GEMM the convolutions lower to (im2col: [C_out, 9 C_in] x [9 C_in, B H W]),
// so that the stage's throughput is a ratio measured on one machine at one
// time.
//
// Options (before Google Benchmark's own --benchmark_* flags):
//   --depths=8,16,32,64  --batch=128  --channels=32  --size=28  --gamma=0.9
//   --modes=residual,exact,stored  --threads=1
//
// Counters per run: peak_bytes (the tape's counting allocator over the
// step), bit_store_bytes, flops (per step: forward, backward = 2 forwards,
// and one more forward for the exact mode's rebuild; convolutions only) and
// GFLOPs, depth, threads.
#include <benchmark/benchmark.h>

#include <momnet/momnet.hpp>
#include <momnet/models/basic_block.hpp>

#include <cmath>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using Block = momnet::BasicBlock<T>;

struct Settings {
  std::vector<std::size_t> depths{8, 16, 32, 64};
  Eigen::Index batch = 128, channels = 32, size = 28;
  double gamma = 0.9;
  std::vector<std::string> modes{"residual", "exact"};
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
    } else if (key == "--channels") {
      s.channels = std::stol(value);
    } else if (key == "--size") {
      s.size = std::stol(value);
    } else if (key == "--gamma") {
      s.gamma = std::stod(value);
    } else if (key == "--modes") {
      s.modes = split(value);
      for (const auto& m : s.modes) {
        if (m != "residual" && m != "stored" && m != "exact") throw std::invalid_argument("unknown mode in --modes: " + m);
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

// Two 3x3 convolutions per block, 2 * 9 * C^2 multiply-adds per output pixel.
double forward_flops(const Settings& s) {
  return 2.0 * 2.0 * 9.0 * static_cast<double>(s.channels * s.channels) * static_cast<double>(s.batch * s.size * s.size);
}

template <class Model>
void train_steps(benchmark::State& state, Model& model, const Settings& s, std::size_t depth, bool rebuilds) {
  momnet::Tensor<T> input(momnet::Shape{s.batch, s.channels, s.size, s.size});
  momnet::Rng rng(1);
  for (Eigen::Index i = 0; i < input.size(); ++i) input.data()[i] = static_cast<T>(rng.uniform(-1, 1));
  momnet::SGD<T> sgd(momnet::parameters_of(model), {1e-4});
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
    sgd.step();
  };
  step();  // warm-up: the arena reaches its working size
  tape.memory().reset_peak();
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  const double flops = (rebuilds ? 4.0 : 3.0) * forward_flops(s) * static_cast<double>(depth);
  state.counters["peak_bytes"] = static_cast<double>(tape.memory().peak_bytes());
  state.counters["bit_store_bytes"] = static_cast<double>(store_bytes);
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["depth"] = static_cast<double>(depth);
  state.counters["threads"] = static_cast<double>(Eigen::nbThreads());
}

void run_mode(benchmark::State& state, const Settings& s, const std::string& mode, std::size_t depth) {
  momnet::Rng rng(7);
  std::vector<Block> blocks;
  blocks.reserve(depth);
  for (std::size_t i = 0; i < depth; ++i) blocks.emplace_back(s.channels, s.channels, 1, rng);
  if (mode == "residual") {
    momnet::ResidualOptions options;
    options.residual_blocks = false;  // BasicBlock computes relu(F(x) + x) itself
    momnet::Residual<Block> model(std::move(blocks), options);
    train_steps(state, model, s, depth, false);
    return;
  }
  momnet::MomentumOptions options;
  options.gamma = s.gamma;
  options.residual_blocks = false;
  options.mode = mode == "stored" ? momnet::BackwardMode::stored : momnet::BackwardMode::exact;
  momnet::MomentumResidual<Block> model(std::move(blocks), options);
  train_steps(state, model, s, depth, mode == "exact");
}

// The GEMMs of one 3x3 convolution's training step as im2col lowers them:
// forward W [C, 9C] x cols [9C, BHW], and the backward's two products.
void gemm_rate(benchmark::State& state, const Settings& s) {
  using Matrix = momnet::RowMatrix<T>;
  const Eigen::Index c = s.channels, k = 9 * s.channels, n = s.batch * s.size * s.size;
  const Matrix W = Matrix::Random(c, k), cols = Matrix::Random(k, n), dY = Matrix::Random(c, n);
  Matrix Y(c, n), dcols(k, n), dW(c, k);
  for (auto _ : state) {
    Y.noalias() = W * cols;
    dcols.noalias() = W.transpose() * dY;
    dW.noalias() = dY * cols.transpose();
    benchmark::DoNotOptimize(Y.data());
    benchmark::DoNotOptimize(dW.data());
    benchmark::ClobberMemory();
  }
  const double flops = 3.0 * 2.0 * static_cast<double>(c) * static_cast<double>(k) * static_cast<double>(n);
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = static_cast<double>(Eigen::nbThreads());
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  // As memory_vs_depth: Eigen's packing buffers stay on the heap.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  Settings settings;
  try {
    settings = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "conv_stage: " << e.what() << "\n";
    return 2;
  }
  Eigen::setNbThreads(settings.threads);
  const std::string shape = "B" + std::to_string(settings.batch) + "_C" + std::to_string(settings.channels) + "_" +
                            std::to_string(settings.size) + "x" + std::to_string(settings.size);
  benchmark::RegisterBenchmark(("gemm/" + shape).c_str(), [settings](benchmark::State& st) { gemm_rate(st, settings); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const std::string& mode : settings.modes) {
    for (std::size_t depth : settings.depths) {
      // The names memory_vs_depth uses, so that report.py reads both.
      const std::string name = "step/" + mode + "/untied/" + shape + "/depth:" + std::to_string(depth);
      benchmark::RegisterBenchmark(name.c_str(), [settings, mode, depth](benchmark::State& st) {
        run_mode(st, settings, mode, depth);
      })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  benchmark::AddCustomContext("momnet.threads", std::to_string(settings.threads));
  benchmark::AddCustomContext("momnet.eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("momnet.gamma", std::to_string(settings.gamma));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
