// A handle on an MPI communicator: the group of processes (ranks) that a
// collective call runs over, with the few typed collectives momnet needs.
//
//   Communicator world = Communicator::world();  // every process of the job
//   Communicator mine = world.duplicate();        // same ranks, own traffic
//
// Copies share one communicator; a duplicate is freed with its last copy
// (if MPI is still running then). momnet's distributed classes work on a
// duplicate of the communicator they are given, so their collective calls
// never match a user's on the original. A duplicate returns MPI errors as
// codes, which the members below turn into DistributedError.
//
// Collectives must be called by every rank of the communicator, in the same
// order, with matching counts; counts past INT_MAX go in several calls.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "momnet/distributed/error.hpp"

namespace momnet::distributed {

// The MPI datatype of a C++ scalar.
template <class T>
MPI_Datatype mpi_datatype() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
  else if constexpr (std::is_same_v<T, int>) return MPI_INT;
  else if constexpr (std::is_same_v<T, char>) return MPI_CHAR;
  else static_assert(sizeof(T) == 0, "momnet::distributed::mpi_datatype: no MPI datatype for this type");
}

class Communicator {
 public:
  // MPI_COMM_WORLD, not owned: its error handler stays the user's.
  static Communicator world() { return Communicator(MPI_COMM_WORLD, false, "momnet::distributed::Communicator::world"); }

  // A communicator over the ranks of `comm`, which stays the caller's (not freed).
  explicit Communicator(MPI_Comm comm) : Communicator(comm, false, "momnet::distributed::Communicator") {}

  // A new communicator over the same ranks (MPI_Comm_dup, a collective call)
  // that returns errors as codes.
  Communicator duplicate() const {
    const char* who = "momnet::distributed::Communicator::duplicate";
    MPI_Comm copy = MPI_COMM_NULL;
    check_mpi(MPI_Comm_dup(handle_->comm, &copy), who, "MPI_Comm_dup");
    Communicator result(copy, true, who);
    check_mpi(MPI_Comm_set_errhandler(copy, MPI_ERRORS_RETURN), who, "MPI_Comm_set_errhandler");
    return result;
  }

  MPI_Comm handle() const noexcept { return handle_->comm; }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  void barrier() const { check_mpi(MPI_Barrier(handle()), "momnet::distributed::Communicator::barrier", "MPI_Barrier"); }

  // data[0, count) of rank `root` to every rank.
  template <class T>
  void broadcast(T* data, std::size_t count, int root, const char* who) const {
    check_root(root, who);
    for_each_chunk(count, [&](std::size_t offset, int n) {
      check_mpi(MPI_Bcast(data + offset, n, mpi_datatype<T>(), root, handle()), who, "MPI_Bcast");
    });
  }
  // Rank `root`'s string to every rank.
  void broadcast(std::string& text, int root, const char* who) const {
    std::uint64_t length = text.size();
    broadcast(&length, 1, root, who);
    text.resize(static_cast<std::size_t>(length));
    broadcast(text.data(), text.size(), root, who);
  }
  // Element-wise sums over the ranks, in place on every rank.
  template <class T>
  void allreduce_sum(T* data, std::size_t count, const char* who) const {
    for_each_chunk(count, [&](std::size_t offset, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + offset, n, mpi_datatype<T>(), MPI_SUM, handle()), who,
                "MPI_Allreduce");
    });
  }
  // Every rank's `value`, indexed by rank.
  template <class T>
  std::vector<T> allgather(T value, const char* who) const {
    std::vector<T> all(static_cast<std::size_t>(size_));
    check_mpi(MPI_Allgather(&value, 1, mpi_datatype<T>(), all.data(), 1, mpi_datatype<T>(), handle()), who,
              "MPI_Allgather");
    return all;
  }

  // Calls f(offset, n) over [0, count) in pieces of at most INT_MAX elements
  // (MPI's counts are int).
  template <class F>
  static void for_each_chunk(std::size_t count, F&& f) {
    constexpr std::size_t most = INT_MAX;
    for (std::size_t offset = 0; offset < count; offset += most) {
      f(offset, static_cast<int>(std::min(most, count - offset)));
    }
  }

 private:
  struct Handle {
    MPI_Comm comm;
    bool owned;
    Handle(MPI_Comm c, bool o) noexcept : comm(c), owned(o) {}
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    ~Handle() {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (owned && !finalized) MPI_Comm_free(&comm);
    }
  };

  Communicator(MPI_Comm comm, bool owned, const char* who) : handle_(std::make_shared<Handle>(comm, owned)) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      throw std::logic_error(std::string(who) + ": MPI is not running (create a momnet::distributed::Environment "
                             "first, and keep it alive while communicators are in use)");
    }
    if (comm == MPI_COMM_NULL) throw std::invalid_argument(std::string(who) + ": MPI_COMM_NULL is not a communicator");
    check_mpi(MPI_Comm_rank(comm, &rank_), who, "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm, &size_), who, "MPI_Comm_size");
  }

  void check_root(int root, const char* who) const {
    if (root < 0 || root >= size_) {
      throw std::invalid_argument(std::string(who) + ": root rank " + std::to_string(root) + " is outside [0, " +
                                  std::to_string(size_) + ")");
    }
  }

  std::shared_ptr<Handle> handle_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace momnet::distributed
