// linear_activation: act(x W^T + b) as one node that stores only what its
// reverse rule reads.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <vector>

using namespace momnet;
using momnet_test::uniform;

namespace {
const ActivationKind all_kinds[] = {ActivationKind::identity, ActivationKind::tanh,    ActivationKind::relu,
                                    ActivationKind::sigmoid,  ActivationKind::gelu,    ActivationKind::softplus};
}

TEST_CASE("linear_activation gradients for every activation, rank 1 to 4, with and without bias",
          "[ops][gradients][linear_activation]") {
  for (ActivationKind kind : all_kinds) {
    for (const Shape& shape : {Shape{4}, Shape{3, 4}, Shape{2, 3, 4}, Shape{2, 2, 1, 4}}) {
      for (bool with_bias : {true, false}) {
        INFO(to_string(kind) << " " << shape.to_string() << (with_bias ? " bias" : " no bias"));
        std::vector<Tensor<double>> inputs{uniform(shape, 1), uniform(Shape{5, 4}, 2)};
        if (with_bias) inputs.push_back(uniform(Shape{5}, 3));
        const auto result = check_gradients(
            [kind](Tape<double>&, const std::vector<Var<double>>& v) {
              return linear_activation(v[0], v[1], v.size() > 2 ? v[2] : Var<double>(), kind);
            },
            inputs);
        INFO(result.worst);
        CHECK(result.passed);
      }
    }
  }
}

TEMPLATE_TEST_CASE("linear_activation equals linear then activate, bit for bit", "[ops][values][linear_activation]",
                   float, double) {
  using T = TestType;
  Tape<T> tape;
  const Tensor<double> xd = uniform(Shape{6, 8}, 4, -2, 2), wd = uniform(Shape{7, 8}, 5), bd = uniform(Shape{7}, 6);
  Tensor<T> x(xd.shape()), w(wd.shape()), b(bd.shape());
  x.array() = xd.array().cast<T>();
  w.array() = wd.array().cast<T>();
  b.array() = bd.array().cast<T>();
  for (ActivationKind kind : all_kinds) {
    INFO(to_string(kind));
    const Var<T> fused = linear_activation(tape.constant(x), tape.constant(w), tape.constant(b), kind);
    const Var<T> plain = activate(linear(tape.constant(x), tape.constant(w), tape.constant(b)), kind);
    REQUIRE(fused.shape() == Shape{6, 7});
    CHECK((fused.array() == plain.array()).all());
  }
}

TEST_CASE("linear_activation keeps one array per call on the tape for tanh, two for gelu",
          "[ops][memory][linear_activation]") {
  Tape<float> tape;
  const Var<float> x = tape.variable(Tensor<float>(Shape{64, 16}));
  const Var<float> w = tape.variable(Tensor<float>(Shape{16, 16}));
  const std::size_t before = tape.arena_bytes_in_use();
  linear_activation(x, w, Var<float>(), ActivationKind::tanh);
  const std::size_t tanh_bytes = tape.arena_bytes_in_use() - before;
  linear_activation(x, w, Var<float>(), ActivationKind::gelu);
  const std::size_t gelu_bytes = tape.arena_bytes_in_use() - before - tanh_bytes;
  const std::size_t array = 64 * 16 * sizeof(float);
  CHECK(tanh_bytes >= array);
  CHECK(tanh_bytes < 2 * array);
  CHECK(gelu_bytes >= 2 * array);
  CHECK(gelu_bytes < 3 * array);
}

TEST_CASE("linear_activation names itself and both shapes on bad operands", "[ops][errors][linear_activation]") {
  Tape<double> tape;
  const Var<double> x = tape.constant(Tensor<double>(Shape{2, 3}));
  REQUIRE_THROWS_EXACT(linear_activation(x, tape.constant(Tensor<double>(Shape{4, 5})), Var<double>(),
                                         ActivationKind::tanh),
                       std::invalid_argument, "momnet::linear_activation", "[2, 3] and [4, 5]");
  REQUIRE_THROWS_EXACT(linear_activation(x, tape.constant(Tensor<double>(Shape{4, 3})),
                                         tape.constant(Tensor<double>(Shape{5})), ActivationKind::relu),
                       std::invalid_argument, "momnet::linear_activation", "bias");
}
