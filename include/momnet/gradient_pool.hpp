// Gradient buffers for a tape's nodes, recycled by size. A node's gradient is
// needed only until its own reverse step has run, so the tape hands it back
// here at once and the backward pass holds a few gradients at a time instead
// of one per node, as PyTorch's autograd does. Layers repeat, so sizes
// repeat, and a released buffer is soon taken again: the pool keeps what it
// was given (counted by the MemoryCounter as held) until trim() or its end.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "momnet/memory.hpp"

namespace momnet {

class GradientPool {
 public:
  explicit GradientPool(MemoryCounter& counter) noexcept : counter_(&counter) {}
  GradientPool(const GradientPool&) = delete;
  GradientPool& operator=(const GradientPool&) = delete;
  ~GradientPool() { trim(); }

  // A 64-byte aligned buffer of at least `bytes` bytes, uninitialised.
  void* acquire(std::size_t bytes) {
    const std::size_t size = round_up_to_alignment(bytes == 0 ? 1 : bytes);
    for (auto& [list_size, list] : free_) {
      if (list_size == size && !list.empty()) {
        void* p = list.back();
        list.pop_back();
        return p;
      }
    }
    return counter_->allocate(size);
  }

  // Gives back a buffer from acquire(bytes) for reuse.
  void release(void* pointer, std::size_t bytes) noexcept {
    if (pointer == nullptr) return;
    const std::size_t size = round_up_to_alignment(bytes == 0 ? 1 : bytes);
    try {
      for (auto& [list_size, list] : free_) {
        if (list_size == size) {
          list.push_back(pointer);
          return;
        }
      }
      free_.emplace_back(size, std::vector<void*>{pointer});
    } catch (...) {
      counter_->deallocate(pointer, size);  // no room to remember it: return it
    }
  }

  // Returns every free buffer to the counter.
  void trim() noexcept {
    for (auto& [size, list] : free_) {
      for (void* p : list) counter_->deallocate(p, size);
    }
    free_.clear();
  }

  // Bytes kept for reuse.
  std::size_t free_bytes() const noexcept {
    std::size_t total = 0;
    for (const auto& [size, list] : free_) total += size * list.size();
    return total;
  }

 private:
  MemoryCounter* counter_;
  std::vector<std::pair<std::size_t, std::vector<void*>>> free_;
};

}  // namespace momnet
