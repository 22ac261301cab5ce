// The initial state of data-parallel training: every rank starts from rank
// `root`'s parameters and buffers (as PyTorch's DistributedDataParallel does
// when it wraps a module), so that the ranks, which then apply the same
// averaged gradients, stay identical. The ranks' models must have the same
// layout (names and shapes, in visiting order); a model that differs throws
// std::invalid_argument on every rank, naming the first entry that differs.
//
// Each tensor goes in one MPI_Bcast, in place. Parameters that change are
// marked modified (a tape recorded before the broadcast refuses a backward
// pass through them, as after an optimiser step).
#pragma once

#include "momnet/distributed/communicator.hpp"
#include "momnet/distributed/consistency.hpp"
#include "momnet/module.hpp"

namespace momnet::distributed {

namespace detail {

template <class Model>
void broadcast_entries(const Communicator& comm, Model& model, bool parameters, bool buffers, int root,
                       const char* who) {
  auto entries = state_entries(model, parameters, buffers);
  check_same_layout(comm, entries, who, root);
  for (auto& e : entries) {
    if (e.integer != nullptr) {
      comm.broadcast(e.integer, e.size(), root, who);
    } else {
      comm.broadcast(e.real, e.size(), root, who);
    }
  }
  if (parameters) for_each_parameter(model, [](auto& p) { p.mark_modified(); });
}

}  // namespace detail

// Rank `root`'s parameter values to every rank.
template <class Model>
void broadcast_parameters(const Communicator& comm, Model& model, int root = 0) {
  detail::broadcast_entries(comm, model, true, false, root, "momnet::distributed::broadcast_parameters");
}

// Rank `root`'s buffers (running statistics, num_batches_tracked) to every rank.
template <class Model>
void broadcast_buffers(const Communicator& comm, Model& model, int root = 0) {
  detail::broadcast_entries(comm, model, false, true, root, "momnet::distributed::broadcast_buffers");
}

// Both: rank `root`'s whole state to every rank.
template <class Model>
void broadcast_state(const Communicator& comm, Model& model, int root = 0) {
  detail::broadcast_entries(comm, model, true, true, root, "momnet::distributed::broadcast_state");
}

}  // namespace momnet::distributed
