// Counted, 64-byte aligned memory: every buffer momnet allocates goes through
// a MemoryCounter so that current and peak bytes can be read by tests,
// benchmarks and users. There is no global counter: a Tape owns one (or
// shares the one you give it), and stand-alone buffers take one explicitly.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace momnet {

// Every buffer is aligned to 64 bytes. Eigen peels unaligned heads of a loop
// onto a scalar path whose rounding can differ from its SIMD path (tanh, exp);
// aligning everything alike makes a computation repeat bit for bit, which the
// exact memory-free backward relies on.
inline constexpr std::size_t buffer_alignment = 64;

inline constexpr std::size_t round_up_to_alignment(std::size_t bytes) noexcept {
  return (bytes + buffer_alignment - 1) / buffer_alignment * buffer_alignment;
}

// Bytes currently held and the high-water mark since the last reset_peak().
class MemoryCounter {
 public:
  MemoryCounter() = default;
  MemoryCounter(const MemoryCounter&) = delete;
  MemoryCounter& operator=(const MemoryCounter&) = delete;

  std::size_t current_bytes() const noexcept { return current_; }
  std::size_t peak_bytes() const noexcept { return peak_; }
  std::size_t allocation_count() const noexcept { return allocations_; }

  // Starts a new measurement window: the peak becomes what is held now.
  void reset_peak() noexcept { peak_ = current_; }

  void* allocate(std::size_t bytes) {
    const std::size_t rounded = round_up_to_alignment(std::max<std::size_t>(bytes, 1));
    void* pointer = ::operator new(rounded, std::align_val_t{buffer_alignment});
    current_ += rounded;
    peak_ = std::max(peak_, current_);
    ++allocations_;
    return pointer;
  }

  void deallocate(void* pointer, std::size_t bytes) noexcept {
    if (pointer == nullptr) return;
    const std::size_t rounded = round_up_to_alignment(std::max<std::size_t>(bytes, 1));
    ::operator delete(pointer, std::align_val_t{buffer_alignment});
    current_ -= rounded;
  }

 private:
  std::size_t current_ = 0;
  std::size_t peak_ = 0;
  std::size_t allocations_ = 0;
};

// A standard allocator over a MemoryCounter, for the library's containers.
template <class T>
class CountingAllocator {
 public:
  using value_type = T;

  explicit CountingAllocator(MemoryCounter& counter) noexcept : counter_(&counter) {}
  template <class U>
  CountingAllocator(const CountingAllocator<U>& other) noexcept : counter_(other.counter()) {}

  T* allocate(std::size_t count) { return static_cast<T*>(counter_->allocate(count * sizeof(T))); }
  void deallocate(T* pointer, std::size_t count) noexcept {
    counter_->deallocate(pointer, count * sizeof(T));
  }
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
    if (counter != nullptr) return static_cast<T*>(counter->allocate(size * sizeof(T)));
    return static_cast<T*>(::operator new(round_up_to_alignment(size * sizeof(T)),
                                          std::align_val_t{buffer_alignment}));
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
