// The exact backward with Eigen's products running on two OpenMP threads:
// the rebuild still matches the forward bit for bit, because both passes use
// the same thread count and Eigen splits a product's output, never its sums.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "../helpers.hpp"

using namespace momnet;
using namespace momnet_test;

TEMPLATE_TEST_CASE("Bitwise rebuild at depth 10,000 with Eigen on 2 threads", "[momentum][exact][openmp]", float,
                   double) {
  using T = TestType;
  Eigen::setNbThreads(2);
  REQUIRE(Eigen::nbThreads() == 2);
  for (double gamma : {0.5, 0.9, 0.99}) {
    INFO("gamma " << gamma);
    // 64 x 32 x 64 products: past Eigen's threshold for splitting across threads.
    MomentumResidual<MLPBlock<T>> net(mlp_blocks<T>(1, 32, 64, 5)[0], 10000,
                                      options_for(gamma, BackwardMode::exact));
    require_bitwise_rebuild<T>(net, random_input<T>(64, 32, 6));
  }
}

TEST_CASE("A backward on another thread count than its forward is refused, naming both", "[momentum][exact][openmp]") {
  MomentumResidual<MLPBlock<double>> net(mlp_blocks<double>(3, 32, 64, 7), options_for(0.9, BackwardMode::exact));
  Tape<double> tape;
  Eigen::setNbThreads(2);
  const Var<double> loss = mean(square(net(tape, tape.variable(random_input<double>(64, 32, 8)))));
  Eigen::setNbThreads(1);
  REQUIRE_THROWS_AS(tape.backward(loss), ReconstructionError);
  REQUIRE_THROWS_WITH(tape.backward(loss), Catch::Contains("Eigen ran on 2 thread(s) in the forward pass and on 1"));
  Eigen::setNbThreads(2);
  REQUIRE_NOTHROW(tape.backward(loss));
}
