// Throughput of conv2d's forward and backward (input, weight and bias
// gradients) against Eigen's GEMM rate on the same machine in the same run:
// a 3x3 convolution, 32 -> 32 channels, 28x28, batch 128, stride 1, padding
// 1, float, one thread.
//
//   conv2d/tape      Conv2d::forward then the tape's backward pass: what a
//                    training step pays (includes the tape's own checks)
//   conv2d/kernels   the plain kernels alone (im2col, GEMMs, col2im)
//   gemm/conv_shapes the per-sample GEMMs the kernels run, without unrolling:
//                    the ceiling of im2col + GEMM
//   gemm/square      a square GEMM of about the same work: the machine's rate
//
// Counters: flops per iteration (forward, input gradient and weight gradient:
// 3 x 2 N C_out (C_in / groups) kH kW H' W'; the bias is not counted) and
// GFLOPs, the rate per second of CPU time (one thread: on a shared machine
// the CPU time is the steadier measure). The ratio conv2d / gemm is the
// efficiency.
//
// Run with repetitions, randomly interleaved so that every benchmark sees the
// same load, and compare the best repetitions (min time, max GFLOPs):
//
//   conv2d_throughput --benchmark_repetitions=10
//       --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true
//
// Allocator: as in memory_vs_depth.cpp, main() keeps glibc from returning
// Eigen's GEMM packing buffers to the system after every product.
#include <benchmark/benchmark.h>

#include <momnet/layers/conv2d.hpp>
#include <momnet/ops/conv2d.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using Index = Eigen::Index;

struct Problem {
  Index batch = 128, in = 32, out = 32, size = 28, kernel = 3, stride = 1, padding = 1;
  Index out_size() const { return (size + 2 * padding - (kernel - 1) - 1) / stride + 1; }
  double flops() const {
    return 3.0 * 2.0 * static_cast<double>(batch * out * in * kernel * kernel * out_size() * out_size());
  }
  momnet::Conv2dOptions options() const {
    momnet::Conv2dOptions o;
    o.stride = {stride, stride};
    o.padding = {padding, padding};
    return o;
  }
};

void fill(T* data, Index n, std::uint64_t seed) {
  momnet::Rng rng(seed);
  for (Index i = 0; i < n; ++i) data[i] = static_cast<T>(rng.uniform(-1.0, 1.0));
}

void rate(benchmark::State& state, double flops) {
  state.counters["flops"] = flops;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = static_cast<double>(Eigen::nbThreads());
}

void conv_tape(benchmark::State& state) {
  const Problem p;
  momnet::Rng rng(1);
  momnet::Conv2d<T> layer(p.in, p.out, p.kernel, rng, p.options());
  momnet::Tensor<T> input(momnet::Shape{p.batch, p.in, p.size, p.size});
  fill(input.data(), input.size(), 2);
  std::vector<T> seed(static_cast<std::size_t>(p.batch * p.out * p.out_size() * p.out_size()));
  fill(seed.data(), static_cast<Index>(seed.size()), 3);
  momnet::Tape<T> tape;
  const momnet::Var<T> x = tape.variable(input);
  const auto step = [&] {
    momnet::TapeScope<T> scope(tape);
    const momnet::Var<T> y = layer.forward(tape, x);
    tape.backward(y, seed.data());
  };
  step();  // the tape's arena and gradient pool, Eigen's buffers: allocated and touched
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(layer.weight().grad_data());
    benchmark::ClobberMemory();
  }
  rate(state, p.flops());
}

void conv_kernels(benchmark::State& state) {
  const Problem p;
  momnet::kernels::Conv2dGeometry g;
  g.batch = p.batch;
  g.in_channels = p.in;
  g.out_channels = p.out;
  g.height = g.width = p.size;
  g.kernel_h = g.kernel_w = p.kernel;
  g.stride_h = g.stride_w = p.stride;
  g.pad_h = g.pad_w = p.padding;
  g.out_h = g.out_w = p.out_size();
  momnet::Buffer<T> x(static_cast<std::size_t>(g.input_size())), gx(static_cast<std::size_t>(g.input_size()));
  momnet::Buffer<T> w(static_cast<std::size_t>(g.weight_size())), gw(static_cast<std::size_t>(g.weight_size()));
  momnet::Buffer<T> b(static_cast<std::size_t>(p.out)), gb(static_cast<std::size_t>(p.out));
  momnet::Buffer<T> y(static_cast<std::size_t>(g.output_size())), gy(static_cast<std::size_t>(g.output_size()));
  momnet::Buffer<T> scratch(static_cast<std::size_t>(momnet::kernels::conv2d_scratch_size<T>(g)));
  fill(x.data(), g.input_size(), 4);
  fill(w.data(), g.weight_size(), 5);
  fill(b.data(), p.out, 6);
  fill(gy.data(), g.output_size(), 7);
  const auto step = [&] {
    momnet::kernels::conv2d_forward(g, x.data(), w.data(), b.data(), y.data(), scratch.data());
    momnet::kernels::conv2d_backward(g, x.data(), w.data(), gy.data(), gx.data(), gw.data(), gb.data(),
                                     scratch.data());
  };
  // Touched before timing: the first write to a fresh 12 MB buffer page-faults.
  std::fill(gx.data(), gx.data() + g.input_size(), T(0));
  std::fill(gw.data(), gw.data() + g.weight_size(), T(0));
  std::fill(gb.data(), gb.data() + p.out, T(0));
  step();
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(gx.data());
    benchmark::ClobberMemory();
  }
  rate(state, p.flops());
}

// The three products of each sample: Y = W col, gW += gY col^T, gcol = W^T gY.
void gemm_conv_shapes(benchmark::State& state) {
  const Problem p;
  using Matrix = momnet::RowMatrix<T>;
  const Index rows = p.in * p.kernel * p.kernel, pixels = p.out_size() * p.out_size();
  const Matrix W = Matrix::Random(p.out, rows), col = Matrix::Random(rows, pixels);
  const Matrix gY = Matrix::Random(p.out, pixels);
  Matrix Y(p.out, pixels), gW = Matrix::Zero(p.out, rows), gcol(rows, pixels);
  for (auto _ : state) {
    for (Index n = 0; n < p.batch; ++n) {
      Y.noalias() = W * col;
      gW.noalias() += gY * col.transpose();
      gcol.noalias() = W.transpose() * gY;
    }
    benchmark::DoNotOptimize(Y.data());
    benchmark::DoNotOptimize(gcol.data());
    benchmark::ClobberMemory();
  }
  rate(state, p.flops());
}

// n x n by n x n with 2 n^3 close to the convolution's flops.
void gemm_square(benchmark::State& state) {
  const Problem p;
  using Matrix = momnet::RowMatrix<T>;
  Index n = 64;
  while (2.0 * static_cast<double>(n + 64) * static_cast<double>(n + 64) * static_cast<double>(n + 64) <= p.flops()) {
    n += 64;
  }
  const Matrix A = Matrix::Random(n, n), B = Matrix::Random(n, n);
  Matrix C(n, n);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  state.counters["n"] = static_cast<double>(n);
  rate(state, 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n));
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  Eigen::setNbThreads(1);
  const char* shape = "3x3_32to32_28x28_B128";
  for (const auto& [name, function] :
       {std::pair{"conv2d/tape/", &conv_tape}, std::pair{"conv2d/kernels/", &conv_kernels},
        std::pair{"gemm/conv_shapes/", &gemm_conv_shapes}, std::pair{"gemm/square/", &gemm_square}}) {
    // On a shared machine the best repetition is the one least disturbed:
    // read the "min" time, and the "max" of the GFLOPs counter.
    benchmark::RegisterBenchmark((std::string(name) + shape).c_str(), function)
        ->Unit(benchmark::kMillisecond)
        ->ComputeStatistics("min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); })
        ->ComputeStatistics("max", [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); });
  }
  benchmark::AddCustomContext("momnet.eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
