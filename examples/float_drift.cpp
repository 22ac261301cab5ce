// How wrong memory-free gradients get with depth: momnet's exact mode against
// its floating-point inverse, both compared with stored-activation backprop of
// the same network (MLP blocks d = 8, h = 16, batch 32, float, the setting of
// the reference-package measurements in DESIGN.md). Prints a table of
// relative errors max |g - g_stored| / max |g_stored| over all gradients.
#include <momnet/momnet.hpp>

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
      bool refused = false;
      const std::vector<float> reference = gradients(stored, input, &refused);
      const std::vector<float> g_exact = gradients(exact, input, &refused);
      const std::vector<float> g_float = gradients(floating, input, &refused);
      std::printf("| %.1f | %zu | %.1e | %.1e |\n", gamma, depth, relative_error(g_exact, reference),
                  relative_error(g_float, reference));
    }
  }
  return 0;
}
