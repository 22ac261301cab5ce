// Hardening (issue 9): size arithmetic that must throw instead of wrapping,
// a memory counter shared between threads, exact peaks instead of checks
// that hold by construction, and the chunk cache that lets a new tape per
// training step reuse the previous tape's memory.
#include <catch2/catch.hpp>

#include <momnet/arena.hpp>
#include <momnet/layers/linear.hpp>
#include <momnet/memory.hpp>
#include <momnet/parameter.hpp>
#include <momnet/tensor.hpp>

#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace momnet;

namespace {

constexpr std::size_t size_max = std::numeric_limits<std::size_t>::max();

}  // namespace

TEST_CASE("Byte counts that would wrap throw instead of allocating a small buffer", "[memory][hardening]") {
  MemoryCounter counter;
  // count * sizeof(T) wraps to 0 for 2^61 doubles and 2^62 floats; so does the
  // alignment round-up of a size near SIZE_MAX.
  CHECK_THROWS_AS(Buffer<double>(std::size_t{1} << 61, &counter), std::length_error);
  CHECK_THROWS_AS(Buffer<float>(std::size_t{1} << 62), std::length_error);
  CHECK_THROWS_AS(Buffer<std::uint64_t>(size_max / 4, &counter), std::length_error);
  CHECK_THROWS_AS(counter.allocate(size_max), std::length_error);
  CHECK_THROWS_AS(counter.allocate(size_max - 62), std::length_error);
  CHECK_THROWS_AS(counter.allocate(max_allocation_bytes + 1), std::length_error);
  CHECK_THROWS_WITH(counter.allocate(size_max), Catch::Contains("exceed the largest allocation"));
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.allocation_count() == 0);

  // The library's containers: the allocator refuses a count whose bytes wrap,
  // and a vector over it knows its maximum size.
  CountingAllocator<double> allocator(counter);
  CHECK_THROWS_AS(allocator.allocate(std::size_t{1} << 61), std::bad_alloc);
  CHECK(allocator.max_size() == max_allocation_bytes / sizeof(double));
  std::vector<double, CountingAllocator<double>> values(allocator);
  CHECK_THROWS_AS(values.reserve(std::size_t{1} << 61), std::length_error);
  CHECK(counter.current_bytes() == 0);

  // The arena's round-up of a request near SIZE_MAX.
  Arena arena(counter);
  CHECK_THROWS_AS(arena.allocate(size_max - 10), std::length_error);
  CHECK_THROWS_AS(arena.allocate(size_max), std::length_error);
  CHECK(counter.current_bytes() == 0);
  Arena unbounded(counter, size_max);  // a maximum chunk size near SIZE_MAX does not wrap to 0
  CHECK(unbounded.allocate(100) != nullptr);
  CHECK(unbounded.bytes_in_use() == 128);
}

TEST_CASE("Tensors, parameters and layers too large to address throw", "[memory][hardening]") {
  const Eigen::Index two_62 = Eigen::Index{1} << 62;
  CHECK_THROWS_AS(Tensor<float>(Shape{two_62}), std::length_error);
  CHECK_THROWS_AS(Tensor<double>(Shape{Eigen::Index{1} << 32, Eigen::Index{1} << 32}), std::length_error);
  CHECK_THROWS_AS(Parameter<float>(Shape{two_62}), std::length_error);
  Rng rng(1);
  CHECK_THROWS_AS(Linear<float>(Eigen::Index{1} << 31, Eigen::Index{1} << 31, rng), std::length_error);
  // The largest shape allowed still has a byte count that does not wrap.
  CHECK_NOTHROW(array_bytes(static_cast<std::size_t>(Shape::max_size), sizeof(double), "test"));
}

TEST_CASE("The peak is exact: the largest sum held at once, not just at least the current bytes",
          "[memory][hardening]") {
  MemoryCounter counter;
  void* a = counter.allocate(100);    // 128
  void* b = counter.allocate(1000);   // 1024
  CHECK(counter.peak_bytes() == 1152);
  counter.deallocate(b, 1000);
  void* c = counter.allocate(64);     // 64: below the old peak
  CHECK(counter.current_bytes() == 192);
  CHECK(counter.peak_bytes() == 1152);
  counter.reset_peak();
  CHECK(counter.peak_bytes() == 192);
  void* d = counter.allocate(1);      // 64
  CHECK(counter.peak_bytes() == 256);
  counter.deallocate(a, 100);
  counter.deallocate(c, 64);
  counter.deallocate(d, 1);
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.peak_bytes() == 256);
  CHECK(counter.allocation_count() == 4);

  // An arena's peak: its first chunk, then a large value in a buffer of its
  // own, plus the storage of the two lists that hold them.
  MemoryCounter arena_counter;
  {
    Arena arena(arena_counter);
    arena.allocate(8);
    const std::size_t list = arena_counter.current_bytes() - Arena::first_chunk_bytes;
    CHECK(list > 0);
    CHECK(arena_counter.peak_bytes() == Arena::first_chunk_bytes + list);
    arena.allocate(300 * 1000 * sizeof(double));
    CHECK(arena_counter.peak_bytes() == arena_counter.current_bytes());
    // The second list holds one entry, as the first did after one chunk.
    CHECK(arena_counter.current_bytes() - 2 * list == Arena::first_chunk_bytes + 2400000);
  }
  CHECK(arena_counter.current_bytes() == 0);
  CHECK(arena_counter.peak_bytes() >= Arena::first_chunk_bytes + 2400000);
  CHECK(arena_counter.peak_bytes() < Arena::first_chunk_bytes + 2400000 + 1024);
}

TEST_CASE("Threads sharing one MemoryCounter keep exact counts", "[memory][threads]") {
  MemoryCounter counter;
  constexpr int rounds = 20000;
  const auto work = [&counter] {
    for (int i = 0; i < rounds; ++i) {
      void* p = counter.allocate(64);
      void* q = counter.allocate(128);
      counter.deallocate(p, 64);
      counter.deallocate(q, 128);
    }
  };
  std::thread first(work), second(work);
  first.join();
  second.join();
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.allocation_count() == 4 * static_cast<std::size_t>(rounds));
  // Each thread holds at most 192 bytes at once.
  CHECK(counter.peak_bytes() >= 192);
  CHECK(counter.peak_bytes() <= 2 * 192);
}

TEST_CASE("Arenas on two threads counting into one counter", "[memory][threads]") {
  MemoryCounter counter;
  ChunkCache cache;
  const auto work = [&counter, &cache] {
    for (int i = 0; i < 200; ++i) {
      Arena arena(counter, Arena::default_max_chunk_bytes, i % 2 == 0 ? &cache : nullptr);
      for (int j = 0; j < 20; ++j) arena.allocate(std::size_t{16} << 10);
    }
  };
  std::thread first(work), second(work);
  first.join();
  second.join();
  CHECK(counter.current_bytes() == 0);
  CHECK(cache.bytes() > 0);
}

TEST_CASE("A ChunkCache carries an arena's chunks to the next arena", "[memory][arena]") {
  MemoryCounter counter;
  ChunkCache cache;
  const auto one_step = [&](std::size_t* counted_peak) {
    counter.reset_peak();
    Arena arena(counter, Arena::default_max_chunk_bytes, &cache);
    for (int i = 0; i < 40; ++i) arena.allocate(std::size_t{100} << 10);  // 4 MB over growing chunks
    arena.allocate(std::size_t{10} << 20);  // larger than a chunk: a chunk of its own
    *counted_peak = counter.peak_bytes();
  };
  std::size_t first_peak = 0;
  one_step(&first_peak);
  // The chunks went to the cache, not to the system, and the counter no
  // longer counts them.
  CHECK(counter.current_bytes() == 0);
  const std::size_t cached = cache.bytes();
  const std::size_t chunks = cache.chunk_count();
  CHECK(cached > (std::size_t{14} << 20));
  const std::size_t allocations = counter.allocation_count();

  // The second arena takes every chunk from the cache: no new allocation but
  // the chunk list's own storage, and the same counted peak.
  std::size_t second_peak = 0;
  one_step(&second_peak);
  CHECK(second_peak == first_peak);
  CHECK(counter.allocation_count() - allocations <= 3);
  CHECK(cache.bytes() == cached);
  CHECK(cache.chunk_count() == chunks);

  // A cache with a limit keeps no more than it.
  ChunkCache small(std::size_t{1} << 20);
  {
    Arena arena(counter, Arena::default_max_chunk_bytes, &small);
    for (int i = 0; i < 40; ++i) arena.allocate(std::size_t{100} << 10);
  }
  CHECK(small.bytes() <= (std::size_t{1} << 20));
  CHECK(counter.current_bytes() == 0);
  cache.clear();
  CHECK(cache.bytes() == 0);
  CHECK(cache.chunk_count() == 0);
}

TEST_CASE("With a ChunkCache, an arena still replaces a kept chunk too small for a request", "[memory][arena]") {
  MemoryCounter counter;
  ChunkCache cache;
  {
    Arena arena(counter, Arena::default_max_chunk_bytes, &cache);
    arena.allocate(1000);
  }
  REQUIRE(cache.chunk_count() == 1);
  Arena arena(counter, Arena::default_max_chunk_bytes, &cache);
  const Arena::Mark start = arena.mark();
  arena.allocate(1000);  // the cached 64 KiB chunk
  CHECK(cache.chunk_count() == 0);
  arena.rewind(start);
  // Too large for it (but not a large request, which would get a buffer of
  // its own): the small chunk goes back.
  void* big = arena.allocate(std::size_t{300} << 10);
  CHECK(big != nullptr);
  CHECK(cache.chunk_count() == 1);
  CHECK(arena.bytes_in_use() == (std::size_t{300} << 10));
}
