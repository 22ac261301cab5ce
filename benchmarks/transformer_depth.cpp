// Memory and time of one training step (forward, backward, SGD step) of a
// Transformer encoder stack versus depth: `depth` post-norm
// nn.TransformerEncoderLayer's (self-attention, ReLU feed-forward, no
// dropout by default) as a plain stack (Residual, every activation stored)
// and as a Momentum Transformer's stack (MomentumResidual, gamma 0.9, exact
// memory-free backward; optionally its stored-activation mode). The loss is
// mean(out^2) of the stack's output.
//
//   transformer_depth [--depths=6,12,24] [--modes=residual,exact] [--batch=32]
//       [--seq=128] [--d-model=128] [--heads=4] [--ff=512] [--dropout=0]
//       [--gamma=0.9] [--reps=3] [--threads=1] [--csv=out/transformer_depth.csv]
//
// The paper's sweep is --depths=6,12,24,48,96,192 (the plain stack at 192
// needs about 10 GB). Per (mode, depth): one untimed step (the arena reaches
// its working size), then --reps timed steps; it reports the median and the
// fastest, and the peak of the tape's counting allocator over the timed steps
// (the activations, the attention weights, the bit store; not the
// parameters, their gradients or the optimiser, which are the same for both
// stacks and listed apart). A plain program rather than Google Benchmark: a
// step at depth 192 takes most of a minute, and the table wants a fixed,
// small number of them. Rows are printed as they are measured, then a table
// comparing the modes; every row also goes to the CSV.
#include <momnet/momnet.hpp>
#include <momnet/models/transformer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

using T = float;
using Layer = momnet::TransformerEncoderLayer<T>;

struct Settings {
  std::vector<std::size_t> depths{6, 12, 24};
  std::vector<std::string> modes{"residual", "exact"};
  Eigen::Index batch = 32, seq = 128, d_model = 128, heads = 4, ff = 512;
  double dropout = 0.0;
  double gamma = 0.9;
  int reps = 3;
  int threads = 1;
  std::string csv = "out/transformer_depth.csv";
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

void usage() {
  std::cout << "usage: transformer_depth [--depths=6,12,24] [--modes=residual,exact,stored] [--batch=32] [--seq=128]\n"
               "  [--d-model=128] [--heads=4] [--ff=512] [--dropout=0] [--gamma=0.9] [--reps=3] [--threads=1]\n"
               "  [--csv=out/transformer_depth.csv]\n"
               "The paper's sweep: --depths=6,12,24,48,96,192\n";
}

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--help" || key == "-h") {
      usage();
      std::exit(0);
    } else if (key == "--depths") {
      s.depths.clear();
      for (const auto& d : split(value)) s.depths.push_back(std::stoul(d));
    } else if (key == "--modes") {
      s.modes = split(value);
      for (const auto& m : s.modes) {
        if (m != "residual" && m != "stored" && m != "exact") {
          throw std::invalid_argument("unknown mode in --modes: " + m + " (residual, exact, stored)");
        }
      }
    } else if (key == "--batch") {
      s.batch = std::stol(value);
    } else if (key == "--seq") {
      s.seq = std::stol(value);
    } else if (key == "--d-model") {
      s.d_model = std::stol(value);
    } else if (key == "--heads") {
      s.heads = std::stol(value);
    } else if (key == "--ff") {
      s.ff = std::stol(value);
    } else if (key == "--dropout") {
      s.dropout = std::stod(value);
    } else if (key == "--gamma") {
      s.gamma = std::stod(value);
    } else if (key == "--reps") {
      s.reps = std::stoi(value);
    } else if (key == "--threads") {
      s.threads = std::stoi(value);
    } else if (key == "--csv") {
      s.csv = value;
    } else {
      usage();
      throw std::invalid_argument("unknown option " + arg);
    }
  }
  if (s.depths.empty() || s.modes.empty() || s.batch <= 0 || s.seq <= 0 || s.d_model <= 0 || s.heads <= 0 ||
      s.ff <= 0 || s.reps <= 0 || s.threads <= 0) {
    throw std::invalid_argument("every size, --reps and --threads must be positive; --depths and --modes non-empty");
  }
  return s;
}

struct Result {
  std::string mode;
  std::size_t depth = 0;
  double peak_bytes = 0, median_seconds = 0, min_seconds = 0;
  double parameter_bytes = 0;  // parameters and gradients, outside the tape
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

template <class Encoder>
Result measure(Encoder& encoder, const momnet::Tensor<T>& input, const Settings& s) {
  momnet::SGD<T> sgd(momnet::parameters_of(encoder), {1e-4});
  momnet::Tape<T> tape;
  auto step = [&] {
    tape.clear();
    sgd.zero_grad();
    const momnet::Var<T> out = encoder.forward(tape, tape.constant(input));
    tape.backward(momnet::mean(momnet::square(out)));
    sgd.step();
  };
  step();  // warm-up: the arena reaches its working size
  tape.memory().reset_peak();
  std::vector<double> seconds;
  for (int r = 0; r < s.reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    step();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  Result result;
  result.peak_bytes = static_cast<double>(tape.memory().peak_bytes());
  result.median_seconds = median(seconds);
  result.min_seconds = *std::min_element(seconds.begin(), seconds.end());
  result.parameter_bytes = 2.0 * static_cast<double>(momnet::parameter_count(encoder)) * sizeof(T);
  return result;
}

momnet::TransformerEncoder<T> make_plain(const Settings& s, std::size_t depth) {
  momnet::Rng rng(7);
  momnet::TransformerLayerOptions options;
  options.dim_feedforward = s.ff;
  options.dropout = s.dropout;
  std::vector<Layer> layers;
  layers.reserve(depth);
  for (std::size_t i = 0; i < depth; ++i) layers.emplace_back(s.d_model, s.heads, rng, options);
  return momnet::TransformerEncoder<T>(std::move(layers));
}

Result run(const Settings& s, const std::string& mode, std::size_t depth, const momnet::Tensor<T>& input) {
  Result result;
  if (mode == "residual") {
    momnet::TransformerEncoder<T> plain = make_plain(s, depth);
    result = measure(plain, input, s);
  } else {
    momnet::MomentumOptions momentum;
    momentum.mode = mode == "stored" ? momnet::BackwardMode::stored : momnet::BackwardMode::exact;
    // The plain stack is a temporary: only the converted copy stays in memory.
    auto converted = momnet::to_momentum(make_plain(s, depth), s.gamma, momentum);
    result = measure(converted, input, s);
  }
  result.mode = mode;
  result.depth = depth;
  return result;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) try {
#if defined(__GLIBC__)
  // As memory_vs_depth: Eigen's packing buffers stay on the heap.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  const Settings s = parse(argc, argv);
  Eigen::setNbThreads(s.threads);
  momnet::Tensor<T> input(momnet::Shape{s.batch, s.seq, s.d_model});
  momnet::Rng rng(1);
  for (Eigen::Index i = 0; i < input.size(); ++i) input.data()[i] = static_cast<T>(rng.normal());

  std::printf("Transformer encoder stack, one training step: batch %ld, sequence %ld, d_model %ld, %ld heads, "
              "feed-forward %ld, dropout %g, post-norm, ReLU; gamma %g; %d timed steps per row after one untimed; "
              "%d thread(s); Eigen SIMD: %s\n\n",
              static_cast<long>(s.batch), static_cast<long>(s.seq), static_cast<long>(s.d_model),
              static_cast<long>(s.heads), static_cast<long>(s.ff), s.dropout, s.gamma, s.reps, s.threads,
              Eigen::SimdInstructionSetsInUse());
  std::printf("| mode | depth | peak tape MiB | MiB per layer | median s/step | fastest s/step | "
              "parameters+grads MiB |\n|---|---:|---:|---:|---:|---:|---:|\n");
  std::fflush(stdout);

  const std::filesystem::path csv_path(s.csv);
  if (csv_path.has_parent_path()) std::filesystem::create_directories(csv_path.parent_path());
  momnet::CsvLog log(s.csv, {"mode", "depth", "peak_bytes", "median_seconds", "min_seconds", "reps",
                             "parameter_bytes", "batch", "seq", "d_model", "heads", "ff", "dropout", "gamma",
                             "threads"});
  std::map<std::pair<std::string, std::size_t>, Result> results;
  for (const std::string& mode : s.modes) {
    for (std::size_t depth : s.depths) {
      const Result r = run(s, mode, depth, input);
      results[{mode, depth}] = r;
      std::printf("| %s | %zu | %.1f | %.2f | %.3f | %.3f | %.1f |\n", mode.c_str(), depth, mib(r.peak_bytes),
                  mib(r.peak_bytes) / static_cast<double>(depth), r.median_seconds, r.min_seconds,
                  mib(r.parameter_bytes));
      std::fflush(stdout);
      log.row(mode, static_cast<long long>(depth), r.peak_bytes, r.median_seconds, r.min_seconds,
              static_cast<long long>(s.reps), r.parameter_bytes, static_cast<long long>(s.batch),
              static_cast<long long>(s.seq), static_cast<long long>(s.d_model), static_cast<long long>(s.heads),
              static_cast<long long>(s.ff), s.dropout, s.gamma, static_cast<long long>(s.threads));
    }
  }

  // Each momentum mode against the plain stack, where both were measured.
  for (const std::string& mode : s.modes) {
    if (mode == "residual") continue;
    std::printf("\n| depth | Transformer MiB | Momentum (%s) MiB | memory ratio | Transformer s/step | "
                "Momentum s/step | time ratio |\n|---:|---:|---:|---:|---:|---:|---:|\n",
                mode.c_str());
    for (std::size_t depth : s.depths) {
      const auto m = results.find({mode, depth});
      const auto p = results.find({"residual", depth});
      if (m == results.end()) continue;
      if (p == results.end()) {
        std::printf("| %zu | - | %.1f | - | - | %.3f | - |\n", depth, mib(m->second.peak_bytes),
                    m->second.median_seconds);
      } else {
        std::printf("| %zu | %.1f | %.1f | %.1fx | %.3f | %.3f | %.2f |\n", depth, mib(p->second.peak_bytes),
                    mib(m->second.peak_bytes), p->second.peak_bytes / m->second.peak_bytes,
                    p->second.median_seconds, m->second.median_seconds,
                    m->second.median_seconds / p->second.median_seconds);
      }
    }
  }
  std::printf("\nCSV: %s\n", s.csv.c_str());
  return 0;
} catch (const std::exception& e) {
  std::cerr << "transformer_depth: " << e.what() << "\n";
  return 1;
}
