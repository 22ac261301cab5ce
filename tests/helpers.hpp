// Shared fixtures for the MomentumResidual tests.
#pragma once

#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include <algorithm>
#include <cmath>

#include <cstdint>
#include <vector>

namespace momnet_test {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
Mat<T> random_input(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, double scale = 1.0) {
  momnet::Rng rng(seed);
  Mat<T> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(rng.uniform(-scale, scale));
  return m;
}

template <class T>
std::vector<momnet::MLPBlock<T>> mlp_blocks(std::size_t count, Eigen::Index dim, Eigen::Index hidden,
                                            std::uint64_t seed,
                                            momnet::ActivationKind activation = momnet::ActivationKind::tanh) {
  momnet::Rng rng(seed);
  std::vector<momnet::MLPBlock<T>> blocks;
  for (std::size_t i = 0; i < count; ++i) blocks.emplace_back(dim, hidden, rng, activation);
  return blocks;
}

// The exact forward pass rounds to 2^-44 in double, which puts about 5e-13
// of noise into each loss the finite differences take: a step of 1e-4 and a
// tolerance of 1e-5 keep that noise out, while a wrong reverse rule gives
// errors of order 1e-2 and more.
inline momnet::GradientCheckOptions quantized_check() {
  momnet::GradientCheckOptions options;
  options.step = 1e-4;
  options.tolerance = 1e-5;
  return options;
}

inline momnet::MomentumOptions options_for(double gamma, momnet::BackwardMode mode) {
  momnet::MomentumOptions options;
  options.gamma = gamma;
  options.mode = mode;
  return options;
}

// Every parameter gradient of `model`, then the input gradient, after one
// backward pass of mean(x_N^2) from a fresh tape.
template <class Model, class T>
std::vector<T> gradients_of(Model& model, const Mat<T>& input) {
  momnet::zero_grad(model);
  momnet::Tape<T> tape;
  const momnet::Var<T> x = tape.variable(input);
  tape.backward(momnet::mean(momnet::square(model(tape, x))));
  std::vector<T> all;
  for (momnet::Parameter<T>* p : momnet::parameters_of(model)) {
    all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
  }
  all.insert(all.end(), x.grad().data(), x.grad().data() + x.size());
  return all;
}

// max |a - b| / max |b|
template <class T>
double relative_error(const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  double difference = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    difference = std::max(difference, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return difference / scale;
}

// Records the fixed-point state (x_n, v_n) of every layer in both passes.
struct StateLog {
  std::vector<std::vector<std::int64_t>> forward, backward;
  std::size_t backward_layers_seen = 0;
  bool order_ok = true;  // the backward pass visits depth-1, ..., 0

  template <class Block>
  void attach(momnet::MomentumResidual<Block>& net) {
    using T = typename Block::Scalar;
    const std::size_t depth = net.depth();
    forward.assign(depth, {});
    backward.assign(depth, {});
    net.set_observer([this, depth](const momnet::LayerEvent<T>& e) {
      std::vector<std::int64_t> words(e.x_fixed, e.x_fixed + e.elements);
      words.insert(words.end(), e.v_fixed, e.v_fixed + e.elements);
      if (e.phase == momnet::LayerEvent<T>::Phase::forward) {
        forward[e.layer] = std::move(words);
      } else {
        order_ok = order_ok && e.layer == depth - 1 - backward_layers_seen;
        ++backward_layers_seen;
        backward[e.layer] = std::move(words);
      }
    });
  }

  std::size_t mismatches() const {
    std::size_t count = 0;
    for (std::size_t n = 0; n < forward.size(); ++n) count += forward[n] != backward[n];
    return count;
  }
};

// One training step's forward and backward through `net` with its layer log;
// REQUIREs that every layer was rebuilt bit for bit.
template <class T, class Block>
void require_bitwise_rebuild(momnet::MomentumResidual<Block>& net, const Mat<T>& input) {
  StateLog log;
  log.attach(net);
  momnet::Tape<T> tape;
  const momnet::Var<T> x = tape.variable(input);
  const momnet::MomentumOutput<T> out = net.forward(tape, x);
  const std::size_t bound = momnet::bit_store_words_per_element(net.depth(), net.gamma());
  CHECK(1 + out.spills <= bound);
  CHECK(1 + out.spills >= bound - bound / 10);
  tape.backward(momnet::mean(momnet::square(out.x)));
  REQUIRE(log.backward_layers_seen == net.depth());
  REQUIRE(log.order_ok);
  REQUIRE(log.mismatches() == 0);
  REQUIRE(x.grad().allFinite());
  net.set_observer(nullptr);
}

}  // namespace momnet_test
