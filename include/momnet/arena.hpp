// A bump allocator with mark/rewind: the tape's values and gradients live
// here. Chunks come from a MemoryCounter and are kept after a rewind, so a
// loop that marks, records one block and rewinds reuses the same memory on
// every iteration instead of returning it to the system and faulting it in
// again. Chunks double from 64 KiB up to a maximum (4 MiB by default): a small
// tape stays small, and a large one wastes little at the end of each chunk.
//
// A ChunkCache carries chunks from one arena (one tape) to the next: a training
// loop that builds a new Tape per step then allocates nothing after its first
// step, instead of taking its chunks from the system and page-faulting them in
// on every step (chunks above glibc's mmap threshold are mapped and unmapped
// each time).
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <mutex>
#include <new>
#include <vector>

#include "momnet/memory.hpp"

namespace momnet {

// Chunks that arenas gave back, kept for the next arena that draws from this
// cache. The user owns it (there is no global cache) and it must outlive
// every arena (tape) that uses it. Cached chunks are not counted by any
// MemoryCounter: an arena's counter counts a chunk from the moment the arena
// takes it until it gives it back, so peak and current bytes read the same
// with or without a cache. Safe to share between threads.
class ChunkCache {
 public:
  // Keeps at most `max_bytes` of chunks (beyond that, given-back chunks are freed).
  explicit ChunkCache(std::size_t max_bytes = std::numeric_limits<std::size_t>::max()) : max_bytes_(max_bytes) {}
  ChunkCache(const ChunkCache&) = delete;
  ChunkCache& operator=(const ChunkCache&) = delete;
  ~ChunkCache() { clear(); }

  // Bytes held for reuse, and how many chunks.
  std::size_t bytes() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return bytes_;
  }
  std::size_t chunk_count() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return chunks_.size();
  }
  std::size_t max_bytes() const noexcept { return max_bytes_; }

  // Frees every cached chunk.
  void clear() noexcept {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& entry : chunks_) ::operator delete(entry.data, std::align_val_t{buffer_alignment});
    chunks_.clear();
    bytes_ = 0;
  }

  // The smallest cached chunk of at least `bytes` (its size in *size), or null.
  void* take(std::size_t bytes, std::size_t* size) noexcept {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::size_t best = chunks_.size();
    for (std::size_t i = 0; i < chunks_.size(); ++i) {
      if (chunks_[i].size >= bytes && (best == chunks_.size() || chunks_[i].size < chunks_[best].size)) best = i;
    }
    if (best == chunks_.size()) return nullptr;
    const Entry entry = chunks_[best];
    chunks_[best] = chunks_.back();
    chunks_.pop_back();
    bytes_ -= entry.size;
    *size = entry.size;
    return entry.data;
  }

  // Keeps a chunk (from ::operator new with the buffer alignment) of `size`
  // bytes, or frees it when the cache is full.
  void give(void* data, std::size_t size) noexcept {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (size <= max_bytes_ - bytes_) {
        try {
          chunks_.push_back(Entry{data, size});
          bytes_ += size;
          return;
        } catch (...) {  // no memory for the bookkeeping: free the chunk instead
        }
      }
    }
    ::operator delete(data, std::align_val_t{buffer_alignment});
  }

 private:
  struct Entry {
    void* data;
    std::size_t size;
  };

  mutable std::mutex mutex_;
  std::vector<Entry> chunks_;
  std::size_t bytes_ = 0;
  std::size_t max_bytes_;
};

class Arena {
 public:
  // Where the arena stood; rewind(mark) releases everything allocated since.
  struct Mark {
    std::size_t chunk = 0;
    std::size_t offset = 0;
    std::size_t large = 0;  // large allocations held (see allocate)
  };

  static constexpr std::size_t first_chunk_bytes = std::size_t{64} << 10;
  static constexpr std::size_t default_max_chunk_bytes = std::size_t{4} << 20;

  // Requests larger than an eighth of max_chunk_bytes (and than the first
  // chunk) get a buffer of their own, beside the chunks: placed in a chunk, such a request would strand up
  // to its size at the end of the chunk it does not fit (a quarter of every
  // 4 MiB chunk for 1 MiB activations). With a
  // `cache`, chunks come from it when it holds one large enough and go back to
  // it on release() (and destruction) instead of to the system.
  explicit Arena(MemoryCounter& counter, std::size_t max_chunk_bytes = default_max_chunk_bytes,
                 ChunkCache* cache = nullptr)
      : counter_(&counter),
        cache_(cache),
        max_chunk_bytes_(round_up_to_alignment(std::clamp<std::size_t>(max_chunk_bytes, 1, max_allocation_bytes))),
        chunks_(CountingAllocator<Chunk>(counter)), large_(CountingAllocator<Chunk>(counter)) {}
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { release(); }

  // Uninitialised, 64-byte aligned storage for `bytes` bytes.
  void* allocate(std::size_t bytes) {
    check_allocation_size(bytes, "momnet::Arena::allocate");
    const std::size_t rounded = round_up_to_alignment(bytes == 0 ? 1 : bytes);
    if (rounded > std::max(max_chunk_bytes_ / 8, first_chunk_bytes)) return allocate_large(rounded);
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
        give_back(chunk);
        chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(chunk_));
        continue;
      }
      ++chunk_;
      offset_ = 0;
    }
    const std::size_t grown = chunks_.empty() ? first_chunk_bytes : 2 * chunks_.back().size;
    std::size_t size = std::max(rounded, std::min(grown, max_chunk_bytes_));
    // Room first: once the chunk is taken, push_back must not throw.
    if (chunks_.size() == chunks_.capacity()) chunks_.reserve(2 * chunks_.size() + 4);
    std::byte* data = take_chunk(&size);
    chunks_.push_back(Chunk{data, size, rounded});
    chunk_ = chunks_.size() - 1;
    offset_ = rounded;
    in_use_ += rounded;
    return chunks_.back().data;
  }

  Mark mark() const noexcept { return Mark{chunk_, offset_, large_count_}; }

  // Releases (for reuse) everything allocated after `mark`.
  void rewind(const Mark& mark) noexcept {
    for (std::size_t c = mark.chunk; c <= chunk_ && c < chunks_.size(); ++c) {
      const std::size_t keep = c == mark.chunk ? mark.offset : 0;
      in_use_ -= chunks_[c].used - keep;
      chunks_[c].used = keep;
    }
    chunk_ = mark.chunk;
    offset_ = mark.offset;
    for (std::size_t i = mark.large; i < large_count_ && i < large_.size(); ++i) in_use_ -= large_[i].used;
    large_count_ = std::min(large_count_, mark.large);
  }

  // Returns every chunk to the counter (or the cache); the arena starts empty again.
  void release() noexcept {
    for (Chunk& chunk : chunks_) give_back(chunk);
    for (Chunk& buffer : large_) give_back(buffer);
    chunks_.clear();
    large_.clear();
    large_count_ = 0;
    chunk_ = 0;
    offset_ = 0;
    in_use_ = 0;
  }

  // Bytes handed out and not yet rewound (chunks held may be more).
  std::size_t bytes_in_use() const noexcept { return in_use_; }
  ChunkCache* cache() const noexcept { return cache_; }

 private:
  struct Chunk {
    std::byte* data;
    std::size_t size;
    std::size_t used;  // bytes handed out from this chunk
  };

  // A request of its own buffer. Buffers stay after a rewind, like chunks, and
  // serve the same sequence of requests on the next pass; one too small for
  // the request in its place is replaced.
  void* allocate_large(std::size_t rounded) {
    if (large_count_ < large_.size()) {
      Chunk& kept = large_[large_count_];
      if (kept.size >= rounded) {
        kept.used = rounded;
        ++large_count_;
        in_use_ += rounded;
        return kept.data;
      }
      give_back(kept);
      large_.erase(large_.begin() + static_cast<std::ptrdiff_t>(large_count_));
    }
    // Room first: once the buffer is taken, the insertion must not throw.
    if (large_.size() == large_.capacity()) large_.reserve(2 * large_.size() + 4);
    std::size_t size = rounded;
    std::byte* data = take_chunk(&size);
    large_.insert(large_.begin() + static_cast<std::ptrdiff_t>(large_count_), Chunk{data, size, rounded});
    ++large_count_;
    in_use_ += rounded;
    return data;
  }

  // A chunk of at least *size bytes, from the cache when it has one (*size
  // becomes its size), else newly allocated.
  std::byte* take_chunk(std::size_t* size) {
    if (cache_ != nullptr) {
      std::size_t cached = 0;
      if (void* data = cache_->take(*size, &cached)) {
        counter_->adopt(cached);
        *size = cached;
        return static_cast<std::byte*>(data);
      }
    }
    return static_cast<std::byte*>(counter_->allocate(*size));
  }

  void give_back(const Chunk& chunk) noexcept {
    if (cache_ == nullptr) {
      counter_->deallocate(chunk.data, chunk.size);
    } else {
      counter_->disown(chunk.size);
      cache_->give(chunk.data, chunk.size);
    }
  }

  MemoryCounter* counter_;
  ChunkCache* cache_;
  std::size_t max_chunk_bytes_;
  std::vector<Chunk, CountingAllocator<Chunk>> chunks_;
  std::vector<Chunk, CountingAllocator<Chunk>> large_;  // the first large_count_ are in use
  std::size_t large_count_ = 0;
  std::size_t chunk_ = 0;
  std::size_t offset_ = 0;
  std::size_t in_use_ = 0;
};

}  // namespace momnet
