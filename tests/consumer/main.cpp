// Trains one step of a small network through the public header and checks
// that the loss went down: proves the consumer compiled and linked correctly.
#include <momnet/momnet.hpp>

#include <cstdio>

int main() {
  momnet::Rng rng(1);
  momnet::MLPBlock<float> block(4, 8, rng);
  momnet::SGD<float> sgd(momnet::parameters_of(block), {0.1});
  Eigen::MatrixXf x = Eigen::MatrixXf::Random(16, 4);
  float losses[2];
  for (float& loss_value : losses) {
    momnet::Tape<float> tape;
    auto input = tape.constant(x);
    auto loss = momnet::mse(block.forward(tape, input), tape.constant(Eigen::MatrixXf::Zero(16, 4).eval()));
    sgd.zero_grad();
    tape.backward(loss);
    sgd.step();
    loss_value = loss.item();
  }
  std::printf("loss %g -> %g\n", losses[0], losses[1]);
  return losses[1] < losses[0] ? 0 : 1;
}
