// A bump allocator with mark/rewind: the tape's values and gradients live
// here. Chunks come from a MemoryCounter and are kept after a rewind, so a
// loop that marks, records one block and rewinds reuses the same memory on
// every iteration instead of returning it to the system and faulting it in
// again. Chunks double from 64 KiB up to a maximum (4 MiB by default): a small
// tape stays small, and a large one wastes little at the end of each chunk.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "momnet/memory.hpp"

namespace momnet {

class Arena {
 public:
  // Where the arena stood; rewind(mark) releases everything allocated since.
  struct Mark {
    std::size_t chunk = 0;
    std::size_t offset = 0;
  };

  static constexpr std::size_t first_chunk_bytes = std::size_t{64} << 10;
  static constexpr std::size_t default_max_chunk_bytes = std::size_t{4} << 20;

  // Requests larger than max_chunk_bytes get a chunk of their own.
  explicit Arena(MemoryCounter& counter, std::size_t max_chunk_bytes = default_max_chunk_bytes)
      : counter_(&counter),
        max_chunk_bytes_(round_up_to_alignment(max_chunk_bytes == 0 ? 1 : max_chunk_bytes)),
        chunks_(CountingAllocator<Chunk>(counter)) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { release(); }

  // Uninitialised, 64-byte aligned storage for `bytes` bytes.
  void* allocate(std::size_t bytes) {
    const std::size_t rounded = round_up_to_alignment(bytes == 0 ? 1 : bytes);
    while (chunk_ < chunks_.size()) {
      Chunk& chunk = chunks_[chunk_];
      if (chunk.size - offset_ >= rounded) {
        void* pointer = chunk.data + offset_;
        offset_ += rounded;
        chunk.used = offset_;
        in_use_ += rounded;
        return pointer;
      }
      // A kept chunk too small for this request is replaced rather than
      // skipped, so reuse never strands memory past the current position.
      if (offset_ == 0) {
        counter_->deallocate(chunk.data, chunk.size);
        chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(chunk_));
        continue;
      }
      ++chunk_;
      offset_ = 0;
    }
    const std::size_t grown = chunks_.empty() ? first_chunk_bytes : 2 * chunks_.back().size;
    const std::size_t size = std::max(rounded, std::min(grown, max_chunk_bytes_));
    chunks_.push_back(Chunk{static_cast<std::byte*>(counter_->allocate(size)), size, rounded});
    chunk_ = chunks_.size() - 1;
    offset_ = rounded;
    in_use_ += rounded;
    return chunks_.back().data;
  }

  Mark mark() const noexcept { return Mark{chunk_, offset_}; }

  // Releases (for reuse) everything allocated after `mark`.
  void rewind(const Mark& mark) noexcept {
    for (std::size_t c = mark.chunk; c <= chunk_ && c < chunks_.size(); ++c) {
      const std::size_t keep = c == mark.chunk ? mark.offset : 0;
      in_use_ -= chunks_[c].used - keep;
      chunks_[c].used = keep;
    }
    chunk_ = mark.chunk;
    offset_ = mark.offset;
  }

  // Returns every chunk to the counter; the arena starts empty again.
  void release() noexcept {
    for (Chunk& chunk : chunks_) counter_->deallocate(chunk.data, chunk.size);
    chunks_.clear();
    chunk_ = 0;
    offset_ = 0;
    in_use_ = 0;
  }

  // Bytes handed out and not yet rewound (chunks held may be more).
  std::size_t bytes_in_use() const noexcept { return in_use_; }

 private:
  struct Chunk {
    std::byte* data;
    std::size_t size;
    std::size_t used;  // bytes handed out from this chunk
  };

  MemoryCounter* counter_;
  std::size_t max_chunk_bytes_;
  std::vector<Chunk, CountingAllocator<Chunk>> chunks_;
  std::size_t chunk_ = 0;
  std::size_t offset_ = 0;
  std::size_t in_use_ = 0;
};

}  // namespace momnet
