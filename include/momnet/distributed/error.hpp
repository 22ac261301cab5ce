// The two ways a distributed operation fails (docs/distributed.md):
//
//   DistributedError  an MPI call returned an error on this rank (MPI's own
//                     message included). Only communicators that momnet
//                     duplicated return errors; on MPI_COMM_WORLD, MPI's
//                     default handler aborts the job instead.
//   CollectiveError   a step that every rank runs together failed on at least
//                     one rank (an exception in its forward or backward pass,
//                     say). Every rank throws it, with the same message naming
//                     the rank(s) that failed and the first one's exception,
//                     so that no rank is left waiting in a collective call.
#pragma once

#include <mpi.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace momnet::distributed {

class DistributedError : public std::runtime_error {
 public:
  DistributedError(const std::string& message, int code) : std::runtime_error(message), code_(code) {}
  // The MPI error code.
  int code() const noexcept { return code_; }

 private:
  int code_;
};

class CollectiveError : public std::runtime_error {
 public:
  CollectiveError(const std::string& message, std::vector<int> failed_ranks)
      : std::runtime_error(message), failed_ranks_(std::move(failed_ranks)) {}
  // The ranks that failed, in increasing order (the same list on every rank).
  const std::vector<int>& failed_ranks() const noexcept { return failed_ranks_; }

 private:
  std::vector<int> failed_ranks_;
};

// MPI's message for an error code.
inline std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

// Throws DistributedError unless `code` is MPI_SUCCESS; `who` names momnet's
// function, `call` the MPI function.
inline void check_mpi(int code, const char* who, const char* call) {
  if (code == MPI_SUCCESS) return;
  throw DistributedError(std::string(who) + ": " + call + " failed: " + mpi_error_string(code), code);
}

}  // namespace momnet::distributed
