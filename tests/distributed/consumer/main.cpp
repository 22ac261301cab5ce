// Averages one gradient over the ranks with momnet::distributed, built
// against an installed momnet; exits 0 when every rank holds the mean.
#include <momnet/distributed/distributed.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  return momnet::distributed::run_job(argc, argv, [](momnet::distributed::Communicator& world) {
    momnet::Parameter<double> p(momnet::Shape{3}, "w");
    for (Eigen::Index k = 0; k < 3; ++k) p.grad_data()[k] = world.rank() + k;
    momnet::distributed::GradientReducer<double> reducer(world.duplicate(), {&p});
    reducer.reduce();
    const double mean_rank = (world.size() - 1) / 2.0;
    for (Eigen::Index k = 0; k < 3; ++k) {
      if (p.grad_data()[k] != mean_rank + k) {
        std::fprintf(stderr, "rank %d: gradient %ld is %g, not %g\n", world.rank(), static_cast<long>(k),
                     p.grad_data()[k], mean_rank + k);
        return 1;
      }
    }
    return 0;
  });
}
