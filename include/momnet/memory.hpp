// Counted, 64-byte aligned memory: every buffer momnet allocates goes through
// a MemoryCounter so that current and peak bytes can be read by tests,
// benchmarks and users. There is no global counter: a Tape owns one (or
// shares the one you give it), and stand-alone buffers take one explicitly.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

namespace momnet {

// Every buffer is aligned to 64 bytes. Eigen peels unaligned heads of a loop
// onto a scalar path whose rounding can differ from its SIMD path (tanh, exp);
// aligning everything alike makes a computation repeat bit for bit, which the
// exact memory-free backward relies on.
inline constexpr std::size_t buffer_alignment = 64;

// The largest request momnet passes to operator new: PTRDIFF_MAX rounded down
// to the alignment, so that a size, its rounding up and a pointer difference
// never wrap.
inline constexpr std::size_t max_allocation_bytes =
    static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / buffer_alignment * buffer_alignment;

// `bytes` rounded up to the alignment; only for bytes <= max_allocation_bytes
// (allocate() checks that first: above it the sum would wrap).
inline constexpr std::size_t round_up_to_alignment(std::size_t bytes) noexcept {
  return (bytes + buffer_alignment - 1) / buffer_alignment * buffer_alignment;
}

namespace detail {
[[noreturn]] inline void throw_too_large(const char* who, std::size_t count, std::size_t element_bytes) {
  const std::string what = element_bytes == 1 ? std::to_string(count) + " bytes"
                                              : std::to_string(count) + " elements of " +
                                                    std::to_string(element_bytes) + " bytes";
  throw std::length_error(std::string(who) + ": " + what + " exceed the largest allocation (" +
                          std::to_string(max_allocation_bytes) + " bytes)");
}
}  // namespace detail

// Throws std::length_error unless `bytes` can be allocated at all.
inline void check_allocation_size(std::size_t bytes, const char* who) {
  if (bytes > max_allocation_bytes) detail::throw_too_large(who, bytes, 1);
}

// count * element_bytes, or std::length_error when the product would exceed
// max_allocation_bytes (instead of wrapping to a small number).
inline std::size_t array_bytes(std::size_t count, std::size_t element_bytes, const char* who) {
  if (element_bytes != 0 && count > max_allocation_bytes / element_bytes) {
    detail::throw_too_large(who, count, element_bytes);
  }
  return count * element_bytes;
}

// Bytes currently held and the high-water mark since the last reset_peak().
// Safe to share between threads (tapes on several threads counting into one
// counter): the counts are atomic, updated with relaxed ordering (they order
// nothing else), the peak by a compare-and-swap loop. Allocation goes through
// the arena in large chunks, so the atomics cost nothing measurable.
class MemoryCounter {
 public:
  MemoryCounter() = default;
  MemoryCounter(const MemoryCounter&) = delete;
  MemoryCounter& operator=(const MemoryCounter&) = delete;

  std::size_t current_bytes() const noexcept { return current_.load(std::memory_order_relaxed); }
  std::size_t peak_bytes() const noexcept { return peak_.load(std::memory_order_relaxed); }
  std::size_t allocation_count() const noexcept { return allocations_.load(std::memory_order_relaxed); }

  // Starts a new measurement window: the peak becomes what is held now.
  void reset_peak() noexcept { peak_.store(current_bytes(), std::memory_order_relaxed); }

  void* allocate(std::size_t bytes) {
    check_allocation_size(bytes, "momnet::MemoryCounter::allocate");
    const std::size_t rounded = round_up_to_alignment(std::max<std::size_t>(bytes, 1));
    void* pointer = ::operator new(rounded, std::align_val_t{buffer_alignment});
    add(rounded);
    allocations_.fetch_add(1, std::memory_order_relaxed);
    return pointer;
  }

  void deallocate(void* pointer, std::size_t bytes) noexcept {
    if (pointer == nullptr) return;
    ::operator delete(pointer, std::align_val_t{buffer_alignment});
    subtract(round_up_to_alignment(std::max<std::size_t>(bytes, 1)));
  }

  // Counts `bytes` (a multiple of the alignment) taken over from, or handed
  // back to, memory that stays allocated elsewhere (a ChunkCache).
  void adopt(std::size_t bytes) noexcept { add(bytes); }
  void disown(std::size_t bytes) noexcept { subtract(bytes); }

 private:
  void add(std::size_t bytes) noexcept {
    const std::size_t now = current_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::size_t peak = peak_.load(std::memory_order_relaxed);
    while (peak < now && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }
  void subtract(std::size_t bytes) noexcept { current_.fetch_sub(bytes, std::memory_order_relaxed); }

  std::atomic<std::size_t> current_{0};
  std::atomic<std::size_t> peak_{0};
  std::atomic<std::size_t> allocations_{0};
};

// A standard allocator over a MemoryCounter, for the library's containers.
template <class T>
class CountingAllocator {
 public:
  using value_type = T;

  explicit CountingAllocator(MemoryCounter& counter) noexcept : counter_(&counter) {}
  template <class U>
  CountingAllocator(const CountingAllocator<U>& other) noexcept : counter_(other.counter()) {}

  T* allocate(std::size_t count) {
    if (count > max_size()) throw std::bad_array_new_length();
    return static_cast<T*>(counter_->allocate(count * sizeof(T)));
  }
  void deallocate(T* pointer, std::size_t count) noexcept {
    counter_->deallocate(pointer, count * sizeof(T));
  }
  // The most elements one allocation may hold (std::vector checks it first).
  std::size_t max_size() const noexcept { return max_allocation_bytes / sizeof(T); }
  MemoryCounter* counter() const noexcept { return counter_; }

  template <class U>
  bool operator==(const CountingAllocator<U>& other) const noexcept {
    return counter_ == other.counter();
  }
  template <class U>
  bool operator!=(const CountingAllocator<U>& other) const noexcept {
    return !(*this == other);
  }

 private:
  MemoryCounter* counter_;
};

// An owning, 64-byte aligned array of trivially copyable elements, counted by
// `counter` when one is given. Copies are deep and count into the same counter.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t size, MemoryCounter* counter = nullptr)
      : counter_(counter), size_(size), data_(acquire(size, counter)) {}
  Buffer(const Buffer& other)
      : counter_(other.counter_), size_(other.size_), data_(acquire(other.size_, other.counter_)) {
    if (size_ != 0) std::memcpy(data_, other.data_, size_ * sizeof(T));
  }
  Buffer(Buffer&& other) noexcept
      : counter_(std::exchange(other.counter_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        data_(std::exchange(other.data_, nullptr)) {}
  Buffer& operator=(Buffer other) noexcept {
    swap(other);
    return *this;
  }
  ~Buffer() { release(data_, size_, counter_); }

  void swap(Buffer& other) noexcept {
    std::swap(counter_, other.counter_);
    std::swap(size_, other.size_);
    std::swap(data_, other.data_);
  }

  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return size_ == 0 ? 0 : round_up_to_alignment(size_ * sizeof(T)); }
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  static T* acquire(std::size_t size, MemoryCounter* counter) {
    if (size == 0) return nullptr;
    const std::size_t bytes = array_bytes(size, sizeof(T), "momnet::Buffer");
    if (counter != nullptr) return static_cast<T*>(counter->allocate(bytes));
    return static_cast<T*>(::operator new(round_up_to_alignment(bytes), std::align_val_t{buffer_alignment}));
  }
  static void release(T* data, std::size_t size, MemoryCounter* counter) noexcept {
    if (data == nullptr) return;
    if (counter != nullptr) {
      counter->deallocate(data, size * sizeof(T));
    } else {
      ::operator delete(data, std::align_val_t{buffer_alignment});
    }
  }

  MemoryCounter* counter_ = nullptr;
  std::size_t size_ = 0;
  T* data_ = nullptr;
};

}  // namespace momnet
