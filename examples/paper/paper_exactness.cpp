// How exact are memory-free gradients as depth grows? momnet's exact mode
// (64-bit fixed point and a bit store, after Maclaurin, Duvenaud and Adams)
// and its floating-point inverse (v_n = (v_{n+1} - (1 - gamma) f) / gamma,
// which multiplies rounding error by 1 / gamma per layer), both against
// stored-activation backprop of the same network: residual MLP blocks d = 8,
// h = 16, batch 32, float, one block per layer (examples/float_drift.cpp is
// the short version of this sweep).
//
// The relative error is max |g - g_stored| / max |g_stored| over every
// parameter and input gradient. The float inverse's drift check is off
// (float_drift_tolerance = inf) so its error is measured, not refused; a
// non-finite result is reported as such.
//
// --quick asserts: the exact mode's error <= --exact-max (1e-6) at every depth
// run, and the float inverse's error at the deepest depth is at least
// --float-growth (10) times its error at the shallowest, for every gamma.
#include <momnet/momnet.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "paper_common.hpp"

namespace {

using Block = momnet::MLPBlock<float>;
constexpr const char* program = "paper_exactness";

struct Gradients {
  std::vector<float> values;
  std::string status = "ok";  // or what the backward pass threw
};

Gradients gradients(momnet::MomentumResidual<Block>& net, const Eigen::MatrixXf& input) {
  Gradients out;
  momnet::zero_grad(net);
  try {
    momnet::Tape<float> tape;
    const momnet::Var<float> x = tape.variable(input);
    const momnet::Var<float> loss = momnet::mean(momnet::square(net(tape, x)));
    tape.backward(loss);
    for (momnet::Parameter<float>* p : momnet::parameters_of(net)) {
      out.values.insert(out.values.end(), p->grad_data(), p->grad_data() + p->size());
    }
    out.values.insert(out.values.end(), x.grad().data(), x.grad().data() + x.size());
  } catch (const std::exception& error) {
    out.status = std::string("refused: ") + error.what();
    out.values.clear();
  }
  return out;
}

// NaN when either side is missing or not finite.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return std::numeric_limits<double>::quiet_NaN();
  double difference = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!std::isfinite(d)) return std::numeric_limits<double>::quiet_NaN();
    difference = std::max(difference, d);
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return difference / scale;
}

std::string format_error(double e) {
  if (std::isnan(e)) return "not finite";
  char text[32];
  std::snprintf(text, sizeof text, "%.1e", e);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  paper::Options opt(program,
                     "Relative gradient error of the exact memory-free backward and of the floating-point inverse\n"
                     "against stored-activation backprop, versus depth, for several gammas (float).");
  opt.flag("quick", "a few seconds; asserts the claim through the exit code");
  opt.option("csv", "out/paper_exactness.csv", "gamma,depth,mode,relative_error,status");
  opt.option("depths", "", "comma-separated depths (default 10,30,100,300,1000,3000,10000; quick 10,100,300)");
  opt.option("gammas", "0.5,0.9,0.99", "comma-separated momenta");
  opt.option("dim", "8", "block width d");
  opt.option("hidden", "16", "block hidden width h");
  opt.option("batch", "32", "batch size");
  opt.option("seed", "2021", "seed of the input and the blocks");
  opt.option("exact-max", "1e-6", "--quick: the largest relative error allowed to the exact mode");
  opt.option("float-growth", "10", "--quick: the float inverse's error must grow this much, shallowest to deepest");
  opt.parse(argc, argv);

  const bool quick = opt.has("quick");
  const std::vector<long> depths =
      opt.given("depths")
          ? opt.integers("depths")
          : (quick ? std::vector<long>{10, 100, 300} : std::vector<long>{10, 30, 100, 300, 1000, 3000, 10000});
  const std::vector<double> gammas = opt.reals("gammas");
  const Eigen::Index dim = opt.integer("dim"), hidden = opt.integer("hidden"), batch = opt.integer("batch");
  for (long d : depths) {
    if (d < 1) opt.usage_error("depths must be >= 1");
  }
  for (double g : gammas) {
    if (!(g > 0 && g < 1)) opt.usage_error("gammas must lie in (0, 1): the memory-free modes need gamma > 0");
  }
  if (dim < 1 || hidden < 1 || batch < 1) opt.usage_error("dim, hidden and batch must be >= 1");

  momnet::Rng rng(static_cast<std::uint64_t>(opt.integer("seed")));
  Eigen::MatrixXf input(batch, dim);
  for (Eigen::Index i = 0; i < input.size(); ++i) input.data()[i] = static_cast<float>(rng.uniform(-1, 1));
  // One set of blocks for the deepest network; shallower ones use its first layers.
  long deepest = 0;
  for (long d : depths) deepest = std::max(deepest, d);
  std::vector<Block> all_blocks;
  for (long i = 0; i < deepest; ++i) all_blocks.emplace_back(dim, hidden, rng);

  std::ofstream csv = paper::open_csv(opt.str("csv"));
  csv << "gamma,depth,mode,relative_error,status\n";
  struct Row {
    double gamma;
    long depth;
    double exact, floating;
    std::string float_status;
  };
  std::vector<Row> rows;
  const auto start = std::chrono::steady_clock::now();
  for (double gamma : gammas) {
    for (long depth : depths) {
      std::vector<Block> blocks(all_blocks.begin(), all_blocks.begin() + depth);
      momnet::MomentumOptions options;
      options.gamma = gamma;
      options.float_drift_tolerance = std::numeric_limits<double>::infinity();
      options.mode = momnet::BackwardMode::stored;
      momnet::MomentumResidual<Block> stored(blocks, options);
      options.mode = momnet::BackwardMode::exact;
      momnet::MomentumResidual<Block> exact(blocks, options);
      options.mode = momnet::BackwardMode::float_inverse;
      momnet::MomentumResidual<Block> floating(std::move(blocks), options);
      const Gradients reference = gradients(stored, input);
      const Gradients g_exact = gradients(exact, input);
      const Gradients g_float = gradients(floating, input);
      if (reference.status != "ok") {
        std::fprintf(stderr, "%s: stored backprop failed at gamma %g, depth %ld: %s\n", program, gamma, depth,
                     reference.status.c_str());
        return 1;
      }
      const Row row{gamma, depth, relative_error(g_exact.values, reference.values),
                    relative_error(g_float.values, reference.values), g_float.status};
      rows.push_back(row);
      csv << gamma << "," << depth << ",exact," << row.exact << "," << g_exact.status << "\n";
      csv << gamma << "," << depth << ",float_inverse," << row.floating << ","
          << (g_float.status == "ok" && std::isnan(row.floating) ? "not finite" : g_float.status) << "\n";
      std::printf("  gamma %.2f depth %6ld: exact %s, float_inverse %s  (%.0f s)\n", gamma, depth,
                  format_error(row.exact).c_str(), format_error(row.floating).c_str(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      std::fflush(stdout);
    }
  }
  csv.close();

  std::printf("\n| gamma | depth | exact | float_inverse |\n|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %.2f | %ld | %s | %s |\n", r.gamma, r.depth, format_error(r.exact).c_str(),
                format_error(r.floating).c_str());
  }
  std::printf("wrote %s\n", opt.str("csv").c_str());

  if (quick) {
    const double exact_max = opt.real("exact-max");
    for (const Row& r : rows) {
      if (!(r.exact <= exact_max)) {
        paper::claim_failed(program, "the exact mode's relative error " + format_error(r.exact) + " at gamma " +
                                         std::to_string(r.gamma) + ", depth " + std::to_string(r.depth) + " exceeds " +
                                         opt.str("exact-max"));
      }
    }
    const double growth = opt.real("float-growth");
    for (double gamma : gammas) {
      const Row* shallow = nullptr;
      const Row* deep = nullptr;
      for (const Row& r : rows) {
        if (r.gamma != gamma) continue;
        if (shallow == nullptr || r.depth < shallow->depth) shallow = &r;
        if (deep == nullptr || r.depth > deep->depth) deep = &r;
      }
      // A non-finite deep error counts as growth: the inverse blew up.
      const bool grows = std::isnan(deep->floating) || deep->floating > growth * shallow->floating;
      if (shallow->depth == deep->depth || !grows) {
        paper::claim_failed(program, "the float inverse's error does not grow " + opt.str("float-growth") +
                                         "-fold with depth at gamma " + std::to_string(gamma) + " (" +
                                         format_error(shallow->floating) + " at depth " +
                                         std::to_string(shallow->depth) + ", " + format_error(deep->floating) +
                                         " at depth " + std::to_string(deep->depth) + ")");
      }
    }
    std::printf("claim holds: the exact mode stays within %s at every depth; the float inverse drifts\n",
                opt.str("exact-max").c_str());
  }
  return 0;
}
