// MPI's lifetime in a program, and how a failing rank ends the job.
//
//   int main(int argc, char** argv) {
//     return momnet::distributed::run_job(argc, argv, [&](momnet::distributed::Communicator& world) {
//       ... train ...
//       return 0;
//     });
//   }
//
// run_job starts MPI, runs the body and returns its exit code. A
// CollectiveError (every rank threw it: a step failed somewhere, and every
// rank knows) is printed once, by rank 0, and every rank finalises MPI and
// returns 1. Any other exception leaving the body is printed with its rank
// and ends the whole job with MPI_Abort: the other ranks may be waiting in a
// collective call for this one, and only the launcher can stop them.
//
// Environment is the RAII part alone, for programs that manage their own
// errors: MPI_Init_thread (MPI_THREAD_FUNNELED: Eigen's OpenMP threads never
// call MPI) in the constructor, MPI_Finalize in the destructor, or
// MPI_Abort when the destructor runs because an exception is unwinding the
// stack (MPI_Finalize would wait for ranks that may never arrive).
#pragma once

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/error.hpp"

namespace momnet::distributed {

// Prints "momnet::distributed: rank r of P: <message>; aborting the job" to
// stderr and ends every rank of the job (MPI_Abort on `comm`, exit code 1).
[[noreturn]] inline void abort_job(MPI_Comm comm, const std::string& message) {
  int rank = -1, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  std::fprintf(stderr, "momnet::distributed: rank %d of %d: %s; aborting the job\n", rank, size, message.c_str());
  std::fflush(stderr);
  MPI_Abort(comm, 1);
  std::abort();  // MPI_Abort does not return; if an implementation did, this rank still must not go on
}

class Environment {
 public:
  Environment(int& argc, char**& argv) { start(&argc, &argv); }
  // For programs that have no argc, argv at hand (MPI allows null).
  Environment() { start(nullptr, nullptr); }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;
  ~Environment() {
    if (!owner_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (std::uncaught_exceptions() > uncaught_) {
      abort_job(MPI_COMM_WORLD, "an exception is leaving the program while MPI runs");
    }
    MPI_Finalize();
  }

  // Whether this object started MPI (false: it was running already, and
  // whoever started it finalises it).
  bool owner() const noexcept { return owner_; }
  // The thread support MPI granted (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  int thread_level() const noexcept { return thread_level_; }
  Communicator world() const { return Communicator::world(); }

 private:
  void start(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Query_thread(&thread_level_);
      return;
    }
    const int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &thread_level_);
    check_mpi(code, "momnet::distributed::Environment", "MPI_Init_thread");
    owner_ = true;
    uncaught_ = std::uncaught_exceptions();
  }

  bool owner_ = false;
  int thread_level_ = MPI_THREAD_SINGLE;
  int uncaught_ = 0;
};

// Runs body(world) between MPI's start and end; returns the body's exit code
// (0 for a body returning void). See the top of this file for failures.
template <class Body>
int run_job(int& argc, char**& argv, Body&& body) {
  Environment environment(argc, argv);
  Communicator world = environment.world();
  try {
    if constexpr (std::is_void_v<std::invoke_result_t<Body&, Communicator&>>) {
      body(world);
      return 0;
    } else {
      return static_cast<int>(body(world));
    }
  } catch (const CollectiveError& e) {
    if (world.rank() == 0) {
      std::fprintf(stderr, "%s\n", e.what());
      std::fflush(stderr);
    }
    return 1;
  } catch (const std::exception& e) {
    abort_job(MPI_COMM_WORLD, std::string("uncaught exception: ") + e.what());
  } catch (...) {
    abort_job(MPI_COMM_WORLD, "uncaught exception of unknown type");
  }
}

}  // namespace momnet::distributed
