// The tape and its memory: counted buffers, the arena, recording, backward
// (scalar, seeded, repeated, nested), no-grad scopes, mark/rewind, and the
// errors of misuse.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>

#include "support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <typeinfo>
#include <vector>

namespace {

using momnet::Arena;
using momnet::Buffer;
using momnet::MemoryCounter;
using momnet::Parameter;
using momnet::Shape;
using momnet::Tape;
using momnet::TapeScope;
using momnet::Tensor;
using momnet::Var;
using Matrix = Eigen::MatrixXd;


bool aligned64(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; }

Matrix matrix(Eigen::Index rows, Eigen::Index cols, std::initializer_list<double> list) {
  REQUIRE(static_cast<Eigen::Index>(list.size()) == rows * cols);
  Matrix m(rows, cols);
  auto it = list.begin();
  for (Eigen::Index i = 0; i < rows; ++i) {
    for (Eigen::Index j = 0; j < cols; ++j) m(i, j) = *it++;
  }
  return m;
}

// tanh(2 x) recorded as ONE node that keeps only its output (a checkpoint):
// its backward step re-records the computation in a nested scope, walks it
// with backward_from and rewinds it. With `prepare`, it calls gradient_for(x)
// before the nested scope, as backward_from requires.
Var<double> checkpointed_tanh2(const Var<double>& x, bool prepare) {
  Tape<double>& tape = x.tape();
  const Shape shape = x.shape();
  double* out = tape.allocate(shape.size());
  {
    TapeScope<double> scope(tape);
    Tape<double>::NoGradScope no_grad(tape);
    const Var<double> inner = momnet::tanh(momnet::scale(x, 2.0));
    std::copy(inner.data(), inner.data() + shape.size(), out);
  }
  return tape.record(shape, out, {x}, [x, prepare](const double* g) {
    Tape<double>& t = x.tape();
    if (prepare) t.gradient_for(x);
    TapeScope<double> scope(t);
    const Var<double> inner = momnet::tanh(momnet::scale(x, 2.0));
    t.backward_from(inner, g, scope.mark());
  });
}

}  // namespace

// ---- memory -------------------------------------------------------------------

TEST_CASE("MemoryCounter tracks current and peak bytes and allocations", "[tape][memory]") {
  MemoryCounter counter;
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.peak_bytes() == 0);
  CHECK(counter.allocation_count() == 0);

  void* a = counter.allocate(1);    // rounded up to 64
  void* b = counter.allocate(100);  // rounded up to 128
  CHECK(aligned64(a));
  CHECK(aligned64(b));
  CHECK(counter.current_bytes() == 192);
  CHECK(counter.peak_bytes() == 192);
  CHECK(counter.allocation_count() == 2);

  counter.deallocate(b, 100);
  CHECK(counter.current_bytes() == 64);
  CHECK(counter.peak_bytes() == 192);  // the high-water mark stays

  counter.reset_peak();  // a new window starts at what is held now
  CHECK(counter.peak_bytes() == 64);
  void* c = counter.allocate(0);  // zero bytes still take one aligned block
  CHECK(counter.current_bytes() == 128);
  CHECK(counter.peak_bytes() == 128);
  counter.deallocate(c, 0);
  counter.deallocate(a, 1);
  counter.deallocate(nullptr, 1000);  // ignored
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.peak_bytes() == 128);
  CHECK(counter.allocation_count() == 3);
}

TEST_CASE("CountingAllocator counts a container's storage", "[tape][memory]") {
  MemoryCounter counter;
  MemoryCounter other;
  {
    std::vector<double, momnet::CountingAllocator<double>> v{momnet::CountingAllocator<double>(counter)};
    v.reserve(100);
    CHECK(counter.current_bytes() == 832);  // 800 rounded up to 13 * 64
    CHECK(v.get_allocator() == momnet::CountingAllocator<double>(counter));
    CHECK(v.get_allocator() != momnet::CountingAllocator<double>(other));
    CHECK(momnet::CountingAllocator<int>(v.get_allocator()).counter() == &counter);
  }
  CHECK(counter.current_bytes() == 0);
  CHECK(counter.peak_bytes() == 832);
}

TEST_CASE("Buffer copies count into the same counter, moves do not", "[tape][memory]") {
  MemoryCounter counter;
  {
    Buffer<double> a(10, &counter);  // 80 bytes -> 128
    CHECK(a.size() == 10);
    CHECK(a.bytes() == 128);
    CHECK(aligned64(a.data()));
    CHECK(counter.current_bytes() == 128);
    for (std::size_t i = 0; i < 10; ++i) a[i] = static_cast<double>(i);

    Buffer<double> copy(a);
    CHECK(counter.current_bytes() == 256);
    CHECK(counter.allocation_count() == 2);
    CHECK(copy.data() != a.data());
    CHECK(copy[7] == 7.0);

    Buffer<double> moved(std::move(copy));
    CHECK(counter.current_bytes() == 256);
    CHECK(counter.allocation_count() == 2);
    CHECK(moved[7] == 7.0);
    CHECK(copy.size() == 0);  // NOLINT: a moved-from buffer is empty
    CHECK(copy.data() == nullptr);

    Buffer<double> assigned(3, &counter);  // 24 bytes -> 64
    CHECK(counter.current_bytes() == 320);
    assigned = a;  // a deep copy replaces the old storage
    CHECK(counter.current_bytes() == 384);
    CHECK(assigned.size() == 10);
    CHECK(assigned[9] == 9.0);
    assigned = std::move(moved);  // the old storage is released
    CHECK(counter.current_bytes() == 256);
    CHECK(counter.allocation_count() == 4);

    Buffer<double> uncounted(10);  // no counter: not counted
    Buffer<double> uncounted_copy(uncounted);
    CHECK(aligned64(uncounted.data()));
    CHECK(counter.current_bytes() == 256);
    Buffer<double> empty;
    CHECK(empty.bytes() == 0);
    CHECK(empty.data() == nullptr);
  }
  CHECK(counter.current_bytes() == 0);
  // The peak came in `assigned = a`: copy-and-swap holds the new copy (128)
  // beside the old storage (64) and the other buffers (128 + 128).
  CHECK(counter.peak_bytes() == 448);
}

TEST_CASE("Arena hands out aligned memory, rewinds, and reuses its chunks", "[tape][memory]") {
  MemoryCounter counter;
  {
    Arena arena(counter, 256);
    CHECK(counter.current_bytes() == 0);
    void* first = arena.allocate(10);
    CHECK(aligned64(first));
    CHECK(arena.bytes_in_use() == 64);
    CHECK(counter.current_bytes() >= 256);

    const Arena::Mark mark = arena.mark();
    // 128 bytes in chunk 0, 128 in a new chunk, 1024 in a chunk of its own.
    const auto pattern = [&arena] {
      return std::vector<void*>{arena.allocate(100), arena.allocate(100), arena.allocate(1000)};
    };
    const std::vector<void*> once = pattern();
    CHECK(once[0] == static_cast<char*>(first) + 64);
    for (void* p : once) CHECK(aligned64(p));
    CHECK(arena.bytes_in_use() == 64 + 128 + 128 + 1024);
    const std::size_t allocations = counter.allocation_count();
    const std::size_t held = counter.current_bytes();
    CHECK(held >= 256 + 256 + 1024);

    arena.rewind(mark);
    CHECK(arena.bytes_in_use() == 64);
    CHECK(counter.current_bytes() == held);  // chunks are kept for reuse

    const std::vector<void*> twice = pattern();  // the same requests get the same memory
    CHECK(twice == once);
    CHECK(counter.allocation_count() == allocations);
    CHECK(counter.current_bytes() == held);

    // After a rewind, a request larger than the kept chunks replaces them.
    arena.rewind(mark);
    void* big = arena.allocate(2000);
    CHECK(aligned64(big));
    CHECK(arena.bytes_in_use() == 64 + 2048);
    CHECK(counter.allocation_count() == allocations + 1);
    CHECK(counter.current_bytes() == held - 256 - 1024 + 2048);

    arena.rewind(Arena::Mark{});
    CHECK(arena.bytes_in_use() == 0);
    CHECK(arena.allocate(64) == first);

    arena.release();
    CHECK(arena.bytes_in_use() == 0);
    CHECK(counter.current_bytes() < 256);  // only the chunk list's own storage is left
  }
  CHECK(counter.current_bytes() == 0);
}

TEST_CASE("Arena chunks double from 64 KiB up to the maximum", "[tape][memory]") {
  MemoryCounter counter;
  Arena arena(counter, std::size_t{512} << 10);
  std::vector<std::size_t> held;
  for (int i = 0; i < 40; ++i) {
    arena.allocate(std::size_t{40} << 10);  // two do not fit in one 64 KiB chunk
    if (held.empty() || counter.current_bytes() != held.back()) held.push_back(counter.current_bytes());
  }
  // Chunks of 64, 128, 256, 512, 512, ... KiB (plus the chunk list's own storage).
  REQUIRE(held.size() >= 5);
  const std::size_t kib = 1024;
  CHECK(held[1] - held[0] >= 128 * kib);
  CHECK(held[1] - held[0] < 129 * kib);
  CHECK(held[2] - held[1] >= 256 * kib);
  CHECK(held[3] - held[2] >= 512 * kib);
  CHECK(held[4] - held[3] >= 512 * kib);
  CHECK(held[4] - held[3] < 513 * kib);  // capped
  CHECK(counter.current_bytes() < 40 * 40 * kib * 13 / 10);  // little waste
}

TEST_CASE("a Tape counts its nodes and values into a shared MemoryCounter", "[tape][memory]") {
  MemoryCounter counter;
  std::size_t peak_held = 0;
  {
    Tape<double> tape(counter);
    CHECK(&tape.memory() == &counter);
    CHECK(counter.current_bytes() == 0);

    const double one = 1.0;
    tape.constant(Shape{}, &one);
    const std::size_t first = counter.current_bytes();
    CHECK(first >= Arena::first_chunk_bytes);  // the arena's first chunk
    CHECK(tape.arena_bytes_in_use() == 64);

    // A thousand more one-element values fit in that chunk: what grows now is
    // the node list.
    for (int i = 0; i < 1000; ++i) tape.constant(Shape{}, &one);
    CHECK(tape.size() == 1001);
    CHECK(tape.arena_bytes_in_use() == 1001 * 64);
    CHECK(counter.current_bytes() >= first + 1000 * 32);

    // A value larger than a chunk gets a chunk of its own, counted too.
    const std::size_t before = counter.current_bytes();
    const Var<double> big = tape.variable(Tensor<double>(Shape{300, 1000}));
    CHECK(counter.current_bytes() >= before + 300 * 1000 * sizeof(double));
    peak_held = counter.current_bytes();
    CHECK(counter.peak_bytes() == peak_held);  // the last allocation was the largest held
    CHECK(big.size() == 300000);
  }
  CHECK(counter.current_bytes() == 0);  // everything went back
  CHECK(counter.peak_bytes() == peak_held);
  counter.reset_peak();
  CHECK(counter.peak_bytes() == 0);

  Tape<double> own;  // a tape without a shared counter counts into its own
  own.variable(Tensor<double>(Shape{4}));
  CHECK(own.memory().current_bytes() >= Arena::first_chunk_bytes);
  CHECK(&own.memory() != &counter);
  CHECK(counter.current_bytes() == 0);
}

TEST_CASE("a repeated mark / record / backward / rewind allocates nothing new", "[tape][memory]") {
  MemoryCounter counter;
  Tape<double> tape(counter);
  Parameter<double> w(Shape{3, 2}, "w");
  w.value() = matrix(3, 2, {0.5, -0.25, 1.0, 0.75, -0.5, 0.1});
  const Var<double> x = tape.constant(matrix(2, 3, {1, 2, 3, -1, 0.5, 0.25}));

  double loss_value = 0.0;
  const auto step = [&] {
    const auto mark = tape.mark();
    const Var<double> y = momnet::tanh(momnet::matmul(x, tape.param(w)));
    const Var<double> loss = momnet::mean(momnet::square(y));
    tape.backward(loss);
    loss_value = loss.item();
    tape.rewind(mark);
  };
  const std::size_t before = counter.allocation_count();
  step();
  const double first_loss = loss_value;
  const Matrix first_grad = w.grad();
  const std::size_t allocations = counter.allocation_count();
  const std::size_t held = counter.current_bytes();
  const std::size_t in_use = tape.arena_bytes_in_use();
  CHECK(allocations > before);  // the first pass grew the node list
  for (int i = 0; i < 5; ++i) {
    w.zero_grad();
    step();
    CHECK(counter.allocation_count() == allocations);
    CHECK(counter.current_bytes() == held);
    CHECK(tape.arena_bytes_in_use() == in_use);
    CHECK(tape.size() == 1);
  }
  CHECK(loss_value == first_loss);
  CHECK(w.grad() == first_grad);
}

// ---- recording and backward ---------------------------------------------------

TEST_CASE("a Tape records nodes with shapes, values and requires_grad", "[tape]") {
  Tape<double> tape;
  CHECK(tape.size() == 0);
  CHECK(tape.grad_enabled());
  const Matrix xm = matrix(2, 3, {1, 2, 3, 4, 5, 6});
  const Var<double> x = tape.variable(xm);
  const Var<double> c = tape.constant(matrix(2, 3, {0.5, -1, 2, 0, 1, -2}));
  CHECK(x.valid());
  CHECK(x.index() == 0);
  CHECK(c.index() == 1);
  CHECK(&x.tape() == &tape);
  CHECK(x.shape() == Shape{2, 3});
  CHECK(x.size() == 6);
  CHECK(x.value() == xm);
  CHECK(aligned64(x.data()));
  CHECK(x.requires_grad());
  CHECK_FALSE(c.requires_grad());

  const Var<double> y = x * c;
  CHECK(tape.size() == 3);
  CHECK(y.requires_grad());
  CHECK(y.value() == matrix(2, 3, {0.5, -2, 6, 0, 5, -12}));
  CHECK_FALSE((c + c).requires_grad());  // nothing upstream needs a gradient

  Tensor<double> t(Shape{2, 1, 2});
  t.array() << 1, 2, 3, 4;
  const Var<double> from_tensor = tape.variable(t);
  CHECK(from_tensor.shape() == Shape{2, 1, 2});
  CHECK(from_tensor.array()(3) == 4.0);
  const double raw[] = {7, 8, 9};
  const Var<double> from_pointer = tape.constant(Shape{3}, raw);
  CHECK(from_pointer.shape() == Shape{3});
  CHECK(from_pointer.value()(0, 2) == 9.0);
  const Var<double> filled = tape.filled(Shape{2, 2}, 0.25);
  CHECK(filled.value() == Matrix::Constant(2, 2, 0.25));
  CHECK_FALSE(filled.requires_grad());
  CHECK(momnet::sum(x).item() == 21.0);

  Parameter<double> p(Shape{2}, "p");
  p.array() << 3, 4;
  const Var<double> pv = tape.param(p);
  CHECK(pv.requires_grad());
  CHECK(pv.data() == p.value_data());  // by reference, no copy
}

TEST_CASE("backward on a scalar gives d(loss)/d(every input)", "[tape]") {
  Tape<double> tape;
  const Matrix xm = matrix(2, 2, {1, -2, 0.5, 3});
  const Matrix cm = matrix(2, 2, {2, 1, -1, 0.5});
  const Var<double> x = tape.variable(xm);
  const Var<double> c = tape.variable(cm);
  // loss = sum(x * x * c) + mean(x): d/dx = 2 x c + 1/4, d/dc = x^2
  const Var<double> loss = momnet::sum(x * x * c) + momnet::mean(x);
  CHECK(loss.item() == Approx((xm.array().square() * cm.array()).sum() + xm.mean()));
  tape.retain_grad(loss);
  tape.backward(loss);
  CHECK(x.grad().isApprox(Matrix((2.0 * xm.array() * cm.array() + 0.25).matrix())));
  CHECK(c.grad().isApprox(Matrix(xm.array().square().matrix())));
  CHECK(loss.grad()(0, 0) == 1.0);
}

TEST_CASE("backward with a seed on a non-scalar output", "[tape]") {
  Tape<double> tape;
  const Matrix xm = matrix(2, 3, {1, 2, 3, 4, 5, 6});
  const Matrix cm = matrix(2, 3, {0.5, -1, 2, 0, 1, -2});
  const Var<double> x = tape.variable(xm);
  const Var<double> c = tape.constant(cm);
  const Var<double> y = momnet::scale(x * c, 3.0);
  Tensor<double> seed(Shape{2, 3});  // a Tensor: the seed must be 64-byte aligned
  seed.array() << 1, -1, 0.5, 2, 0, 4;
  tape.retain_grad(y);
  tape.backward(y, seed.data());
  CHECK(x.grad() == Matrix(3.0 * seed.matrix().array() * cm.array()));
  CHECK(y.grad() == seed.matrix());
  REQUIRE_THROWS_EXACT(c.grad(), std::logic_error, "does not require a gradient");
}

TEST_CASE("repeated backward: intermediate gradients restart, parameter gradients accumulate", "[tape]") {
  Tape<double> tape;
  Parameter<double> w(Shape{2, 2}, "w");
  w.value() = matrix(2, 2, {1, 0.5, -1, 2});
  const Matrix xm = matrix(1, 2, {2, -1});
  const Var<double> x = tape.variable(xm);
  const Var<double> h = momnet::matmul(x, tape.param(w));
  const Var<double> loss = momnet::sum(momnet::square(h));
  // h = x w = [3, -1]; dloss/dh = 2h; dloss/dw = x^T 2h; dloss/dx = 2h w^T
  const Matrix h_grad = matrix(1, 2, {6, -2});
  const Matrix w_grad = xm.transpose() * h_grad;
  const Matrix x_grad = h_grad * w.value().transpose();

  tape.retain_grad(h);
  tape.backward(loss);
  CHECK(h.grad() == h_grad);
  CHECK(x.grad() == x_grad);
  CHECK(w.grad() == w_grad);

  tape.backward(loss);
  CHECK(h.grad() == h_grad);  // restarted, not doubled
  CHECK(x.grad() == x_grad);
  CHECK(w.grad() == 2.0 * w_grad);  // accumulated

  w.zero_grad();
  tape.backward(loss);
  CHECK(w.grad() == w_grad);
  CHECK(x.grad() == x_grad);
}

TEST_CASE("NoGradScope records values but no backward steps", "[tape]") {
  Tape<double> tape;
  Parameter<double> w(Shape{2, 3}, "w");
  const Matrix xm = matrix(2, 3, {0.1, 0.2, 0.3, -0.4, 0.5, 0.6});
  const Var<double> x = tape.variable(xm);

  const std::size_t before_grad = tape.arena_bytes_in_use();
  const Var<double> with_grad = momnet::tanh(x);
  const std::size_t grad_bytes = tape.arena_bytes_in_use() - before_grad;
  CHECK(with_grad.requires_grad());
  {
    Tape<double>::NoGradScope no_grad(tape);
    CHECK_FALSE(tape.grad_enabled());
    const std::size_t before = tape.arena_bytes_in_use();
    const std::size_t nodes = tape.size();
    const Var<double> y = momnet::tanh(x);
    CHECK(tape.arena_bytes_in_use() - before == 64);  // the value only: no step stored
    CHECK(grad_bytes > 64);                           // with gradients, the step is stored too
    CHECK(tape.size() == nodes + 1);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.value().isApprox(Matrix(xm.array().tanh().matrix())));
    CHECK_FALSE(tape.variable(xm).requires_grad());
    CHECK_FALSE(tape.param(w).requires_grad());
    {
      Tape<double>::NoGradScope inner(tape);
    }
    CHECK_FALSE(tape.grad_enabled());  // the inner scope restores the outer state
    REQUIRE_THROWS_EXACT(tape.backward(momnet::sum(y)), std::logic_error, "NoGradScope");
  }
  CHECK(tape.grad_enabled());
  CHECK(momnet::tanh(x).requires_grad());
}

TEST_CASE("rewind forgets gradient buffers it releases, even of earlier Vars", "[tape]") {
  // x is recorded before the mark but gets its gradient buffer in a backward
  // after it: the rewind must not leave x pointing into released memory.
  Tape<double> tape;
  const Var<double> x = tape.variable(matrix(1, 4, {1, 2, 3, 4}));
  const auto mark = tape.mark();
  tape.backward(momnet::sum(momnet::square(x)));
  CHECK(x.grad() == matrix(1, 4, {2, 4, 6, 8}));
  tape.rewind(mark);
  const Var<double> z = tape.constant(matrix(1, 4, {7, 7, 7, 7}));  // reuses the released memory
  tape.backward(momnet::sum(momnet::mul(x, z)));
  CHECK(z.value() == matrix(1, 4, {7, 7, 7, 7}));  // not zeroed as if it were x's gradient
  CHECK(x.grad() == matrix(1, 4, {7, 7, 7, 7}));
}

TEST_CASE("a second backward runs only the steps of the new output's graph", "[tape]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(matrix(1, 2, {1, 2}));
  int first_runs = 0;
  double* out = tape.allocate(2);
  std::copy(x.data(), x.data() + 2, out);
  const Var<double> counted = tape.record(x.shape(), out, {x}, [&first_runs, x](const double* g) {
    ++first_runs;
    momnet::array_view(x.tape().gradient_for(x), 2) += momnet::array_view(g, 2);
  });
  tape.backward(momnet::sum(counted));
  CHECK(first_runs == 1);
  tape.backward(momnet::sum(momnet::square(x)));  // does not involve `counted`
  CHECK(first_runs == 1);
  CHECK(x.grad() == matrix(1, 2, {2, 4}));
}

TEST_CASE("backward accepts a seed in any caller memory, aligned or not", "[tape]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Matrix::Ones(4, 8));
  const Var<double> y = momnet::scale(x, 2.0);
  std::vector<double> storage(33, 1.0);
  tape.backward(y, storage.data() + 1);  // 8 bytes past an allocation: not 64-byte aligned
  CHECK(x.grad() == Matrix::Constant(4, 8, 2.0));
}

TEST_CASE("mark and rewind release nodes and their memory", "[tape]") {
  Tape<double> tape;
  const Matrix xm = matrix(2, 2, {1, 2, 3, 4});
  const Var<double> x = tape.variable(xm);
  // x's gradient exists before the mark (the case where it does not is the
  // next test).
  tape.gradient_for(x);
  const std::size_t bytes = tape.arena_bytes_in_use();
  const std::size_t nodes = tape.size();

  SECTION("rewind") {
    const auto mark = tape.mark();
    const Var<double> y = momnet::exp(x);
    const Var<double> loss = momnet::sum(y);
    tape.backward(loss);
    CHECK(x.grad().isApprox(Matrix(xm.array().exp().matrix())));
    CHECK(tape.arena_bytes_in_use() > bytes);
    CHECK(tape.size() == nodes + 2);

    tape.rewind(mark);
    CHECK(tape.arena_bytes_in_use() == bytes);
    CHECK(tape.size() == nodes);
    CHECK(x.value() == xm);  // what came before the mark is untouched
    CHECK(x.grad().isApprox(Matrix(xm.array().exp().matrix())));
    REQUIRE_THROWS_EXACT(y.value(), std::logic_error, "Var #1", "released by Tape::rewind");
    REQUIRE_THROWS_EXACT(loss.item(), std::logic_error, "Var #2", "released by Tape::rewind");

    // A new node takes the released slot; the old handle stays invalid.
    const Var<double> z = momnet::square(x);
    CHECK(z.index() == y.index());
    CHECK(z.value() == Matrix(xm.array().square().matrix()));
    REQUIRE_THROWS_EXACT(y.shape(), std::logic_error, "released by Tape::rewind");
    const auto later = tape.mark();
    tape.rewind(mark);
    REQUIRE_THROWS_EXACT(tape.rewind(later), std::logic_error, "momnet::Tape::rewind", "already rewound");
  }
  SECTION("TapeScope rewinds when it ends, clear() releases everything") {
    {
      TapeScope<double> scope(tape);
      momnet::tanh(momnet::exp(x));
      CHECK(tape.size() == nodes + 2);
    }
    CHECK(tape.size() == nodes);
    CHECK(tape.arena_bytes_in_use() == bytes);
    tape.clear();
    CHECK(tape.size() == 0);
    CHECK(tape.arena_bytes_in_use() == 0);
    REQUIRE_THROWS_EXACT(x.value(), std::logic_error, "released by Tape::rewind");
  }
}

// ---- nested backward ----------------------------------------------------------

TEST_CASE("backward_from: a nested scope re-records and back-propagates into an outer Var",
          "[tape][nested]") {
  const Matrix xm = matrix(2, 3, {0.1, -0.4, 0.3, 0.8, -0.2, 0.5});
  const Matrix cm = matrix(2, 3, {1, -2, 0.5, 3, 0.25, -1});
  const Matrix t = (2.0 * xm.array()).tanh().matrix();
  // loss = sum(c * tanh(2x)) + sum(x^2): dx = 2 c (1 - tanh(2x)^2) + 2 x
  const Matrix expected = (2.0 * cm.array() * (1.0 - t.array().square()) + 2.0 * xm.array()).matrix();

  Tape<double> tape;
  const Var<double> x = tape.variable(xm);
  const Var<double> c = tape.constant(cm);
  const Var<double> y = checkpointed_tanh2(x, true);
  CHECK(y.value().isApprox(t, 1e-15));
  const Var<double> loss = momnet::sum(y * c) + momnet::sum(momnet::square(x));
  const std::size_t nodes = tape.size();
  tape.backward(loss);
  // The gradient is added into x's, never reset (the square path also feeds it).
  CHECK(x.grad().isApprox(expected, 1e-14));
  CHECK(tape.size() == nodes);  // the nested nodes were released

  // The same computation recorded in full gives the same gradient.
  Tape<double> full;
  const Var<double> fx = full.variable(xm);
  full.backward(momnet::sum(momnet::tanh(momnet::scale(fx, 2.0)) * full.constant(cm)) +
                momnet::sum(momnet::square(fx)));
  CHECK(x.grad().isApprox(fx.grad(), 1e-15));

  // A second backward recomputes, with the same result.
  tape.backward(loss);
  CHECK(x.grad().isApprox(expected, 1e-14));
}

TEST_CASE("backward_from: a nested walk may reach an outer Var whose gradient was not prepared", "[tape][nested]") {
  // Gradient buffers come from a pool, not the arena, so a buffer first
  // needed inside a nested scope survives the scope's rewind.
  Tape<double> tape;
  const Var<double> earlier = tape.variable(matrix(1, 3, {1, 1, 1}));  // not used by the loss
  const Var<double> x = tape.variable(matrix(1, 3, {0.1, 0.2, 0.3}));
  const Var<double> loss = momnet::sum(checkpointed_tanh2(x, false));
  const std::size_t nodes = tape.size();
  tape.backward(loss);
  CHECK(tape.size() == nodes);  // the TapeScope released the nested nodes
  const Matrix t = (2.0 * matrix(1, 3, {0.1, 0.2, 0.3}).array()).tanh().matrix();
  CHECK(x.grad().isApprox((2.0 * (1.0 - t.array().square())).matrix(), 1e-15));
  CHECK(earlier.grad() == Matrix::Zero(1, 3));  // never reached: zeros
}

TEST_CASE("backward_from: an output recorded before the floor takes the seed as its gradient", "[tape][nested]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(matrix(1, 2, {1, 2}));
  const Var<double> y = momnet::square(x);
  const auto after = tape.mark();
  Tensor<double> ones(Shape{1, 2});
  ones.array().setOnes();
  const double* seed = ones.data();
  tape.backward_from(y, seed, after);
  tape.backward_from(y, seed, after);
  CHECK(y.grad() == matrix(1, 2, {2, 2}));
  CHECK(x.grad() == Matrix::Zero(1, 2));  // the walk stops at the floor
}

TEST_CASE("backward_from checks its floor and ignores outputs that need no gradient", "[tape][nested]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(matrix(1, 2, {1, 2}));
  const Var<double> y = momnet::square(x);
  const auto after = tape.mark();
  Tensor<double> ones(Shape{1, 2});
  ones.array().setOnes();
  const double* seed = ones.data();
  const Var<double> constant = tape.constant(matrix(1, 2, {3, 4}));
  tape.gradient_for(x);
  tape.backward_from(momnet::exp(constant), seed, after);  // nothing to do
  CHECK(x.grad() == Matrix::Zero(1, 2));
  tape.backward_from(y, seed, Tape<double>::Mark{});
  CHECK(x.grad() == matrix(1, 2, {2, 4}));
}

// ---- errors -------------------------------------------------------------------

TEST_CASE("backward and Var misuse raise clear errors", "[tape][errors]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(matrix(2, 3, {1, 2, 3, 4, 5, 6}));

  SECTION("backward on a non-scalar without a seed") {
    REQUIRE_THROWS_EXACT(tape.backward(momnet::tanh(x)), std::invalid_argument, "momnet::Tape::backward",
                         "[2, 3]", "not a scalar", "seed");
  }
  SECTION("a Var from another tape") {
    Tape<double> other;
    const Var<double> loss = momnet::sum(x);
    REQUIRE_THROWS_EXACT(other.backward(loss), std::invalid_argument, "momnet::Tape::backward",
                         "different tape");
    REQUIRE_THROWS_EXACT(other.shape(x), std::invalid_argument, "different tape");
    REQUIRE_THROWS_EXACT(other.gradient_for(x), std::invalid_argument, "different tape");
  }
  SECTION("a Var used after rewind") {
    const auto mark = tape.mark();
    const Var<double> loss = momnet::sum(momnet::exp(x));
    tape.rewind(mark);
    REQUIRE_THROWS_EXACT(tape.backward(loss), std::logic_error, "Var #2", "released by Tape::rewind");
    REQUIRE_THROWS_EXACT(loss.grad(), std::logic_error, "released by Tape::rewind");
    REQUIRE_THROWS_EXACT(loss.requires_grad(), std::logic_error, "released by Tape::rewind");
  }
  SECTION("a default-constructed Var") {
    const Var<double> empty;
    CHECK_FALSE(empty.valid());
    REQUIRE_THROWS_EXACT(empty.shape(), std::logic_error, "momnet::Var", "default-constructed");
    REQUIRE_THROWS_EXACT(empty.value(), std::logic_error, "default-constructed");
    REQUIRE_THROWS_EXACT(empty.tape(), std::logic_error, "default-constructed");
    REQUIRE_THROWS_EXACT(tape.backward(empty), std::invalid_argument, "momnet::Tape::backward",
                         "default-constructed");
  }
  SECTION("NaN or Inf in the loss") {
    const Var<double> negative = tape.variable(matrix(1, 2, {-1, 2}));
    REQUIRE_THROWS_EXACT(tape.backward(momnet::sum(momnet::log(negative))), std::domain_error,
                         "momnet::Tape::backward", "is NaN");
    const Var<double> huge = tape.variable(matrix(1, 2, {1000, 2}));
    REQUIRE_THROWS_EXACT(tape.backward(momnet::sum(momnet::exp(huge))), std::domain_error,
                         "momnet::Tape::backward", "is infinite");
    const Var<double> nan_output = momnet::log(negative);
    Tensor<double> seed(Shape{1, 2});
    REQUIRE_THROWS_EXACT(tape.backward(nan_output, seed.data()), std::domain_error, "is NaN");
  }
  SECTION("an output that requires no gradient") {
    const Var<double> c = tape.constant(matrix(1, 2, {1, 2}));
    REQUIRE_THROWS_EXACT(tape.backward(momnet::sum(momnet::tanh(c))), std::logic_error,
                         "momnet::Tape::backward", "does not depend on any Var that requires a gradient");
    REQUIRE_THROWS_EXACT(c.grad(), std::logic_error, "momnet::Var::grad", "does not require a gradient");
    REQUIRE_THROWS_EXACT(tape.gradient_for(c), std::logic_error, "Var #1", "does not require a gradient");
  }
  SECTION("item of a non-scalar") {
    REQUIRE_THROWS_EXACT(x.item(), std::invalid_argument, "momnet::Var::item", "[2, 3]", "not a scalar");
  }
}

TEST_CASE("Shape: ranks 0 to 4, the matrix reading, and its errors", "[tape][shape]") {
  CHECK(Shape{}.rank() == 0);
  CHECK(Shape{}.size() == 1);
  CHECK(Shape{}.is_scalar());
  CHECK(Shape{}.to_string() == "[]");
  const Shape row{5};
  CHECK(row.rows() == 1);
  CHECK(row.cols() == 5);
  const Shape image{2, 3, 4, 5};
  CHECK(image.rank() == 4);
  CHECK(image.size() == 120);
  CHECK(image.rows() == 2);
  CHECK(image.cols() == 60);
  CHECK(image.dim(3) == 5);
  CHECK(image.to_string() == "[2, 3, 4, 5]");
  CHECK(image.with_rows(6) == Shape{6, 20});
  CHECK(Shape::matrix(2, 3) == Shape{2, 3});
  CHECK(Shape{2, 3} != Shape{3, 2});
  CHECK(Shape{6} != Shape{1, 6});
  CHECK(Shape{0, 3}.cols() == 0);

  REQUIRE_THROWS_EXACT((Shape{1, 2, 3, 4, 5}), std::invalid_argument, "momnet::Shape", "rank 5",
                       "maximum of 4");
  REQUIRE_THROWS_EXACT((Shape{2, -3}), std::invalid_argument, "momnet::Shape", "negative dimension -3");
  REQUIRE_THROWS_EXACT(image.dim(4), std::out_of_range, "momnet::Shape::dim", "axis 4", "[2, 3, 4, 5]");
  CHECK(image.dim(-1) == 5);  // negative axes count from the end
  CHECK(image.dim(-4) == 2);
  REQUIRE_THROWS_EXACT(image.dim(-5), std::out_of_range, "axis -5", "[2, 3, 4, 5]", "rank 4");

  Tensor<double> t(Shape{2, 3});
  t.reshape(Shape{3, 2});
  CHECK(t.shape() == Shape{3, 2});
  REQUIRE_THROWS_EXACT(t.reshape(Shape{4}), std::invalid_argument, "momnet::Tensor::reshape", "[3, 2] and [4]");
}

TEST_CASE("Intermediate gradients are released after their reverse step; a backward holds a few at a time",
          "[tape][memory]") {
  // A chain of 40 tanh nodes of 32 KiB each: the backward pass needs the
  // values, but only about two gradients at any moment.
  MemoryCounter counter;
  Tape<double> tape(counter);
  const Var<double> x = tape.variable(Tensor<double>(Shape{64, 64}));
  Var<double> h = x;
  std::vector<Var<double>> chain;
  for (int i = 0; i < 40; ++i) {
    h = momnet::tanh(h);
    chain.push_back(h);
  }
  const Var<double> loss = momnet::sum(h);
  tape.retain_grad(chain[20]);
  const std::size_t after_forward = counter.current_bytes();
  counter.reset_peak();
  tape.backward(loss);
  const std::size_t gradient_bytes = 64 * 64 * sizeof(double);
  INFO("peak above the forward: " << counter.peak_bytes() - after_forward << " bytes");
  CHECK(counter.peak_bytes() - after_forward <= 4 * gradient_bytes);  // 41 before this change
  CHECK(x.grad().isConstant(x.grad()(0, 0)));  // a leaf keeps its gradient
  CHECK(chain[20].grad().allFinite());         // retained
  REQUIRE_THROWS_EXACT(chain[10].grad(), std::logic_error, "momnet::Var::grad", "was released",
                       "retain_grad");
  // From the second pass on (the leaf now keeps its buffer throughout), the
  // pool gives the same buffers to every pass: no new memory.
  tape.backward(loss);
  const std::size_t held = counter.current_bytes();
  tape.backward(loss);
  tape.backward(loss);
  CHECK(counter.current_bytes() == held);
}

TEST_CASE("Repeated backward passes on one tape take no tape memory (issue 9, item 13)", "[tape][memory]") {
  Tape<double> tape;
  const Var<double> x = tape.variable(Tensor<double>(Shape{4, 4}));
  const Var<double> loss = momnet::sum(momnet::tanh(x));
  tape.backward(loss);
  const std::size_t arena = tape.arena_bytes_in_use(), held = tape.memory().current_bytes();
  for (int i = 0; i < 10000; ++i) tape.backward(loss);
  CHECK(tape.arena_bytes_in_use() == arena);  // each pass used to leave its seed behind
  CHECK(tape.memory().current_bytes() == held);
}

TEST_CASE("Large values get buffers of their own, reused after a rewind, so chunks waste little",
          "[tape][memory]") {
  // 1 MiB values used to fill 4 MiB chunks three at a time, stranding a
  // quarter of each chunk.
  MemoryCounter counter;
  Arena arena(counter);
  const std::size_t mib = std::size_t{1} << 20;
  const Arena::Mark start = arena.mark();
  for (int i = 0; i < 12; ++i) {
    arena.allocate(mib);
    arena.allocate(100);
  }
  CHECK(arena.bytes_in_use() == 12 * mib + 12 * 128);
  CHECK(counter.current_bytes() < 12 * mib + Arena::first_chunk_bytes + 4096);
  const std::size_t held = counter.current_bytes();
  arena.rewind(start);
  CHECK(arena.bytes_in_use() == 0);
  for (int i = 0; i < 12; ++i) {
    arena.allocate(mib);
    arena.allocate(100);
  }
  CHECK(counter.current_bytes() == held);  // the same buffers again
  const Arena::Mark middle = arena.mark();
  void* extra = arena.allocate(2 * mib);
  CHECK(reinterpret_cast<std::uintptr_t>(extra) % 64 == 0);
  arena.rewind(middle);
  CHECK(arena.bytes_in_use() == 12 * mib + 12 * 128);
}
