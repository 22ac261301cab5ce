// Data-parallel training steps over MPI: the time and throughput of one step
// (forward, backward, status agreement, bucketed gradient allreduce, SGD
// step) of the headline MLP configuration (memory_vs_depth's: a Momentum
// ResNet of 64 MLP blocks, width 256, hidden 256, tanh, gamma 0.9, exact
// mode, float; untied blocks, 8.4 M parameters) on however many ranks it is
// started with, one thread each:
//
//   OMP_NUM_THREADS=1 mpirun -np 1 build/release/benchmarks/distributed_step
//   OMP_NUM_THREADS=1 mpirun -np 2 build/release/benchmarks/distributed_step
//
// (as root, add --allow-run-as-root). The global batch (--batch, 1024) is
// split over the ranks (strong scaling: the same training as one process);
// --scaling=weak gives every rank the whole batch instead. Rank 0 prints
// the median time of each phase over the timed steps (each phase's time is
// the slowest rank's), the throughput, and a cost model of the same step on
// P = 8 and 64 machines (docs/distributed.md explains it) from this run's
// measured compute times.
//
// Options: --depth=64 --batch=1024 --width=256 --hidden=256 --gamma=0.9
// --steps=10 --warmup=2 --bucket-mb=25 --scaling=strong|weak --tied
//
// A plain program rather than a Google Benchmark: every rank must run the
// same number of steps, which Google Benchmark's adaptive iteration counts
// would not guarantee. glibc's allocator is set as in memory_vs_depth (see
// its notes), with a higher threshold (main()).
#include <momnet/distributed/distributed.hpp>
#include <momnet/momnet.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using Block = momnet::MLPBlock<T>;
namespace md = momnet::distributed;

struct Settings {
  std::size_t depth = 64;
  Eigen::Index batch = 1024, width = 256, hidden = 256;
  double gamma = 0.9;
  int steps = 10, warmup = 2;
  double bucket_mb = 25;
  bool weak = false;
  bool tied = false;
};

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--depth") s.depth = std::stoul(value);
    else if (key == "--batch") s.batch = std::stol(value);
    else if (key == "--width") s.width = std::stol(value);
    else if (key == "--hidden") s.hidden = std::stol(value);
    else if (key == "--gamma") s.gamma = std::stod(value);
    else if (key == "--steps") s.steps = std::stoi(value);
    else if (key == "--warmup") s.warmup = std::stoi(value);
    else if (key == "--bucket-mb") s.bucket_mb = std::stod(value);
    else if (key == "--scaling" && (value == "strong" || value == "weak")) s.weak = value == "weak";
    else if (key == "--tied") s.tied = true;
    else throw std::invalid_argument("unknown option " + arg);
  }
  if (s.steps < 1 || s.warmup < 0 || s.batch < 1 || s.bucket_mb <= 0) throw std::invalid_argument("bad option value");
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// The slowest rank's value.
double slowest(const md::Communicator& comm, double value) {
  const auto all = comm.allgather(value, "distributed_step");
  return *std::max_element(all.begin(), all.end());
}

// Ring allreduce of `bytes` in `buckets` messages on P machines with link
// bandwidth `beta` (bytes/s) and per-message latency `alpha` (s): 2(P-1)
// rounds per bucket, each rank sending 2(P-1)/P of the data.
double ring_seconds(double bytes, double buckets, int p, double alpha, double beta) {
  return buckets * 2.0 * (p - 1) * alpha + 2.0 * (p - 1) / p * bytes / beta;
}

// Overlapping the allreduce with the backward pass, which produces the
// gradients at an even rate, one bucket of b bytes after another: bucket k
// can start when the backward has produced it and the link is free, so the
// last one ends at max(backward + t(b), backward b / S + t_total(b)), where
// t(b) is one bucket's ring time and t_total(b) all S / b buckets'. What shows
// beyond the backward is the exposed time; the best b (a whole number of
// layers, the granularity of a per-layer hook) minimises it.
struct Overlap {
  double bucket = 0, exposed = 0;
};
Overlap best_overlap(double bytes, double layer_bytes, double backward, int p, double alpha, double beta) {
  Overlap best{bytes, 1e300};
  for (double layers = 1; layers * layer_bytes <= bytes * (1 + 1e-9); ++layers) {
    const double b = layers * layer_bytes;
    const double total = ring_seconds(bytes, std::ceil(bytes / b - 1e-9), p, alpha, beta);
    const double tail = ring_seconds(b, 1, p, alpha, beta);
    const double exposed = std::max(tail, total - backward * (1 - b / bytes));
    if (exposed < best.exposed * (1 - 1e-6)) best = Overlap{b, exposed};
  }
  return best;
}

void cost_model(const Settings& s, double forward_per_sample, double backward_per_sample, double optimiser,
                double gradient_bytes, double layer_bytes, double buckets) {
  struct Network {
    const char* name;
    double alpha, beta;
  };
  const Network networks[] = {{"10 GbE", 25e-6, 1.25e9}, {"100 Gb/s InfiniBand", 3e-6, 12.5e9}};
  std::printf("\ncost model (docs/distributed.md): compute per sample as measured above (forward %.3f ms, "
              "backward %.3f ms), %.1f MB of gradients per step, ring allreduce\n",
              forward_per_sample * 1e3, backward_per_sample * 1e3, gradient_bytes / 1e6);
  std::printf("%-20s %3s %7s %9s %8s %9s %10s %10s %11s %10s %10s\n", "network", "P", "batch/P", "compute", "ring",
              "ring/comp", "after bwd", "overlap", "bucket", "eff. after", "eff. ovl");
  for (const Network& net : networks) {
    for (int p : {8, 64}) {
      for (const bool weak : {false, true}) {
        const double local = weak ? static_cast<double>(s.batch) : static_cast<double>(s.batch) / p;
        if (local < 1) continue;
        const double backward = backward_per_sample * local;
        const double compute = forward_per_sample * local + backward + optimiser;
        const double ring = ring_seconds(gradient_bytes, buckets, p, net.alpha, net.beta);
        const Overlap o = best_overlap(gradient_bytes, layer_bytes, backward, p, net.alpha, net.beta);
        std::printf("%-20s %3d %7.0f %7.1f ms %5.1f ms %9.2f %7.1f ms %7.1f ms %8.2f MB %9.0f%% %9.0f%%%s\n",
                    net.name, p, local, compute * 1e3, ring * 1e3, ring / compute, (compute + ring) * 1e3,
                    (compute + o.exposed) * 1e3, o.bucket / 1e6, 100 * compute / (compute + ring),
                    100 * compute / (compute + o.exposed), weak ? "  weak" : "");
      }
    }
  }
  std::printf("(ms per step; after bwd: the allreduce after the backward pass, as now, in this run's buckets; "
              "overlap: started bucket by bucket during the backward, in the bucket that hides most; eff.: compute / "
              "step. Strong scaling at batch/P = 16 runs the GEMMs below the rate measured here: optimistic.)\n");
}

int run(md::Communicator& world, int argc, char** argv) {
  const Settings s = parse(argc, argv);
  Eigen::setNbThreads(1);
  const int p = world.size();
  if (!s.weak && s.batch % p != 0) throw std::invalid_argument("--batch must be divisible by the number of ranks");
  const Eigen::Index local = s.weak ? s.batch : s.batch / p;

  momnet::Rng rng(7);
  std::vector<Block> blocks;
  for (std::size_t i = 0; i < (s.tied ? 1 : s.depth); ++i) blocks.emplace_back(s.width, s.hidden, rng);
  momnet::MomentumOptions options;
  options.gamma = s.gamma;
  options.mode = momnet::BackwardMode::exact;
  momnet::MomentumResidual<Block> model = s.tied ? momnet::MomentumResidual<Block>(blocks[0], s.depth, options)
                                                 : momnet::MomentumResidual<Block>(std::move(blocks), options);
  md::DataParallelOptions ddp_options;
  ddp_options.bucket_bytes = static_cast<std::size_t>(s.bucket_mb * (1 << 20));
  md::DistributedDataParallel<momnet::MomentumResidual<Block>> ddp(model, world, ddp_options);
  momnet::SGD<T> sgd(momnet::parameters_of(model), {1e-4});

  momnet::Tensor<T> input(momnet::Shape{local, s.width});
  momnet::Rng data(100 + static_cast<std::uint64_t>(world.rank()));
  for (Eigen::Index i = 0; i < input.size(); ++i) input.data()[i] = static_cast<T>(data.uniform(-1, 1));

  momnet::Tape<T> tape;
  std::vector<double> forward, backward, agreement, reduce, optimiser, total;
  const md::Communicator& comm = ddp.communicator();
  for (int step = 0; step < s.warmup + s.steps; ++step) {
    comm.barrier();
    const auto start = std::chrono::steady_clock::now();
    sgd.zero_grad();
    double t_forward = 0, t_backward = 0;
    // The phases of ddp.step(), timed one by one.
    std::exception_ptr failure;
    try {
      auto t = std::chrono::steady_clock::now();
      tape.clear();
      const momnet::Var<T> out = model.forward(tape, tape.constant(input)).x;
      const momnet::Var<T> loss = momnet::mean(momnet::square(out));
      t_forward = seconds_since(t);
      t = std::chrono::steady_clock::now();
      tape.backward(loss);
      t_backward = seconds_since(t);
    } catch (...) {
      failure = std::current_exception();
    }
    auto t = std::chrono::steady_clock::now();
    md::agree(comm, "distributed_step: step " + std::to_string(step), failure, ddp.options().timeout_seconds);
    const double t_agree = seconds_since(t);
    t = std::chrono::steady_clock::now();
    ddp.reducer().reduce();
    const double t_reduce = seconds_since(t);
    t = std::chrono::steady_clock::now();
    sgd.step();
    const double t_optimiser = seconds_since(t);
    const double t_total = seconds_since(start);
    if (step < s.warmup) continue;
    forward.push_back(slowest(comm, t_forward));
    backward.push_back(slowest(comm, t_backward));
    agreement.push_back(slowest(comm, t_agree));
    reduce.push_back(slowest(comm, t_reduce));
    optimiser.push_back(slowest(comm, t_optimiser));
    total.push_back(slowest(comm, t_total));
  }
  md::check_replicas_equal(comm, model);

  if (world.rank() == 0) {
    const double bytes = static_cast<double>(ddp.reducer().bytes_per_step());
    const double step_s = median(total);
    const double samples = static_cast<double>(local) * p;
    std::printf("distributed_step: %d rank(s), 1 thread each (Eigen %s); depth %zu, width %ld, hidden %ld, gamma %g, "
                "exact, float, %s blocks\n",
                p, Eigen::SimdInstructionSetsInUse(), s.depth, static_cast<long>(s.width),
                static_cast<long>(s.hidden), s.gamma, s.tied ? "tied" : "untied");
    std::printf("batch %ld per rank, %.0f per step (%s scaling); %.1f MB of gradients per step in %zu bucket(s) of "
                "<= %g MiB\n",
                static_cast<long>(local), samples, s.weak ? "weak" : "strong", bytes / 1e6,
                ddp.reducer().bucket_count(), s.bucket_mb);
    std::printf("median of %d steps, ms (slowest rank): forward %.1f  backward %.1f  agreement %.2f  allreduce %.1f  "
                "optimiser %.1f  step %.1f\n",
                s.steps, median(forward) * 1e3, median(backward) * 1e3, median(agreement) * 1e3, median(reduce) * 1e3,
                median(optimiser) * 1e3, step_s * 1e3);
    if (p > 1) {
      std::printf("allreduce: %.2f GB/s bus bandwidth (2(P-1)/P x bytes / time)\n",
                  2.0 * (p - 1) / p * bytes / median(reduce) / 1e9);
    }
    std::printf("throughput: %.1f samples/s\n", samples / step_s);
    std::printf("RESULT ranks=%d local_batch=%ld step_ms=%.2f samples_per_s=%.2f allreduce_ms=%.2f\n", p,
                static_cast<long>(local), step_s * 1e3, samples / step_s, median(reduce) * 1e3);
    const double layer_bytes = bytes / static_cast<double>(s.tied ? 1 : s.depth);
    cost_model(s, median(forward) / static_cast<double>(local), median(backward) / static_cast<double>(local),
               median(optimiser), bytes, layer_bytes, static_cast<double>(ddp.reducer().bucket_count()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
#if defined(__GLIBC__)
  // Blocks up to 32 MiB (glibc's largest dynamic threshold) from the heap,
  // kept: Eigen's packing buffers and Open MPI's allreduce temporaries, which
  // it allocates per call at the message's size, would otherwise be mapped
  // and faulted in afresh on every call.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  return md::run_job(argc, argv, [&](md::Communicator& world) { return run(world, argc, argv); });
}
