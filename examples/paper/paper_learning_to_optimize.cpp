// Paper, learning to optimize: networks whose layers are iterations of a
// learned optimiser, trained so that their output solves a least-squares
// problem. Each problem is min_x 1/2 |A x - b|^2 with A = diag(sqrt(lambda)) S^T,
// S a random rotation and lambda log-spaced in [1/kappa, 1] (condition number
// kappa of the Hessian Q = A^T A), b = A x* with x* ~ N(0, I).
//
// A layer sees the problem only through its gradient g = Q x - c (c = A^T b,
// given to the stacks as extra inputs) and ONE block is applied at every
// layer (a learned update rule run for `depth` iterations), from x_0 = 0:
//   ResNet           x_{n+1} = x_n + f(x_n)
//   Momentum ResNet  v_{n+1} = gamma v_n + (1 - gamma) f(x_n), x_{n+1} = x_n + v_{n+1}
// with f(x) = s g and s learned: the first is gradient descent with a learned
// step, the second Polyak's heavy ball with a learned step, whose rate on a
// quadratic can reach 1 - 2/sqrt(kappa) per iteration against gradient
// descent's 1 - 2/kappa. Weight tying matters: with a different step per
// layer a ResNet could learn Chebyshev steps and be as fast as heavy ball.
//
// The loss of a problem is its relative suboptimality
//   (L(x_N) - L(x*)) / (L(x_0) - L(x*)),
// averaged over a fixed set of training problems; full-batch Adam minimises
// its logarithm (the values span decades: on the loss itself Adam's step
// shrinks with the gradient and stalls). Reported on held-out test problems,
// for several depths, each depth a separate model, next to gradient descent
// and heavy ball (same gamma) with their best single step size chosen on
// separate problems. --quick asserts: momentum's test loss < the ResNet's.
#include <momnet/momnet.hpp>

#include <Eigen/QR>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "paper_common.hpp"

namespace {

using momnet::Tape;
using momnet::Var;
constexpr const char* program = "paper_learning_to_optimize";
constexpr double pi = 3.14159265358979323846;

// A batch of problems: Q [B, d, d], c [B, d], x* [B, d], and the weight
// 1 / (L(0) - L(x*)) = 2 / (x*^T Q x*) of each. For the classical baselines,
// in double: the eigenvalues lambda_j shared by all problems and the mean
// share of L(0) - L(x*) along each eigenvector, mean_b lambda_j z_bj^2 /
// sum_k lambda_k z_bk^2 with z_b = S_b^T x*_b.
struct Problems {
  momnet::Tensor<float> q, c, solution, weight;
  Eigen::Index count = 0, dim = 0;
  Eigen::VectorXd lambda, share;
};

Problems sample(momnet::Rng& rng, Eigen::Index count, Eigen::Index dim, double kappa) {
  Problems p{momnet::Tensor<float>({count, dim, dim}),
             momnet::Tensor<float>({count, dim}),
             momnet::Tensor<float>({count, dim}),
             momnet::Tensor<float>({count}),
             count,
             dim,
             Eigen::VectorXd(dim),
             Eigen::VectorXd::Zero(dim)};
  Eigen::VectorXd& lambda = p.lambda;
  for (Eigen::Index j = 0; j < dim; ++j) {
    lambda(j) = dim == 1 ? 1.0 : std::pow(kappa, -static_cast<double>(j) / static_cast<double>(dim - 1));
  }
  for (Eigen::Index b = 0; b < count; ++b) {
    Eigen::MatrixXd gaussian(dim, dim);
    for (Eigen::Index i = 0; i < gaussian.size(); ++i) gaussian.data()[i] = rng.normal();
    const Eigen::MatrixXd s = Eigen::HouseholderQR<Eigen::MatrixXd>(gaussian).householderQ();
    const Eigen::MatrixXd q = s * lambda.asDiagonal() * s.transpose();
    Eigen::VectorXd x(dim);
    for (Eigen::Index j = 0; j < dim; ++j) x(j) = rng.normal();
    const Eigen::VectorXd c = q * x;
    for (Eigen::Index i = 0; i < dim; ++i) {
      for (Eigen::Index j = 0; j < dim; ++j) p.q.data()[(b * dim + i) * dim + j] = static_cast<float>(q(i, j));
      p.c.data()[b * dim + i] = static_cast<float>(c(i));
      p.solution.data()[b * dim + i] = static_cast<float>(x(i));
    }
    p.weight.data()[b] = static_cast<float>(2.0 / x.dot(c));
    const Eigen::VectorXd z = s.transpose() * x;
    const Eigen::VectorXd energy = lambda.array() * z.array().square();
    p.share += energy / energy.sum() / static_cast<double>(count);
  }
  return p;
}

// One learned optimiser step, f(x) = s (Q x - c): a learned step size s along
// the gradient, reading Q and c from the stack's extra inputs. It starts at
// s = 0 (every layer the identity). (A learned d x d preconditioner or an MLP
// of the gradient fit the training problems but diverged on held-out ones in
// our trials: learned optimisers overfit their stability edge.)
class GradientStep {
 public:
  using Scalar = float;
  GradientStep() : step_(momnet::Shape{1}, "step") {}

  Var<float> forward(Tape<float>& tape, const Var<float>& x, const momnet::CallContext<float>& context) {
    const Var<float>& q = context.extra(0);
    const Var<float>& c = context.extra(1);
    const Eigen::Index batch = x.shape().dim(0), dim = x.shape().dim(1);
    const Var<float> g = momnet::reshape(momnet::matmul(q, momnet::reshape(x, {batch, dim, 1})), {batch, dim}) - c;
    return g * tape.param(step_);
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("step", step_);
  }
  float step() const { return step_.value_data()[0]; }

 private:
  momnet::Parameter<float> step_;
};

// The mean relative suboptimality of x [B, d] on the problems, on the tape.
Var<float> relative_loss(Tape<float>& tape, const Var<float>& x, const Problems& p) {
  const Var<float> error = x - tape.constant(p.solution);
  const Var<float> q_error = momnet::reshape(
      momnet::matmul(tape.constant(p.q), momnet::reshape(error, {p.count, p.dim, 1})), {p.count, p.dim});
  return momnet::mean(momnet::sum(error * q_error, -1) * tape.constant(p.weight)) * 0.5f;
}

template <class Model>
Var<float> run(Model& model, Tape<float>& tape, const Problems& p) {
  const Var<float> x0 = tape.filled({p.count, p.dim}, 0.0f);
  return model(tape, x0, std::vector<Var<float>>{tape.constant(p.q), tape.constant(p.c)});
}

template <class Model>
double test_loss(Model& model, const Problems& p) {
  Tape<float> tape;
  Tape<float>::NoGradScope no_grad(tape);
  return relative_loss(tape, run(model, tape, p), p).item();
}

struct Trained {
  double test = std::numeric_limits<double>::quiet_NaN();
  double step = 0;  // the learned step size s
  double seconds = 0;
  long diverged_at = -1;
};

template <class Model>
Trained train(Model& model, long steps, double learning_rate, const Problems& p, const Problems& test) {
  Trained out;
  momnet::Adam<float> adam(momnet::parameters_of(model), {learning_rate});
  const auto start = std::chrono::steady_clock::now();
  auto last_good = model.stack().layer(0);
  // Each step's tape starts from the previous one's chunks: without this
  // glibc may return them to the system and fault them back in every step.
  momnet::ChunkCache chunks;
  for (long step = 0; step < steps; ++step) {
    // Cosine decay: the last steps refine the step size without noise.
    adam.set_learning_rate(learning_rate * 0.5 * (1 + std::cos(pi * static_cast<double>(step) / steps)));
    Tape<float> tape(chunks);
    Var<float> loss;
    try {
      loss = momnet::log(relative_loss(tape, run(model, tape, p), p));
      if (!std::isfinite(loss.item())) throw std::domain_error("the loss is not finite");
    } catch (const std::exception&) {
      out.diverged_at = step;  // keep the last finite parameters and stop
      model.stack().layer(0) = last_good;
      break;
    }
    last_good = model.stack().layer(0);
    adam.zero_grad();
    tape.backward(loss);
    adam.step();
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.test = test_loss(model, test);
  out.step = model.stack().layer(0).step();
  return out;
}

// Gradient descent (gamma = 0) or heavy ball v <- gamma v - (1 - gamma) eta g,
// x <- x + v, from 0 for `depth` steps, in double: the mean relative
// suboptimality. Both are linear, so along eigenvector j the error is
// r_j (x_0 - x*) with r_j the method's residual polynomial at lambda_j, and
// the mean relative suboptimality is sum_j share_j r_j^2.
double classical(const Problems& p, long depth, double gamma, double eta) {
  double total = 0;
  for (Eigen::Index j = 0; j < p.dim; ++j) {
    double error = 1, velocity = 0;
    for (long n = 0; n < depth; ++n) {
      velocity = gamma * velocity - (1 - gamma) * eta * p.lambda(j) * error;
      error += velocity;
    }
    total += p.share(j) * error * error;
  }
  return std::isfinite(total) ? total : std::numeric_limits<double>::infinity();
}

// The best single step size on `tune`, reported on `test`.
double tuned_classical(const Problems& tune, const Problems& test, long depth, double gamma) {
  double best_eta = 0, best = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= 120; ++i) {
    const double eta = std::pow(10.0, -2.0 + 4.0 * i / 120.0) / (1 - gamma);
    const double loss = classical(tune, depth, gamma, eta);
    if (loss < best) {
      best = loss;
      best_eta = eta;
    }
  }
  return classical(test, depth, gamma, best_eta);
}

}  // namespace

int main(int argc, char** argv) {
  paper::Options opt(program,
                     "Learn an optimiser for ill-conditioned least squares: weight-tied ResNet and Momentum ResNet\n"
                     "whose layers are learned gradient steps; test loss versus depth.");
  opt.flag("quick", "a few seconds; asserts the claim through the exit code");
  opt.option("csv", "out/paper_lto.csv", "model,depth,seed,test_loss,learned_step,seconds");
  opt.option("depths", "", "comma-separated depths, one model each (default 2,4,8,16,32,64; quick 12)");
  opt.option("dim", "", "problem dimension d (default 32; quick 8)");
  opt.option("kappa", "100", "condition number of Q = A^T A");
  opt.option("gamma", "0.5", "momentum of the Momentum ResNet (and of the heavy-ball baseline)");
  opt.option("steps", "", "full-batch Adam steps per model (default 400; quick 150)");
  opt.option("lr", "0.2", "Adam learning rate (cosine decay to 0)");
  opt.option("train", "", "training problems (default 256; quick 16)");
  opt.option("test", "", "held-out test problems (default 512; quick 32)");
  opt.option("seeds", "", "training sets 0..n-1 (default 2; quick 1)");
  opt.parse(argc, argv);

  const bool quick = opt.has("quick");
  const std::vector<long> depths = opt.given("depths")
                                       ? opt.integers("depths")
                                       : (quick ? std::vector<long>{12} : std::vector<long>{2, 4, 8, 16, 32, 64});
  const Eigen::Index dim = opt.given("dim") ? opt.integer("dim") : (quick ? 8 : 32);
  const long steps = opt.given("steps") ? opt.integer("steps") : (quick ? 150 : 400);
  const long seeds = opt.given("seeds") ? opt.integer("seeds") : (quick ? 1 : 2);
  const Eigen::Index train_count = opt.given("train") ? opt.integer("train") : (quick ? 16 : 256);
  const Eigen::Index test_count = opt.given("test") ? opt.integer("test") : (quick ? 32 : 512);
  const double kappa = opt.real("kappa");
  for (long d : depths) {
    if (d < 1) opt.usage_error("depths must be >= 1");
  }
  if (dim < 1 || train_count < 1 || test_count < 1 || steps < 1 || seeds < 1 || !(kappa >= 1)) {
    opt.usage_error("dim, train, test, steps, seeds must be >= 1 and kappa >= 1");
  }
  momnet::MomentumOptions options;
  options.gamma = opt.real("gamma");
  if (!(options.gamma > 0 && options.gamma < 1)) opt.usage_error("gamma must lie in (0, 1)");

  momnet::Rng problems_rng(7);
  const Problems test = sample(problems_rng, test_count, dim, kappa);
  const Problems tune = sample(problems_rng, test_count, dim, kappa);

  std::ofstream csv = paper::open_csv(opt.str("csv"));
  csv << "model,depth,seed,test_loss,learned_step,seconds\n";
  std::printf(
      "%s: d %ld, kappa %g, gamma %g, %ld training problems, %ld full-batch Adam steps per model, "
      "%ld seed(s)\n",
      program, static_cast<long>(dim), kappa, options.gamma, static_cast<long>(train_count), steps, seeds);
  struct Row {
    long depth;
    double resnet = 0, momentum = 0, gd, heavy_ball;
    int resnet_diverged = 0, momentum_diverged = 0;
  };
  std::vector<Row> rows;
  for (long depth : depths) {
    Row row{depth, 0, 0, tuned_classical(tune, test, depth, 0.0), tuned_classical(tune, test, depth, options.gamma)};
    csv << "gd_tuned_step," << depth << ",0," << row.gd << ",,0\n";
    csv << "heavy_ball_tuned_step," << depth << ",0," << row.heavy_ball << ",,0\n";
    for (long seed = 0; seed < seeds; ++seed) {
      momnet::Residual<GradientStep> resnet(GradientStep(), static_cast<std::size_t>(depth));
      momnet::MomentumResidual<GradientStep> momentum(GradientStep(), static_cast<std::size_t>(depth), options);
      momnet::Rng data(seed);
      const Problems train_set = sample(data, train_count, dim, kappa);
      const Trained r = train(resnet, steps, opt.real("lr"), train_set, test);
      const Trained m = train(momentum, steps, opt.real("lr"), train_set, test);
      csv << "resnet," << depth << "," << seed << "," << r.test << "," << r.step << "," << r.seconds << "\n";
      csv << "momentum," << depth << "," << seed << "," << m.test << "," << m.step << "," << m.seconds << "\n";
      // Geometric mean over seeds: the losses span decades.
      row.resnet += std::log(r.test) / seeds;
      row.momentum += std::log(m.test) / seeds;
      row.resnet_diverged += r.diverged_at >= 0;
      row.momentum_diverged += m.diverged_at >= 0;
      std::printf(
          "  depth %3ld seed %ld: test loss ResNet %.3e (s = %.2f), Momentum %.3e (s = %.2f)  "
          "(%.1f s + %.1f s)\n",
          depth, seed, r.test, r.step, m.test, m.step, r.seconds, m.seconds);
      std::fflush(stdout);
    }
    row.resnet = std::exp(row.resnet);
    row.momentum = std::exp(row.momentum);
    rows.push_back(row);
  }
  csv.close();

  std::printf("\nmean relative suboptimality on %ld test problems (geometric mean over seeds)\n",
              static_cast<long>(test_count));
  std::printf(
      "| depth | ResNet | Momentum ResNet | ResNet / Momentum | GD, tuned step | heavy ball, tuned step |\n"
      "|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %ld | %.3e%s | %.3e%s | %.3g | %.3e | %.3e |\n", r.depth, r.resnet,
                r.resnet_diverged ? " (diverged)" : "", r.momentum, r.momentum_diverged ? " (diverged)" : "",
                r.resnet / r.momentum, r.gd, r.heavy_ball);
  }
  std::printf("wrote %s\n", opt.str("csv").c_str());

  if (quick) {
    for (const Row& r : rows) {
      if (!(r.momentum < r.resnet) || r.momentum_diverged) {
        paper::claim_failed(program, "at depth " + std::to_string(r.depth) + " the Momentum ResNet's test loss " +
                                         std::to_string(r.momentum) + " is not below the ResNet's " +
                                         std::to_string(r.resnet));
      }
    }
    std::printf("claim holds: the Momentum ResNet optimises better than the ResNet at equal depth\n");
  }
  return 0;
}
