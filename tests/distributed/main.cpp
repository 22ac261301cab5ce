// The Catch2 runner of the distributed tests: MPI runs around the whole
// session, so that every test case sees the same world. Run it under
// `mpirun -np P` (ctest does, for P = 1, 2 and 3); every rank runs every test
// case, in the same order, and reports its own result.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <momnet/distributed/environment.hpp>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

int main(int argc, char** argv) {
  momnet::distributed::Environment environment(argc, argv);
  const int failures = Catch::Session().run(argc, argv);
#if defined(__SANITIZE_ADDRESS__)
  // LeakSanitizer's check, now rather than at exit: MPI_Finalize unloads
  // Open MPI's plugins, whose allocations (never freed) LeakSanitizer could
  // then neither name nor be told to ignore. Leaks of the tests show here;
  // the exit-time check no longer runs.
  __lsan_do_leak_check();
#endif
  return failures;
}
