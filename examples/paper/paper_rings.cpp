// Paper, Figure 5: separating two nested rings in the plane without adding
// dimensions. The data and the model follow the reference's
// run_separation_nested_rings: an inner ring (radius 1.5 to 2.1, class 0)
// inside an outer ring (radius 3 to 3.6, class 1); ONE weight-tied MLP block
// (2 -> 16 -> 2, tanh) applied 15 times; the logits ARE x_N, so the
// classifier after the network is the fixed linear rule "x_N[1] > x_N[0]".
//
// Why a ResNet should fail: the flow of its continuous limit x' = f(x) is a
// homeomorphism of the plane, which keeps the inner ring enclosed by the
// outer one, and no line separates a ring from what it encloses. (A discrete
// ResNet with large steps can fold the plane and escape the argument; the
// program measures how much it folds.) The Momentum ResNet moves (x, v) in
// R^4 from v_0 = 0: x_0 -> x_N is the x-part of a map of R^4 restricted to
// the plane v = 0, not a homeomorphism of the plane, so it can pull the inner
// ring out through the outer one.
//
// Writes the test points at every depth (--csv), the decision of both
// trained models over a grid of the input plane (--grid-csv) and the
// accuracies and topology checks (--results-csv), for every seed. --quick
// asserts a gap: momentum's test accuracy >= --momentum-min and above the
// ResNet's by --min-gap; and the topology: the ResNet's inner-class region
// reaches the edge of the plotted box, the Momentum ResNet's is enclosed.
#include <momnet/momnet.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "paper_common.hpp"

namespace {

using Block = momnet::MLPBlock<float>;
using momnet::Tape;
using momnet::Var;

constexpr const char* program = "paper_rings";
constexpr double pi = 3.14159265358979323846;

struct Data {
  Eigen::MatrixXf x;  // [n, 2]
  std::vector<int> y;
};

// `per_ring` points on each ring, as the reference's make_data: angle
// uniform, radius 3 (r + 0.2 u) with r = 0.5 (class 0) and 1 (class 1).
Data rings(momnet::Rng& rng, Eigen::Index per_ring) {
  Data d{Eigen::MatrixXf(2 * per_ring, 2), std::vector<int>(2 * per_ring)};
  for (int ring = 0; ring < 2; ++ring) {
    for (Eigen::Index i = 0; i < per_ring; ++i) {
      const double theta = 2 * pi * rng.uniform();
      const double r = 3 * (0.5 * (ring + 1) + 0.2 * rng.uniform());
      const Eigen::Index row = ring * per_ring + i;
      d.x(row, 0) = static_cast<float>(r * std::cos(theta));
      d.x(row, 1) = static_cast<float>(r * std::sin(theta));
      d.y[row] = ring;
    }
  }
  return d;
}

template <class Model>
Eigen::MatrixXf outputs(Model& model, const Eigen::MatrixXf& x) {
  Tape<float> tape;
  Tape<float>::NoGradScope no_grad(tape);
  return model(tape, tape.constant(x)).value();
}

std::vector<int> predictions(const Eigen::MatrixXf& logits) {
  std::vector<int> out(logits.rows());
  for (Eigen::Index i = 0; i < logits.rows(); ++i) out[i] = logits(i, 1) > logits(i, 0) ? 1 : 0;
  return out;
}

template <class Model>
double accuracy(Model& model, const Data& d) {
  const std::vector<int> p = predictions(outputs(model, d.x));
  long correct = 0;
  for (std::size_t i = 0; i < p.size(); ++i) correct += p[i] == d.y[i];
  return static_cast<double>(correct) / static_cast<double>(p.size());
}

struct Run {
  double loss = 0, train = 0, test = 0, seconds = 0;
  long diverged_at = -1;
  bool reaches_edge = false;  // see inner_region_reaches_edge
  double folded = 0;          // see folded_fraction
};

// Full-batch Adam on the training set; the learning rate is divided by 2 at
// half the steps and by 10 more at three quarters when `decay` (the
// reference's ResNet schedule).
template <class Model>
Run train(Model& model, const Data& train_set, const Data& test_set, long steps, double learning_rate, bool decay,
          const char* name, bool verbose) {
  Run run;
  momnet::Adam<float> adam(momnet::parameters_of(model), {learning_rate});
  const auto start = std::chrono::steady_clock::now();
  auto last_good = model.stack().layer(0);
  // Each step's tape starts from the previous one's chunks: without this
  // glibc may return them to the system and fault them back in every step.
  momnet::ChunkCache chunks;
  for (long step = 0; step < steps; ++step) {
    if (decay) {
      adam.set_learning_rate(learning_rate * (step >= steps / 2 ? 0.5 : 1.0) * (step >= 3 * steps / 4 ? 0.1 : 1.0));
    }
    Tape<float> tape(chunks);
    Var<float> loss;
    try {
      loss = momnet::cross_entropy(model(tape, tape.constant(train_set.x)), train_set.y);
      if (!std::isfinite(loss.item())) throw std::domain_error("the loss is not finite");
    } catch (const std::exception& error) {
      run.diverged_at = step;  // keep the last finite parameters and stop
      model.stack().layer(0) = last_good;
      if (verbose) std::printf("  %-8s diverged at step %ld: %s\n", name, step, error.what());
      break;
    }
    last_good = model.stack().layer(0);
    adam.zero_grad();
    tape.backward(loss);
    adam.step();
    run.loss = loss.item();
    if (verbose && (step + 1) % 500 == 0) {
      std::printf("  %-8s step %5ld/%ld  loss %.4f\n", name, step + 1, steps, loss.item());
      std::fflush(stdout);
    }
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.train = accuracy(model, train_set);
  run.test = accuracy(model, test_set);
  return run;
}

// x_n (n = 0..depth) of `x` through the trained block in stacks of depth n.
std::vector<Eigen::MatrixXf> resnet_layers(const Block& block, std::size_t depth, const Eigen::MatrixXf& x) {
  std::vector<Eigen::MatrixXf> out{x};
  for (std::size_t n = 1; n <= depth; ++n) {
    momnet::Residual<Block> net(block, n);
    out.push_back(outputs(net, x));
  }
  return out;
}
std::vector<Eigen::MatrixXf> momentum_layers(const Block& block, std::size_t depth,
                                             const momnet::MomentumOptions& options, const Eigen::MatrixXf& x) {
  std::vector<Eigen::MatrixXf> out{x};
  for (std::size_t n = 1; n <= depth; ++n) {
    momnet::MomentumResidual<Block> net(block, n, options);
    out.push_back(net.evaluate(momnet::Tensor<float>(x)).x().matrix());
  }
  return out;
}

void write_layers(std::ofstream& csv, long seed, const char* model, const std::vector<Eigen::MatrixXf>& layers,
                  const Data& d) {
  const std::vector<int> predicted = predictions(layers.back());
  for (std::size_t n = 0; n < layers.size(); ++n) {
    for (Eigen::Index i = 0; i < d.x.rows(); ++i) {
      csv << seed << "," << model << "," << n << "," << i << "," << d.y[i] << "," << predicted[i] << ","
          << layers[n](i, 0) << "," << layers[n](i, 1) << "\n";
    }
  }
}

// Whether the region the model gives class 0 around the inner ring reaches
// the edge of the box [-edge, edge]^2, on a side x side grid (4-connected
// flood fill from the cells of correctly classified inner-ring points). For a
// homeomorphism of the plane followed by a linear rule that region is the
// preimage of a half-plane: connected and unbounded, so it always does.
bool inner_region_reaches_edge(const std::vector<int>& cells, int side, double edge, const Data& d) {
  std::vector<char> seen(cells.size(), 0);
  std::vector<int> stack;
  auto cell_of = [&](double v) {
    const int c = static_cast<int>(std::lround((v + edge) / (2 * edge) * (side - 1)));
    return c < 0 ? 0 : (c >= side ? side - 1 : c);
  };
  for (Eigen::Index i = 0; i < d.x.rows(); ++i) {
    if (d.y[i] != 0) continue;
    const int c = cell_of(d.x(i, 1)) * side + cell_of(d.x(i, 0));
    if (cells[c] == 0 && !seen[c]) {
      seen[c] = 1;
      stack.push_back(c);
    }
  }
  while (!stack.empty()) {
    const int c = stack.back();
    stack.pop_back();
    const int row = c / side, col = c % side;
    if (row == 0 || col == 0 || row == side - 1 || col == side - 1) return true;
    for (const int next : {c - 1, c + 1, c - side, c + side}) {
      if (cells[next] == 0 && !seen[next]) {
        seen[next] = 1;
        stack.push_back(next);
      }
    }
  }
  return false;
}

// The fraction of the plane where the map x_0 -> x_N reverses orientation,
// det(d x_N / d x_0) < 0 by central differences, against the majority
// orientation. An injective continuous map of the plane keeps one
// orientation, so a non-zero fraction means the map folds the plane: it is
// not a homeomorphism (a discrete ResNet with large residuals can fold).
template <class Map>
double folded_fraction(Map&& map, const Eigen::MatrixXf& plane, float h) {
  Eigen::MatrixXf shifted = plane;
  std::vector<Eigen::MatrixXf> columns;
  for (int axis = 0; axis < 2; ++axis) {
    shifted.col(axis).array() += h;
    const Eigen::MatrixXf plus = map(shifted);
    shifted.col(axis).array() -= 2 * h;
    const Eigen::MatrixXf minus = map(shifted);
    shifted.col(axis) = plane.col(axis);
    columns.push_back((plus - minus) / (2 * h));
  }
  long negative = 0;
  for (Eigen::Index i = 0; i < plane.rows(); ++i) {
    negative += columns[0](i, 0) * columns[1](i, 1) - columns[0](i, 1) * columns[1](i, 0) < 0;
  }
  const double fraction = static_cast<double>(negative) / static_cast<double>(plane.rows());
  return std::min(fraction, 1 - fraction);
}

}  // namespace

int main(int argc, char** argv) {
  paper::Options opt(program,
                     "Separate two nested rings in the plane (no added dimensions) with one weight-tied MLP block\n"
                     "as a ResNet and as a Momentum ResNet; the logits are x_N. Reports accuracies over seeds.");
  opt.flag("quick", "a few seconds; asserts the accuracy gap through the exit code");
  opt.option("csv", "out/paper_rings.csv", "test points at every layer: seed,model,layer,index,label,pred,x,y");
  opt.option("grid-csv", "out/paper_rings_grid.csv", "decisions over the input plane: seed,model,x,y,pred");
  opt.option("results-csv", "out/paper_rings_results.csv", "per seed: accuracies, loss, region open, folded share");
  opt.option("depth", "15", "layers (one tied block)");
  opt.option("hidden", "16", "hidden width of the block");
  opt.option("gamma", "0.99", "momentum");
  opt.option("per-ring", "", "training points per ring (default 2000; quick 75)");
  opt.option("test-per-ring", "", "test points per ring (default 500; quick 100)");
  opt.option("grid", "", "cells per side of the input-plane grid in [-4.5, 4.5]^2 (default 241; quick 41)");
  opt.option("momentum-steps", "", "full-batch Adam steps, Momentum ResNet (default 1500, the reference's; quick 100)");
  opt.option("momentum-lr", "0.2", "Adam learning rate, Momentum ResNet (the reference's)");
  opt.option("resnet-steps", "", "full-batch Adam steps, ResNet (default 5000, the reference's; quick 200)");
  opt.option("resnet-lr", "0.01", "Adam learning rate, ResNet, halved at 1/2 and /10 at 3/4 (the reference's)");
  opt.option("seeds", "", "seeds 0..n-1 (default 3; quick 1)");
  opt.option("momentum-min", "0.99", "--quick: the Momentum ResNet's test accuracy must reach this");
  opt.option("min-gap", "0.005", "--quick: and exceed the ResNet's by at least this");
  opt.parse(argc, argv);

  const bool quick = opt.has("quick");
  const std::size_t depth = static_cast<std::size_t>(opt.integer("depth"));
  const Eigen::Index hidden = opt.integer("hidden");
  const Eigen::Index per_ring = opt.given("per-ring") ? opt.integer("per-ring") : (quick ? 75 : 2000);
  const Eigen::Index test_per_ring = opt.given("test-per-ring") ? opt.integer("test-per-ring") : (quick ? 100 : 500);
  const long momentum_steps = opt.given("momentum-steps") ? opt.integer("momentum-steps") : (quick ? 100 : 1500);
  const long resnet_steps = opt.given("resnet-steps") ? opt.integer("resnet-steps") : (quick ? 200 : 5000);
  const long seeds = opt.given("seeds") ? opt.integer("seeds") : (quick ? 1 : 3);
  if (depth < 1 || hidden < 1 || per_ring < 1 || seeds < 1 || momentum_steps < 1 || resnet_steps < 1 ||
      test_per_ring < 1) {
    opt.usage_error("depth, hidden, point counts, steps and seeds must be >= 1");
  }
  momnet::MomentumOptions options;
  options.gamma = opt.real("gamma");
  if (!(options.gamma > 0 && options.gamma < 1)) opt.usage_error("gamma must lie in (0, 1)");

  std::ofstream csv = paper::open_csv(opt.str("csv"));
  std::ofstream grid_csv = paper::open_csv(opt.str("grid-csv"));
  std::ofstream results = paper::open_csv(opt.str("results-csv"));
  csv << "seed,model,layer,index,label,pred,x,y\n";
  grid_csv << "seed,model,x,y,pred\n";
  results << "seed,model,train_acc,test_acc,loss,seconds,diverged_at,inner_region_reaches_edge,folded_fraction\n";

  // The input plane, for the decision regions.
  const int side = static_cast<int>(opt.given("grid") ? opt.integer("grid") : (quick ? 41 : 241));
  if (side < 3) opt.usage_error("--grid must be >= 3");
  const double edge = 4.5;
  Eigen::MatrixXf plane(side * side, 2);
  for (int i = 0; i < side; ++i) {
    for (int j = 0; j < side; ++j) {
      plane(i * side + j, 0) = static_cast<float>(-edge + 2 * edge * j / (side - 1));
      plane(i * side + j, 1) = static_cast<float>(-edge + 2 * edge * i / (side - 1));
    }
  }

  std::printf(
      "%s: depth %zu, hidden %ld, gamma %g, %ld points per ring, %ld seed(s), Adam steps: ResNet %ld, "
      "Momentum %ld\n",
      program, depth, static_cast<long>(hidden), options.gamma, static_cast<long>(per_ring), seeds, resnet_steps,
      momentum_steps);
  struct Row {
    long seed;
    Run res, mom;
  };
  std::vector<Row> rows;
  for (long seed = 0; seed < seeds; ++seed) {
    momnet::Rng data(seed);
    const Data train_set = rings(data, per_ring);
    const Data test_set = rings(data, test_per_ring);
    momnet::Rng init(1000 + seed);
    const Block block(2, hidden, init);  // the same start for both models
    momnet::Residual<Block> resnet(block, depth);
    momnet::MomentumResidual<Block> momentum(block, depth, options);
    Run res = train(resnet, train_set, test_set, resnet_steps, opt.real("resnet-lr"), true, "ResNet", !quick);
    Run mom = train(momentum, train_set, test_set, momentum_steps, opt.real("momentum-lr"), false, "Momentum", !quick);
    const std::vector<int> pr = predictions(outputs(resnet, plane));
    const std::vector<int> pm = predictions(momentum.evaluate(momnet::Tensor<float>(plane)).x().matrix());
    res.reaches_edge = inner_region_reaches_edge(pr, side, edge, test_set);
    mom.reaches_edge = inner_region_reaches_edge(pm, side, edge, test_set);
    const float h = 1e-2f;
    res.folded = folded_fraction([&](const Eigen::MatrixXf& x) { return outputs(resnet, x); }, plane, h);
    mom.folded = folded_fraction(
        [&](const Eigen::MatrixXf& x) { return momentum.evaluate(momnet::Tensor<float>(x)).x().matrix().eval(); },
        plane, h);
    rows.push_back({seed, res, mom});
    results << seed << ",resnet," << res.train << "," << res.test << "," << res.loss << "," << res.seconds << ","
            << res.diverged_at << "," << res.reaches_edge << "," << res.folded << "\n";
    results << seed << ",momentum," << mom.train << "," << mom.test << "," << mom.loss << "," << mom.seconds << ","
            << mom.diverged_at << "," << mom.reaches_edge << "," << mom.folded << "\n";
    std::printf("seed %ld: test accuracy ResNet %.3f, Momentum %.3f\n", seed, res.test, mom.test);
    std::fflush(stdout);
    write_layers(csv, seed, "resnet", resnet_layers(resnet.stack().layer(0), depth, test_set.x), test_set);
    write_layers(csv, seed, "momentum", momentum_layers(momentum.stack().layer(0), depth, options, test_set.x),
                 test_set);
    for (Eigen::Index i = 0; i < plane.rows(); ++i) {
      grid_csv << seed << ",resnet," << plane(i, 0) << "," << plane(i, 1) << "," << pr[i] << "\n";
      grid_csv << seed << ",momentum," << plane(i, 0) << "," << plane(i, 1) << "," << pm[i] << "\n";
    }
  }

  std::printf(
      "\n| seed | ResNet train | ResNet test | Momentum train | Momentum test | ResNet loss | Momentum loss "
      "| ResNet region open | Momentum region open | ResNet folded | Momentum folded | ResNet s | Momentum s |\n"
      "|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|---:|---:|---:|\n");
  double res_mean = 0, mom_mean = 0;
  for (const Row& r : rows) {
    std::printf("| %ld | %.3f | %.3f | %.3f | %.3f | %.4f%s | %.4f%s | %s | %s | %.1f%% | %.1f%% | %.1f | %.1f |\n",
                r.seed, r.res.train, r.res.test, r.mom.train, r.mom.test, r.res.loss,
                r.res.diverged_at >= 0 ? " (diverged)" : "", r.mom.loss, r.mom.diverged_at >= 0 ? " (diverged)" : "",
                r.res.reaches_edge ? "yes" : "no", r.mom.reaches_edge ? "yes" : "no", 100 * r.res.folded,
                100 * r.mom.folded, r.res.seconds, r.mom.seconds);
    res_mean += r.res.test / rows.size();
    mom_mean += r.mom.test / rows.size();
  }
  std::printf("mean test accuracy: ResNet %.3f, Momentum ResNet %.3f\n", res_mean, mom_mean);
  std::printf(
      "(region open: the region classified as the inner ring, grown from the inner ring's test points, reaches\n"
      " the edge of [-%.1f, %.1f]^2, as it must for a homeomorphism of the plane; folded: the share of that box\n"
      " where x_0 -> x_N reverses orientation, 0 for a homeomorphism)\n",
      edge, edge);
  std::printf("wrote %s, %s and %s\n", opt.str("csv").c_str(), opt.str("grid-csv").c_str(),
              opt.str("results-csv").c_str());

  csv.close();  // claim_failed exits without unwinding
  grid_csv.close();
  results.close();
  if (quick) {
    for (const Row& r : rows) {
      if (!(r.mom.test >= opt.real("momentum-min"))) {
        paper::claim_failed(program, "the Momentum ResNet's test accuracy " + std::to_string(r.mom.test) +
                                         " is below " + opt.str("momentum-min"));
      }
      if (!(r.mom.test - r.res.test >= opt.real("min-gap"))) {
        paper::claim_failed(program, "the Momentum ResNet's test accuracy " + std::to_string(r.mom.test) +
                                         " does not exceed the ResNet's " + std::to_string(r.res.test) + " by " +
                                         opt.str("min-gap"));
      }
      if (!r.res.reaches_edge || r.mom.reaches_edge) {
        paper::claim_failed(program, std::string("expected the ResNet's inner-class region to reach the edge of the "
                                                 "box and the Momentum ResNet's to be enclosed; got ") +
                                         (r.res.reaches_edge ? "open" : "enclosed") + " and " +
                                         (r.mom.reaches_edge ? "open" : "enclosed"));
      }
    }
    std::printf(
        "claim holds: the Momentum ResNet encloses the inner ring and beats the ResNet, whose inner-class "
        "region leaks to the edge\n");
  }
  return 0;
}
