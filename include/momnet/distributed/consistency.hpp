// Checks that the replicas of a model on the ranks agree: in layout (the same
// parameter and buffer names and shapes, what broadcasting and gradient
// averaging need) and in values (bit for bit, what data-parallel training
// keeps: every rank applies the same averaged gradients to the same
// parameters). Each check costs an allgather of one 64-bit fingerprint per
// rank; only when fingerprints differ do the ranks exchange more, to name the
// first entry that differs. Both throw on every rank with the same message.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/distributed/communicator.hpp"
#include "momnet/module.hpp"
#include "momnet/shape.hpp"

namespace momnet::distributed {

// One parameter or buffer of a model, as the checks and broadcasts see it.
template <class T>
struct StateEntry {
  std::string kind;  // "parameter" or "buffer"
  std::string name;
  Shape shape;
  T* real = nullptr;               // a parameter's values or a real buffer
  std::int64_t* integer = nullptr; // an integer buffer (num_batches_tracked)
  std::size_t size() const { return static_cast<std::size_t>(shape.size()); }
  // "parameter 'fc1.weight' [16, 8]", the entry's layout.
  std::string describe() const {
    return kind + " '" + name + "' " + shape.to_string() + (integer != nullptr ? " int64" : "");
  }
};

// Every parameter of `model` (in visiting order), then every buffer; either
// group can be left out.
template <class Model>
std::vector<StateEntry<typename Model::Scalar>> state_entries(Model& model, bool parameters = true,
                                                              bool buffers = true) {
  using T = typename Model::Scalar;
  std::vector<StateEntry<T>> entries;
  if (parameters) {
    for (auto& [name, p] : named_parameters(model)) {
      entries.push_back(StateEntry<T>{"parameter", name, p->shape(), p->value_data(), nullptr});
    }
  }
  if (buffers) {
    for (auto& [name, b] : named_buffers(model)) {
      entries.push_back(StateEntry<T>{"buffer", name, b.shape(), b.real != nullptr ? b.real->data() : nullptr,
                                      b.integer != nullptr ? b.integer->data() : nullptr});
    }
  }
  return entries;
}

namespace detail {

inline std::uint64_t fnv1a(const void* data, std::size_t bytes, std::uint64_t hash = 14695981039346656037ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  return hash;
}

template <class T>
std::uint64_t layout_fingerprint(const std::vector<StateEntry<T>>& entries) {
  std::uint64_t hash = fnv1a(nullptr, 0);
  for (const auto& e : entries) {
    const std::string text = e.describe() + "\n";
    hash = fnv1a(text.data(), text.size(), hash);
  }
  return hash;
}

template <class T>
std::uint64_t value_fingerprint(const StateEntry<T>& e) {
  return e.integer != nullptr ? fnv1a(e.integer, e.size() * sizeof(std::int64_t))
                              : fnv1a(e.real, e.size() * sizeof(T));
}

inline int first_rank_differing(const std::vector<std::uint64_t>& fingerprints, int root) {
  for (std::size_t r = 0; r < fingerprints.size(); ++r) {
    if (fingerprints[r] != fingerprints[static_cast<std::size_t>(root)]) return static_cast<int>(r);
  }
  return -1;
}

}  // namespace detail

// Throws std::invalid_argument on every rank unless every rank's entries
// have rank `root`'s names, shapes and kinds, in the same order. `who`
// names the caller in the message.
template <class T>
void check_same_layout(const Communicator& comm, const std::vector<StateEntry<T>>& entries, const char* who,
                       int root = 0) {
  const auto fingerprints = comm.allgather(detail::layout_fingerprint(entries), who);
  const int differing = detail::first_rank_differing(fingerprints, root);
  if (differing < 0) return;
  // The root's layout to everyone; the first differing rank says where it differs.
  std::string root_layout;
  if (comm.rank() == root) {
    for (const auto& e : entries) root_layout += e.describe() + "\n";
  }
  comm.broadcast(root_layout, root, who);
  std::string message;
  if (comm.rank() == differing) {
    std::vector<std::string> theirs;
    for (std::size_t start = 0, end; (end = root_layout.find('\n', start)) != std::string::npos; start = end + 1) {
      theirs.push_back(root_layout.substr(start, end - start));
    }
    const std::string mine_name = "rank " + std::to_string(differing);
    const std::string root_name = "rank " + std::to_string(root);
    std::size_t i = 0;
    while (i < entries.size() && i < theirs.size() && entries[i].describe() == theirs[i]) ++i;
    if (i < entries.size() && i < theirs.size()) {
      message = "entry " + std::to_string(i) + " is " + entries[i].describe() + " on " + mine_name + " but " +
                theirs[i] + " on " + root_name;
    } else if (i < entries.size()) {
      message = mine_name + " has " + std::to_string(entries.size()) + " entries, " + root_name + " " +
                std::to_string(theirs.size()) + "; the first extra one is " + entries[i].describe();
    } else {
      message = mine_name + " has " + std::to_string(entries.size()) + " entries, " + root_name + " " +
                std::to_string(theirs.size()) + "; the first missing one is " + theirs[i];
    }
  }
  comm.broadcast(message, differing, who);
  throw std::invalid_argument(std::string(who) + ": the model differs between ranks: " + message +
                              " (every rank must build the same model)");
}

// Throws std::logic_error on every rank unless every rank's parameters (and,
// when `buffers`, buffers) equal rank 0's bit for bit; the message names the
// first rank and entry that differ and the largest difference there. A
// layout that differs throws std::invalid_argument, as check_same_layout.
template <class Model>
void check_replicas_equal(const Communicator& comm, Model& model, bool buffers = true) {
  using T = typename Model::Scalar;
  const char* who = "momnet::distributed::check_replicas_equal";
  const auto entries = state_entries(model, true, buffers);
  check_same_layout(comm, entries, who);
  std::vector<std::uint64_t> mine(entries.size());
  std::uint64_t total = detail::fnv1a(nullptr, 0);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    mine[i] = detail::value_fingerprint(entries[i]);
    total = detail::fnv1a(&mine[i], sizeof mine[i], total);
  }
  const int differing = detail::first_rank_differing(comm.allgather(total, who), 0);
  if (differing < 0) return;
  std::vector<std::uint64_t> root_prints = mine;
  comm.broadcast(root_prints.data(), root_prints.size(), 0, who);
  std::uint64_t index = 0;
  if (comm.rank() == differing) {
    while (index < entries.size() && mine[index] == root_prints[index]) ++index;
  }
  comm.broadcast(&index, 1, differing, who);
  // Rank 0's values of that entry to everyone, for the size of the difference.
  const StateEntry<T>& e = entries[index];
  double largest = 0.0;
  if (e.integer != nullptr) {
    std::vector<std::int64_t> root_values(e.integer, e.integer + e.size());
    comm.broadcast(root_values.data(), root_values.size(), 0, who);
    for (std::size_t k = 0; k < e.size(); ++k) {
      largest = std::max(largest, std::fabs(static_cast<double>(e.integer[k] - root_values[k])));
    }
  } else {
    std::vector<T> root_values(e.real, e.real + e.size());
    comm.broadcast(root_values.data(), root_values.size(), 0, who);
    for (std::size_t k = 0; k < e.size(); ++k) {
      const double d = std::fabs(static_cast<double>(e.real[k]) - static_cast<double>(root_values[k]));
      largest = std::isnan(d) ? d : std::max(largest, d);  // NaN on one side only: say so
      if (std::isnan(largest)) break;
    }
  }
  comm.broadcast(&largest, 1, differing, who);
  char size[32];
  std::snprintf(size, sizeof size, "%.3g", largest);
  throw std::logic_error(std::string(who) + ": the replicas diverged: rank " + std::to_string(differing) + "'s " +
                         e.describe() + " differs from rank 0's (largest difference " + size +
                         "); the ranks did not apply the same updates");
}

}  // namespace momnet::distributed
