// A rank failing during data-parallel training, one way per mode; ctest runs
// each under `mpirun -np 2` through expect_failure.cmake, which checks that
// the job ends (exit code not 0) within a bounded time with the message
// below on its output, instead of hanging:
//
//   throw-in-step   rank 1 throws inside a step: every rank throws the same
//                   CollectiveError, rank 0 prints it, every rank exits 1.
//   throw-outside   rank 1 throws outside any step while rank 0 waits in one:
//                   run_job prints rank 1's exception and ends the job with
//                   MPI_Abort.
//   hang            rank 1 never arrives at the step (it sleeps 60 s): rank 0
//                   gives up after its 1 s timeout and ends the job.
//   crash           rank 1 dies by a signal in the middle of a step: the
//                   launcher sees it and ends the job.
#include <momnet/distributed/distributed.hpp>
#include <momnet/momnet.hpp>

#include <chrono>
#include <cstdio>
#include <csignal>
#include <stdexcept>
#include <string>
#include <thread>

namespace md = momnet::distributed;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "throw-in-step" && mode != "throw-outside" && mode != "hang" && mode != "crash") {
    std::fprintf(stderr, "usage: failure_cases throw-in-step|throw-outside|hang|crash (under mpirun -np 2)\n");
    return 2;
  }
  return md::run_job(argc, argv, [&](md::Communicator& world) {
    momnet::Rng rng(1);
    momnet::Sequential<double> model;
    model.add(momnet::Linear<double>(3, 2, rng));
    md::DataParallelOptions options;
    options.timeout_seconds = mode == "hang" ? 1.0 : 60.0;
    md::DistributedDataParallel<momnet::Sequential<double>> ddp(model, world, options);
    momnet::Tensor<double> x(momnet::Shape{4, 3});
    x.array().setConstant(0.5);

    const bool failing = world.rank() == 1;
    if (failing && mode == "throw-outside") throw std::runtime_error("injected failure outside a step");
    if (failing && mode == "hang") std::this_thread::sleep_for(std::chrono::seconds(60));
    ddp.step([&] {
      momnet::Tape<double> tape;
      tape.backward(momnet::mean(momnet::square(model(tape, tape.constant(x)))));
      if (failing && mode == "throw-in-step") throw std::runtime_error("injected failure in rank 1's backward pass");
      if (failing && mode == "crash") std::raise(SIGKILL);
    });
    return 0;
  });
}
