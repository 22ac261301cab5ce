// Status agreement: how a failure on one rank reaches every rank instead of
// leaving them waiting forever in the next collective call.
//
// Every rank calls agree() at the same point (before a gradient allreduce,
// say) with the exception its part of the work threw, or none. If every rank
// succeeded, agree() returns. Otherwise every rank throws the same
// CollectiveError: "<what>: rank 1 of 4 failed: <its exception's message>"
// (and "; ranks 1, 3 failed" when several did). The cost on success is one
// MPI_Allgather of an int (a few microseconds on one host).
//
// A rank that never arrives (it hangs, or left the program without ending
// the job) cannot be told apart from a slow one, so the wait is bounded: after
// `timeout_seconds` the waiting ranks end the job with MPI_Abort and a
// message saying where they waited. 0 or infinity waits without bound.
//
//   distributed::run_agreed(comm, "training step", 1800.0, [&] { forward; backward; });
#pragma once

#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/environment.hpp"
#include "momnet/distributed/error.hpp"

namespace momnet::distributed {

namespace detail {

inline std::string exception_message(const std::exception_ptr& failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception of unknown type";
  }
}

inline std::string seconds_string(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", seconds);
  return text;
}

inline void check_timeout(double timeout_seconds, const char* who) {
  if (std::isnan(timeout_seconds) || timeout_seconds < 0.0) {
    throw std::invalid_argument(std::string(who) + ": timeout_seconds must be >= 0 (0: no limit), got " +
                                seconds_string(timeout_seconds));
  }
}

// Waits for the collective `request`; past the deadline, aborts the job,
// saying it waited `where` ("in the agreement of step 3"). Polls with
// MPI_Test (which also drives the request's progress), sleeping between polls
// after the first millisecond so that a long wait leaves the core to a rank
// still computing on it.
inline void wait_bounded(MPI_Request& request, const Communicator& comm, double timeout_seconds,
                         const std::string& where) {
  const char* who = "momnet::distributed::wait_bounded";
  if (timeout_seconds == 0.0 || std::isinf(timeout_seconds)) {
    check_mpi(MPI_Wait(&request, MPI_STATUS_IGNORE), who, "MPI_Wait");
    return;
  }
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  const auto limit = std::chrono::duration<double>(timeout_seconds);
  for (int polls = 0;; ++polls) {
    int done = 0;
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), who, "MPI_Test");
    if (done) return;
    const auto waited = Clock::now() - start;
    if (waited > limit) {
      abort_job(comm.handle(), "waited " + seconds_string(timeout_seconds) + " s " + where +
                                   " for ranks that did not arrive (a rank hung, or left without ending the job)");
    }
    if (waited > std::chrono::milliseconds(1)) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    } else if (polls % 16 == 15) {
      std::this_thread::yield();
    }
  }
}

}  // namespace detail

// See the top of this file. `what` names the work ("training step 12").
inline void agree(const Communicator& comm, const std::string& what, const std::exception_ptr& failure,
                  double timeout_seconds) {
  const char* who = "momnet::distributed::agree";
  detail::check_timeout(timeout_seconds, who);
  int status = failure ? 1 : 0;
  std::vector<int> statuses(static_cast<std::size_t>(comm.size()));
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallgather(&status, 1, MPI_INT, statuses.data(), 1, MPI_INT, comm.handle(), &request), who,
            "MPI_Iallgather");
  detail::wait_bounded(request, comm, timeout_seconds, "in the agreement of " + what);

  std::vector<int> failed;
  for (int r = 0; r < comm.size(); ++r) {
    if (statuses[static_cast<std::size_t>(r)] != 0) failed.push_back(r);
  }
  if (failed.empty()) return;
  // Every rank is here and knows who failed: the first failed rank tells the
  // others its exception's message.
  std::string message = failure ? detail::exception_message(failure) : std::string();
  comm.broadcast(message, failed.front(), who);
  std::string text = what + ": rank " + std::to_string(failed.front()) + " of " + std::to_string(comm.size()) +
                     " failed: " + message;
  if (failed.size() > 1) {
    text += "; ranks";
    for (std::size_t i = 0; i < failed.size(); ++i) text += (i == 0 ? " " : ", ") + std::to_string(failed[i]);
    text += " failed";
  }
  throw CollectiveError(text, std::move(failed));
}

// Runs f() on this rank, then agree()s on its outcome: returns f's result
// when every rank's f returned, else throws the CollectiveError on every rank.
template <class F>
auto run_agreed(const Communicator& comm, const std::string& what, double timeout_seconds, F&& f) {
  using Result = std::decay_t<std::invoke_result_t<F&>>;  // a reference result is returned as a copy
  std::exception_ptr failure;
  if constexpr (std::is_void_v<Result>) {
    try {
      f();
    } catch (...) {
      failure = std::current_exception();
    }
    agree(comm, what, failure, timeout_seconds);
  } else {
    std::optional<Result> result;
    try {
      result.emplace(f());
    } catch (...) {
      failure = std::current_exception();
    }
    agree(comm, what, failure, timeout_seconds);
    return std::move(*result);
  }
}

}  // namespace momnet::distributed
