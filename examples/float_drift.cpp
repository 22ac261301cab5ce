// How wrong memory-free gradients get with depth: momnet's exact mode against
// its floating-point inverse, both compared with stored-activation backprop of
// the same network (MLP blocks d = 8, h = 16, batch 32, float, the setting of
// the reference-package measurements in docs/design.md). Prints a table of
// relative errors max |g - g_stored| / max |g_stored| over all gradients.
//
// Exits with 1 (ctest runs it) when a backward pass refused to run (the exact
// mode never should; the float inverse's drift check is off here) or when the
// exact mode's gradients differ from stored backprop at all: for residual
// blocks they are the same numbers, bit for bit.
#include <momnet/momnet.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

namespace {

using Block = momnet::MLPBlock<float>;

std::vector<float> gradients(momnet::MomentumResidual<Block>& net, const Eigen::MatrixXf& input, bool* refused) {
  momnet::zero_grad(net);
  momnet::Tape<float> tape;
  const momnet::Var<float> x = tape.variable(input);
  const momnet::Var<float> loss = momnet::mean(momnet::square(net(tape, x)));
  try {
    tape.backward(loss);
  } catch (const momnet::ReconstructionError&) {
    *refused = true;
    return {};
  }
  std::vector<float> all;
  for (momnet::Parameter<float>* p : momnet::parameters_of(net)) {
    all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
  }
  all.insert(all.end(), x.grad().data(), x.grad().data() + x.size());
  return all;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return NAN;
  double difference = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    difference = std::max(difference, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return difference / scale;
}

}  // namespace

int main() {
  momnet::Rng rng(2021);
  Eigen::MatrixXf input(32, 8);
  for (Eigen::Index i = 0; i < input.size(); ++i) input.data()[i] = static_cast<float>(rng.uniform(-1, 1));
  std::printf("| gamma | depth | exact | float_inverse (no drift check) |\n|---|---|---|---|\n");
  bool failed = false;
  for (double gamma : {0.9, 0.5}) {
    for (std::size_t depth : {10, 100, 300, 1000}) {
      std::vector<Block> blocks;
      for (std::size_t i = 0; i < depth; ++i) blocks.emplace_back(8, 16, rng);
      momnet::MomentumOptions options;
      options.gamma = gamma;
      options.float_drift_tolerance = INFINITY;  // measure the drift instead of refusing
      options.mode = momnet::BackwardMode::stored;
      momnet::MomentumResidual<Block> stored(blocks, options);
      options.mode = momnet::BackwardMode::exact;
      momnet::MomentumResidual<Block> exact(blocks, options);
      options.mode = momnet::BackwardMode::float_inverse;
      momnet::MomentumResidual<Block> floating(blocks, options);
      bool refused_stored = false, refused_exact = false, refused_float = false;
      const std::vector<float> reference = gradients(stored, input, &refused_stored);
      const std::vector<float> g_exact = gradients(exact, input, &refused_exact);
      const std::vector<float> g_float = gradients(floating, input, &refused_float);
      if (refused_stored || refused_exact || refused_float) {
        std::printf("| %.1f | %zu | %s | %s |\n", gamma, depth, refused_exact ? "refused" : "-",
                    refused_float ? "refused" : "-");
        std::fprintf(stderr, "float_drift: a backward pass refused to run at gamma %.1f, depth %zu%s\n", gamma,
                     depth, refused_stored ? " (stored mode)" : "");
        failed = true;
        continue;
      }
      const double exact_error = relative_error(g_exact, reference);
      std::printf("| %.1f | %zu | %.1e | %.1e |\n", gamma, depth, exact_error, relative_error(g_float, reference));
      if (!(exact_error == 0.0)) {
        std::fprintf(stderr, "float_drift: the exact mode's gradients differ from stored backprop (%.3e) at gamma "
                     "%.1f, depth %zu\n", exact_error, gamma, depth);
        failed = true;
      }
    }
  }
  return failed ? 1 : 0;
}
