// Paper, Figure 1: learning x -> -x^3 on [-1, 1] with ONE weight-tied MLP
// block (1 -> 16 -> 1, tanh) applied 15 times, as a ResNet and as a Momentum
// ResNet with gamma = 0.99 and v_0 = 0 (the reference's plot_dynamics_1D:
// init_speed = 0).
//
// Why a ResNet should fail: x -> -x^3 reverses the order of the points, and
// the flow of a first-order ODE x' = f(x) (the ResNet's continuous limit)
// keeps trajectories from crossing, so it is an increasing map of the line.
// The Momentum ResNet's limit eps x'' + x' = f(x) moves (x, v) in the plane:
// starting from v = 0, trajectories of x can cross. (A discrete ResNet with
// large steps is no such flow: with --optimizer adam some seeds learn the map
// by changing the sign of x at every layer.)
//
// Writes the trajectories x_n (n = 0..depth) of a grid of inputs for both
// trained models (--csv), the training curves (--loss-csv), and prints the
// test losses. --quick asserts: momentum's test loss < --momentum-max and
// the ResNet's > --resnet-min, for every seed run.
#include <momnet/momnet.hpp>

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

constexpr const char* program = "paper_cubic";

Eigen::MatrixXf uniform_inputs(momnet::Rng& rng, Eigen::Index n) {
  Eigen::MatrixXf x(n, 1);
  for (Eigen::Index i = 0; i < n; ++i) x(i, 0) = static_cast<float>(rng.uniform(-1, 1));
  return x;
}

Eigen::MatrixXf target(const Eigen::MatrixXf& x) { return -x.array().cube().matrix(); }

// The mean squared error of `model` on `x`, without gradients.
template <class Model>
double test_loss(Model& model, const Eigen::MatrixXf& x) {
  Tape<float> tape;
  Tape<float>::NoGradScope no_grad(tape);
  return momnet::mse(model(tape, tape.constant(x)), tape.constant(target(x))).item();
}

struct Run {
  std::vector<double> curve;  // training loss per step
  double test = 0;
  double seconds = 0;
  long diverged_at = -1;  // the step whose forward pass overflowed, or -1
};

template <class Model>
Run train(Model& model, long steps, const std::string& optimizer, double learning_rate, Eigen::Index batch,
          momnet::Rng& data, const Eigen::MatrixXf& test_x, const char* name, bool verbose) {
  Run run;
  momnet::SGD<float> sgd(momnet::parameters_of(model), {learning_rate});
  momnet::Adam<float> adam(momnet::parameters_of(model), {learning_rate});
  const bool use_adam = optimizer == "adam";  // else SGD
  const auto start = std::chrono::steady_clock::now();
  auto last_good = model.stack().layer(0);  // the parameters of the last finite forward pass
  // Each step's tape starts from the previous one's chunks: without this
  // glibc may return them to the system and fault them back in every step.
  momnet::ChunkCache chunks;
  for (long step = 0; step < steps; ++step) {
    const Eigen::MatrixXf x = uniform_inputs(data, batch);
    Tape<float> tape(chunks);
    Var<float> loss;
    try {
      loss = momnet::mse(model(tape, tape.constant(x)), tape.constant(target(x)));
      if (!std::isfinite(loss.item())) throw std::domain_error("the loss is not finite");
    } catch (const std::exception& error) {
      // An optimiser step made the tied map expand until x_N overflowed (a float
      // Inf in the ResNet, a value outside the fixed-point range in the
      // momentum net): training failed. Keep the last finite parameters.
      run.diverged_at = step;
      model.stack().layer(0) = last_good;
      if (verbose) std::printf("  %-8s diverged at step %ld: %s\n", name, step, error.what());
      break;
    }
    last_good = model.stack().layer(0);
    momnet::zero_grad(model);
    tape.backward(loss);
    if (use_adam) {
      adam.step();
    } else {
      sgd.step();
    }
    run.curve.push_back(loss.item());
    if (verbose && (step + 1) % 500 == 0) {
      std::printf("  %-8s step %5ld/%ld  loss %.5f\n", name, step + 1, steps, loss.item());
      std::fflush(stdout);
    }
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.test = test_loss(model, test_x);
  return run;
}

// x_n for n = 0..depth on `grid`: the same trained block in stacks of depth n.
std::vector<Eigen::VectorXf> resnet_trajectory(const Block& block, std::size_t depth, const Eigen::MatrixXf& grid) {
  std::vector<Eigen::VectorXf> out{grid.col(0)};
  for (std::size_t n = 1; n <= depth; ++n) {
    momnet::Residual<Block> net(block, n);
    Tape<float> tape;
    Tape<float>::NoGradScope no_grad(tape);
    out.push_back(net(tape, tape.constant(grid)).value().col(0));
  }
  return out;
}
std::vector<Eigen::VectorXf> momentum_trajectory(const Block& block, std::size_t depth,
                                                 const momnet::MomentumOptions& options, const Eigen::MatrixXf& grid) {
  std::vector<Eigen::VectorXf> out{grid.col(0)};
  for (std::size_t n = 1; n <= depth; ++n) {
    momnet::MomentumResidual<Block> net(block, n, options);
    const momnet::MomentumState<float> state = net.evaluate(momnet::Tensor<float>(grid));
    out.push_back(state.x().matrix().col(0));
  }
  return out;
}

// How many adjacent pairs of the (increasing) grid end in reversed order.
int reversed_pairs(const Eigen::VectorXf& final_x) {
  int count = 0;
  for (Eigen::Index i = 0; i + 1 < final_x.size(); ++i) count += final_x(i + 1) < final_x(i);
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  paper::Options opt(program,
                     "Learn x -> -x^3 on [-1, 1] with one weight-tied MLP block (1 -> hidden -> 1, tanh) as a\n"
                     "ResNet and as a Momentum ResNet (v_0 = 0); writes trajectories and losses.");
  opt.flag("quick", "a few seconds; asserts the claim through the exit code");
  opt.option("csv", "out/paper_cubic.csv", "trajectories: seed,model,input,layer,x");
  opt.option("loss-csv", "out/paper_cubic_loss.csv", "training curves: seed,model,step,loss");
  opt.option("depth", "15", "layers (one tied block)");
  opt.option("hidden", "16", "hidden width of the block");
  opt.option("gamma", "0.99", "momentum");
  opt.option("momentum-steps", "300", "training steps of the Momentum ResNet (the reference's)");
  opt.option("resnet-steps", "", "training steps of the ResNet (default 2000, the reference's; quick 100)");
  opt.option("optimizer", "sgd", "sgd (the reference's) or adam, for both models");
  opt.option("lr", "0.01", "learning rate (both models)");
  opt.option("batch", "", "fresh uniform samples per step (default 200, the reference's; quick 100)");
  opt.option("seeds", "", "seeds 0..n-1 (default 5; quick 1)");
  opt.option("grid", "9", "trajectory inputs, evenly spaced in [-1, 1]");
  opt.option("momentum-max", "0.06", "--quick: the Momentum ResNet's test loss must be below this");
  opt.option("resnet-min", "0.1", "--quick: the ResNet's test loss must be above this");
  opt.parse(argc, argv);

  const bool quick = opt.has("quick");
  const std::size_t depth = static_cast<std::size_t>(opt.integer("depth"));
  const Eigen::Index hidden = opt.integer("hidden");
  const long momentum_steps = opt.integer("momentum-steps");
  const long resnet_steps = opt.given("resnet-steps") ? opt.integer("resnet-steps") : (quick ? 100 : 2000);
  const long seeds = opt.given("seeds") ? opt.integer("seeds") : (quick ? 1 : 5);
  const Eigen::Index batch = opt.given("batch") ? opt.integer("batch") : (quick ? 100 : 200);
  const Eigen::Index grid_size = opt.integer("grid");
  if (depth < 1 || hidden < 1 || seeds < 1 || batch < 1 || grid_size < 2 || momentum_steps < 1 || resnet_steps < 1) {
    opt.usage_error("depth, hidden, seeds, batch, steps must be >= 1 and grid >= 2");
  }
  if (opt.str("optimizer") != "sgd" && opt.str("optimizer") != "adam") {
    opt.usage_error("--optimizer must be sgd or adam");
  }
  momnet::MomentumOptions options;
  options.gamma = opt.real("gamma");
  if (!(options.gamma > 0 && options.gamma < 1)) opt.usage_error("gamma must lie in (0, 1)");

  Eigen::MatrixXf grid(grid_size, 1);
  for (Eigen::Index i = 0; i < grid_size; ++i) grid(i, 0) = -1.0f + 2.0f * i / (grid_size - 1);
  Eigen::MatrixXf test_x(1001, 1);
  for (Eigen::Index i = 0; i < test_x.rows(); ++i) test_x(i, 0) = -1.0f + 2.0f * i / (test_x.rows() - 1);

  std::ofstream csv = paper::open_csv(opt.str("csv"));
  std::ofstream loss_csv = paper::open_csv(opt.str("loss-csv"));
  csv << "seed,model,input,layer,x\n";
  loss_csv << "seed,model,step,loss\n";

  struct Row {
    long seed;
    double resnet, momentum;
    int resnet_reversed, momentum_reversed;
    double resnet_seconds, momentum_seconds;
    long resnet_diverged, momentum_diverged;
  };
  auto loss_text = [](double loss, long diverged) {
    char text[64];
    if (diverged >= 0) {
      std::snprintf(text, sizeof text, "diverged (step %ld)", diverged);
    } else {
      std::snprintf(text, sizeof text, "%.5f", loss);
    }
    return std::string(text);
  };
  std::vector<Row> rows;
  std::printf("%s: depth %zu, hidden %ld, gamma %g, %ld seed(s), steps: ResNet %ld, Momentum %ld\n", program, depth,
              static_cast<long>(hidden), options.gamma, seeds, resnet_steps, momentum_steps);
  for (long seed = 0; seed < seeds; ++seed) {
    momnet::Rng init(1000 + seed);
    const Block block(1, hidden, init);  // both models start from the same block, as in the reference
    momnet::Residual<Block> resnet(block, depth);
    momnet::MomentumResidual<Block> momentum(block, depth, options);
    momnet::Rng data_res(seed), data_mom(seed);
    const std::string optimizer = opt.str("optimizer");
    const Run res = train(resnet, resnet_steps, optimizer, opt.real("lr"), batch, data_res, test_x, "ResNet", !quick);
    const Run mom =
        train(momentum, momentum_steps, optimizer, opt.real("lr"), batch, data_mom, test_x, "Momentum", !quick);
    for (std::size_t s = 0; s < res.curve.size(); ++s) {
      loss_csv << seed << ",resnet," << s << "," << res.curve[s] << "\n";
    }
    for (std::size_t s = 0; s < mom.curve.size(); ++s) {
      loss_csv << seed << ",momentum," << s << "," << mom.curve[s] << "\n";
    }

    const auto tr = resnet_trajectory(resnet.stack().layer(0), depth, grid);
    const auto tm = momentum_trajectory(momentum.stack().layer(0), depth, options, grid);
    for (std::size_t n = 0; n <= depth; ++n) {
      for (Eigen::Index i = 0; i < grid_size; ++i) {
        csv << seed << ",resnet," << grid(i, 0) << "," << n << "," << tr[n](i) << "\n";
        csv << seed << ",momentum," << grid(i, 0) << "," << n << "," << tm[n](i) << "\n";
      }
    }
    rows.push_back({seed, res.test, mom.test, reversed_pairs(tr[depth]), reversed_pairs(tm[depth]), res.seconds,
                    mom.seconds, res.diverged_at, mom.diverged_at});
    std::printf("seed %ld: test MSE ResNet %s, Momentum %s\n", seed, loss_text(res.test, res.diverged_at).c_str(),
                loss_text(mom.test, mom.diverged_at).c_str());
    std::fflush(stdout);
  }

  std::printf(
      "\n| seed | ResNet test MSE | Momentum test MSE | reversed pairs ResNet | reversed pairs Momentum "
      "| ResNet s | Momentum s |\n|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %ld | %s | %s | %d/%ld | %d/%ld | %.1f | %.1f |\n", r.seed,
                loss_text(r.resnet, r.resnet_diverged).c_str(), loss_text(r.momentum, r.momentum_diverged).c_str(),
                r.resnet_reversed, static_cast<long>(grid_size - 1), r.momentum_reversed,
                static_cast<long>(grid_size - 1), r.resnet_seconds, r.momentum_seconds);
  }
  std::printf("(the constant 0, the best increasing fit of -x^3, has MSE 1/7 = 0.1429)\n");
  std::printf("wrote %s and %s\n", opt.str("csv").c_str(), opt.str("loss-csv").c_str());

  csv.close();  // claim_failed exits without unwinding
  loss_csv.close();
  if (quick) {
    for (const Row& r : rows) {
      if (r.momentum_diverged >= 0 || !(r.momentum < opt.real("momentum-max"))) {
        paper::claim_failed(program, "the Momentum ResNet's test MSE " + std::to_string(r.momentum) + " is not below " +
                                         opt.str("momentum-max"));
      }
      if (!(r.resnet > opt.real("resnet-min"))) {
        paper::claim_failed(
            program, "the ResNet's test MSE " + std::to_string(r.resnet) + " is not above " + opt.str("resnet-min"));
      }
    }
    std::printf("claim holds: the Momentum ResNet learns x -> -x^3, the ResNet does not\n");
  }
  return 0;
}
