// momnet quickstart: a 64-layer Momentum ResNet of MLP blocks learns a
// regression, and its backward pass rebuilds the activations instead of
// storing them. Compare the tape's peak memory with the plain ResNet's.
#include <momnet/momnet.hpp>

#include <cstdio>

int main() {
  using namespace momnet;
  Rng rng(0);

  // Data: y = sin(3 x) summed over 8 features, 256 samples.
  const Eigen::Index batch = 256, width = 8;
  Eigen::MatrixXf x(batch, width);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform(-1, 1));
  const Eigen::MatrixXf y = (3 * x.array()).sin().rowwise().sum().matrix();

  // 64 residual blocks x -> W2 tanh(W1 x + b1) + b2, wrapped in momentum.
  std::vector<MLPBlock<float>> blocks;
  for (int i = 0; i < 64; ++i) blocks.emplace_back(width, 16, rng);
  Residual<MLPBlock<float>> resnet(blocks);
  MomentumResidual<MLPBlock<float>> net = to_momentum(resnet, /*gamma=*/0.9);
  Linear<float> head(width, 1, rng);

  auto parameters = parameters_of(net);
  for (Parameter<float>* p : parameters_of(head)) parameters.push_back(p);
  Adam<float> adam(parameters, {/*learning_rate=*/3e-3});

  float first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    Tape<float> tape;
    const Var<float> loss = mse(head.forward(tape, net(tape, tape.constant(x))), tape.constant(y));
    adam.zero_grad();
    tape.backward(loss);  // rebuilds x_63, ..., x_0 from the output, exactly
    adam.step();
    if (step == 0) first = loss.item();
    last = loss.item();
    if (step % 25 == 0) std::printf("step %3d  loss %.4f\n", step, loss.item());
  }
  std::printf("loss %.4f -> %.4f\n", first, last);

  // The same training step's peak memory, momentum (exact) against ResNet.
  auto peak_bytes = [&](auto& model) {
    Tape<float> tape(std::size_t{64} << 10);
    tape.backward(mean(square(model(tape, tape.constant(x)))));
    return static_cast<double>(tape.memory().peak_bytes());
  };
  std::printf("peak tape memory: ResNet %.2f MiB, Momentum ResNet %.2f MiB\n", peak_bytes(resnet) / 1048576,
              peak_bytes(net) / 1048576);
  return last < 0.5f * first ? 0 : 1;
}
