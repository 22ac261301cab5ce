// Reverse-mode automatic differentiation, define by run: a Tape is a Wengert
// list of matrix-level nodes whose values and gradients live in an arena. Each
// node holds its value and, when it needs a gradient, a backward step that
// adds its inputs' gradients given its own. backward(loss) walks the list once
// in reverse. There is no global tape: every Var names the tape it lives on.
//
// Operations are recorded with record_op(): the inputs, one or more outputs
// (values the operation computed into allocate()d storage) and a reverse rule
// that receives a Gradients<T> view: the gradients of its outputs, and buffers
// to add its inputs' gradients into (docs/writing-an-operation.md).
//
// Nested scopes: mark() remembers the end of the list, rewind(mark) releases
// every node (and its memory) recorded since. MomentumResidual uses this to
// re-record one block at a time during its backward pass.
//
// Gradients: values live in the arena; gradient buffers come from a pool and
// go back to it as soon as their node's reverse step has run, so a backward
// pass holds a few of them at a time. Leaves (inputs made with variable() or
// leaf()) and parameters keep theirs; an intermediate Var's gradient can be
// read after backward only if retain_grad() asked for it, as in PyTorch.
//
// Every tape draws a process-unique identity, which each Var carries: a Var
// that outlived its tape is refused even by a new tape built at the same
// address. Parameters carry a version that optimisers bump; a backward pass
// through a parameter changed since it was recorded throws.
#pragma once

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "momnet/arena.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/gradient_pool.hpp"
#include "momnet/memory.hpp"
#include "momnet/parameter.hpp"
#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"
#include "momnet/views.hpp"

namespace momnet {

template <class T>
class Tape;

// A handle to one node of a tape: cheap to copy, valid until the tape is
// rewound past it or destroyed. Using a released handle throws.
template <class T>
class Var {
 public:
  using Scalar = T;

  Var() = default;  // an empty handle: valid() is false

  bool valid() const noexcept { return tape_ != nullptr; }
  Tape<T>& tape() const {
    if (tape_ == nullptr) throw std::logic_error("momnet::Var: empty handle (default-constructed Var)");
    return *tape_;
  }
  std::size_t index() const noexcept { return index_; }

  // By value: a reference into the tape would dangle once it records more.
  Shape shape() const { return tape().shape(*this); }
  Eigen::Index size() const { return shape().size(); }
  const T* data() const { return tape().value_data(*this); }
  ConstMatrixView<T> value() const { return matrix_view(data(), shape()); }
  ConstArrayView<T> array() const { return array_view(data(), size()); }
  bool requires_grad() const { return tape().requires_grad(*this); }
  // The value of a one-element Var.
  T item() const {
    if (size() != 1) {
      throw std::invalid_argument("momnet::Var::item: shape " + shape().to_string() + " is not a scalar");
    }
    return data()[0];
  }
  // The gradient accumulated by the last backward pass (zeros if this Var did
  // not influence the output). An intermediate Var's gradient is released
  // once its reverse step has run: reading it throws unless
  // tape.retain_grad(var) was called before the backward pass.
  ConstMatrixView<T> grad() const { return matrix_view(tape().gradient_data(*this), shape()); }

 private:
  friend class Tape<T>;
  Var(Tape<T>* tape, std::uint64_t tape_id, std::size_t index, std::uint64_t serial) noexcept
      : tape_(tape), tape_id_(tape_id), index_(index), serial_(serial) {}

  Tape<T>* tape_ = nullptr;
  std::uint64_t tape_id_ = 0;
  std::size_t index_ = 0;
  std::uint64_t serial_ = 0;
};

// What a reverse rule of record_op() sees: the gradients of the operation's
// outputs (never null: zeros for an output that received none) and, for each
// input that requires one, the buffer to add that input's gradient into.
template <class T>
class Gradients {
 public:
  std::size_t input_count() const noexcept { return input_count_; }
  std::size_t output_count() const noexcept { return output_count_; }
  // Input i was given (not an empty Var) and requires a gradient.
  bool needs(std::size_t i) const;
  // The gradient buffer of input i, to add into; nullptr when !needs(i).
  T* input(std::size_t i);
  // d(objective)/d(output k).
  const T* output(std::size_t k = 0) const;
  // The tape the operation is on (for rules that record nested scopes).
  Tape<T>& tape() const noexcept { return tape_; }

 private:
  friend class Tape<T>;
  Gradients(Tape<T>& tape, const Var<T>* inputs, std::size_t input_count, std::size_t first_output,
            std::size_t output_count) noexcept
      : tape_(tape), inputs_(inputs), input_count_(input_count), first_output_(first_output),
        output_count_(output_count) {}

  Tape<T>& tape_;
  const Var<T>* inputs_;
  std::size_t input_count_;
  std::size_t first_output_;
  std::size_t output_count_;
};

template <class T>
class Tape {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "momnet::Tape supports float and double");

 public:
  using Scalar = T;

  struct Mark {
    std::size_t nodes = 0;
    Arena::Mark arena;
    std::uint64_t last_serial = 0;  // the serial of node nodes - 1: tells a mark made stale by clear()
  };

  // One output of record_op(): its shape and its value (from allocate()).
  struct Output {
    Shape shape;
    T* value;
  };

  // While alive, operations compute values but record no backward steps.
  class NoGradScope {
   public:
    explicit NoGradScope(Tape& tape) noexcept : tape_(tape), previous_(tape.grad_enabled_) {
      tape.grad_enabled_ = false;
    }
    NoGradScope(const NoGradScope&) = delete;
    NoGradScope& operator=(const NoGradScope&) = delete;
    ~NoGradScope() { tape_.grad_enabled_ = previous_; }

   private:
    Tape& tape_;
    bool previous_;
  };

  // A tape with its own memory counter. Its arena takes memory in chunks that
  // grow to `max_chunk_bytes` (larger values get a chunk of their own).
  explicit Tape(std::size_t max_chunk_bytes = Arena::default_max_chunk_bytes)
      : owned_counter_(std::make_unique<MemoryCounter>()), counter_(owned_counter_.get()),
        id_(next_tape_id()), arena_(*counter_, max_chunk_bytes), gradients_(*counter_),
        nodes_(CountingAllocator<Node>(*counter_)) {}
  // A tape that counts its memory into `counter` (which must outlive it).
  explicit Tape(MemoryCounter& counter, std::size_t max_chunk_bytes = Arena::default_max_chunk_bytes)
      : counter_(&counter), id_(next_tape_id()), arena_(counter, max_chunk_bytes), gradients_(counter),
        nodes_(CountingAllocator<Node>(counter)) {}
  // A tape whose arena draws its chunks from `cache` and gives them back when
  // the tape ends (the cache must outlive the tape): a new tape per training
  // step then costs what one reused tape does.
  explicit Tape(ChunkCache& cache, std::size_t max_chunk_bytes = Arena::default_max_chunk_bytes)
      : owned_counter_(std::make_unique<MemoryCounter>()), counter_(owned_counter_.get()), id_(next_tape_id()),
        arena_(*counter_, max_chunk_bytes, &cache), gradients_(*counter_), nodes_(CountingAllocator<Node>(*counter_)) {}
  Tape(MemoryCounter& counter, ChunkCache& cache, std::size_t max_chunk_bytes = Arena::default_max_chunk_bytes)
      : counter_(&counter), id_(next_tape_id()), arena_(counter, max_chunk_bytes, &cache), gradients_(counter),
        nodes_(CountingAllocator<Node>(counter)) {}
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  ~Tape() {
    destroy_steps(0);
    release_gradients(0);
  }

  MemoryCounter& memory() noexcept { return *counter_; }
  const MemoryCounter& memory() const noexcept { return *counter_; }
  std::size_t arena_bytes_in_use() const noexcept { return arena_.bytes_in_use(); }
  std::size_t size() const noexcept { return nodes_.size(); }
  bool grad_enabled() const noexcept { return grad_enabled_; }

  // ---- leaves ---------------------------------------------------------------

  // A value that receives no gradient (copied onto the tape).
  Var<T> constant(const Shape& shape, const T* data) { return copied_leaf(shape, data, false); }
  // A value whose gradient is wanted (copied onto the tape).
  Var<T> variable(const Shape& shape, const T* data) { return copied_leaf(shape, data, true); }
  Var<T> constant(const Tensor<T>& tensor) { return copied_leaf(tensor.shape(), tensor.data(), false); }
  Var<T> variable(const Tensor<T>& tensor) { return copied_leaf(tensor.shape(), tensor.data(), true); }
  template <class Derived>
  Var<T> constant(const Eigen::DenseBase<Derived>& values) {
    return copied_leaf(values, false);
  }
  template <class Derived>
  Var<T> variable(const Eigen::DenseBase<Derived>& values) {
    return copied_leaf(values, true);
  }
  // A leaf over `storage` from allocate(), without a copy.
  Var<T> leaf(const Shape& shape, T* storage, bool requires_grad) {
    return push(shape, storage, requires_grad && grad_enabled_, nullptr, false);
  }
  // A value filled with `fill`.
  Var<T> filled(const Shape& shape, T fill) {
    T* value = allocate(shape.size());
    array_view(value, shape.size()).setConstant(fill);
    return push(shape, value, false, nullptr, false);
  }

  // A parameter, by reference: no copy; its gradient accumulates straight
  // into parameter.grad().
  Var<T> param(Parameter<T>& parameter) {
    Var<T> v = push(parameter.shape(), parameter.value_data(), grad_enabled_, nullptr, false);
    if (grad_enabled_) nodes_.back().grad = parameter.grad_data();
    nodes_.back().external_grad = true;
    nodes_.back().parameter = parameter.status();
    nodes_.back().recorded_version = parameter.version();
    return v;
  }

  // ---- recording (the interface operations are written against) -------------

  // Uninitialised, aligned storage for `count` values, released by rewind.
  T* allocate(Eigen::Index count) { return static_cast<T*>(arena_.allocate(checked_bytes(count, sizeof(T)))); }

  // Temporary, aligned storage for a reverse rule, from the gradient pool and
  // returned to it when the Scratch ends: memory the arena would otherwise
  // keep until the tape is cleared.
  class Scratch {
   public:
    Scratch(Tape& tape, Eigen::Index count)
        : pool_(&tape.gradients_), bytes_(checked_bytes(count, sizeof(T))),
          data_(static_cast<T*>(pool_->acquire(bytes_))) {}
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { pool_->release(data_, bytes_); }
    T* data() const noexcept { return data_; }

   private:
    GradientPool* pool_;
    std::size_t bytes_;
    T* data_;
  };
  Scratch scratch(Eigen::Index count) { return Scratch(*this, count); }

  // Uninitialised, aligned storage for `count` objects of a trivial type (an
  // operation's saved integers, say), released by rewind.
  template <class U>
  U* allocate_as(Eigen::Index count) {
    static_assert(std::is_trivially_copyable_v<U> && std::is_trivially_destructible_v<U>);
    return static_cast<U*>(arena_.allocate(checked_bytes(count, sizeof(U))));
  }

  // Records an operation: its inputs (empty Vars allowed: an absent bias, say),
  // its output `value` of `shape` (from allocate()) and its reverse rule
  // `backward(Gradients<T>&)`, kept only when gradients are on and an input
  // requires one (or `requires_grad` is true: an operation that reads
  // parameters the tape does not see). The rule runs at most once per
  // backward pass, after every consumer of the output has run.
  template <class Backward>
  Var<T> record_op(std::initializer_list<Var<T>> inputs, const Shape& shape, T* value, Backward&& backward,
                   bool requires_grad = false) {
    const Output output{shape, value};
    return as_vars<1>(record_outputs(inputs.begin(), inputs.size(), &output, 1, std::forward<Backward>(backward),
                                     requires_grad))[0];
  }
  template <class Backward>
  Var<T> record_op(const std::vector<Var<T>>& inputs, const Shape& shape, T* value, Backward&& backward,
                   bool requires_grad = false) {
    const Output output{shape, value};
    return as_vars<1>(record_outputs(inputs.data(), inputs.size(), &output, 1, std::forward<Backward>(backward),
                                     requires_grad))[0];
  }
  // An operation with several outputs; its reverse rule runs once, when any
  // of them received a gradient (Gradients::output(k) is zeros for the rest).
  template <std::size_t K, class Backward>
  std::array<Var<T>, K> record_op(std::initializer_list<Var<T>> inputs, const std::array<Output, K>& outputs,
                                  Backward&& backward, bool requires_grad = false) {
    return as_vars<K>(record_outputs(inputs.begin(), inputs.size(), outputs.data(), K,
                                     std::forward<Backward>(backward), requires_grad));
  }
  template <std::size_t K, class Backward>
  std::array<Var<T>, K> record_op(const std::vector<Var<T>>& inputs, const std::array<Output, K>& outputs,
                                  Backward&& backward, bool requires_grad = false) {
    return as_vars<K>(record_outputs(inputs.data(), inputs.size(), outputs.data(), K,
                                     std::forward<Backward>(backward), requires_grad));
  }

  // The older, single-output form: `backward(const T* output_grad)` adds into
  // its inputs' gradient_for() buffers itself.
  // Records a node holding `value` (from allocate()). When gradients are on and
  // an input requires one, `backward(const T* output_grad)` is kept and run
  // during the reverse walk; it adds into its inputs' gradient_for() buffers.
  template <class Backward>
  Var<T> record(const Shape& shape, T* value, std::initializer_list<Var<T>> inputs,
                Backward&& backward) {
    return record(shape, value, inputs.begin(), inputs.size(), std::forward<Backward>(backward));
  }
  template <class Backward>
  Var<T> record(const Shape& shape, T* value, const Var<T>* inputs, std::size_t input_count,
                Backward&& backward) {
    bool needs = false;
    if (grad_enabled_) {
      for (std::size_t i = 0; i < input_count; ++i) needs = needs || requires_grad(inputs[i]);
    }
    return record_node(shape, value, needs, std::forward<Backward>(backward));
  }

  // As record(), with the caller deciding whether the node needs a gradient
  // (an operation whose parameters need one even when its inputs do not).
  template <class Backward>
  Var<T> record_node(const Shape& shape, T* value, bool requires_grad, Backward&& backward) {
    if (!requires_grad || !grad_enabled_) return push(shape, value, false, nullptr, false);
    using Step = LegacyStep<std::decay_t<Backward>>;
    void* place = arena_.allocate(sizeof(Step));
    Step* step = new (place) Step(std::forward<Backward>(backward));
    try {
      return push(shape, value, true, step, !std::is_trivially_destructible_v<std::decay_t<Backward>>);
    } catch (...) {
      step->~Step();  // the node list could not grow: the step would leak its resources
      throw;
    }
  }

  // The gradient buffer of `var`, zero-filled on first use, to add into.
  T* gradient_for(const Var<T>& var) {
    checked(var);
    return gradient_of_node(var.index_);
  }

 private:
  T* gradient_of_node(std::size_t index) {
    Node& node = nodes_[index];
    if (!node.requires_grad) {
      throw std::logic_error("momnet::Tape: Var #" + std::to_string(index) + " does not require a gradient");
    }
    if (node.external_grad) return node.grad;
    if (node.grad == nullptr) {
      node.grad = static_cast<T*>(gradients_.acquire(checked_bytes(node.shape.size(), sizeof(T))));
      node.grad_live = false;
    }
    if (!node.grad_live) {
      // Zeroed on first use in each backward pass, not all up front.
      array_view(node.grad, node.shape.size()).setZero();
      node.grad_live = true;
    }
    return node.grad;
  }

 public:
  // ---- access -----------------------------------------------------------------

  Shape shape(const Var<T>& var) const { return checked(var).shape; }
  const T* value_data(const Var<T>& var) const { return checked(var).value; }
  bool requires_grad(const Var<T>& var) const { return checked(var).requires_grad; }
  // The gradient of `var` in the current backward pass if it received one,
  // else nullptr (no allocation).
  const T* gradient_if_any(const Var<T>& var) const {
    const Node& node = checked(var);
    return node.external_grad || node.grad_live ? node.grad : nullptr;
  }

  const T* gradient_data(const Var<T>& var) {
    const Node& node = checked(var);
    if (!node.requires_grad) {
      throw std::logic_error("momnet::Var::grad: this Var does not require a gradient");
    }
    if (node.released) {
      throw std::logic_error("momnet::Var::grad: the gradient of intermediate Var #" + std::to_string(var.index_) +
                             " was released once its reverse step ran; call tape.retain_grad(var) before backward "
                             "to keep it (leaves and parameters keep theirs)");
    }
    return gradient_for(var);
  }

  // Keeps the gradient of an intermediate Var after the backward pass.
  void retain_grad(const Var<T>& var) { checked(var).retain = true; }

  // Throws unless `var` is a live node of this tape; `operation` names the caller.
  void check(const Var<T>& var, const char* operation) const {
    if (var.tape_ == nullptr) {
      throw std::invalid_argument(std::string(operation) + ": empty Var (default-constructed)");
    }
    if (var.tape_ != this) {
      throw std::invalid_argument(std::string(operation) + ": a Var belongs to a different tape");
    }
    checked(var);
  }

  // ---- reverse pass -----------------------------------------------------------

  // Gradients of the scalar `loss` with respect to every Var that requires one.
  // Intermediate gradients restart from zero on each call; parameter gradients
  // accumulate until zero_grad().
  void backward(const Var<T>& loss) {
    check(loss, "momnet::Tape::backward");
    const Node& node = checked(loss);
    if (node.shape.size() != 1) {
      throw std::invalid_argument("momnet::Tape::backward: the output has shape " +
                                  node.shape.to_string() +
                                  ", not a scalar; pass a seed gradient of that shape");
    }
    backward(loss, nullptr);  // a null seed is the scalar 1: no tape memory per call
  }

  // Gradients given the seed d(objective)/d(output), an array of output.size()
  // (or null for a seed of ones).
  void backward(const Var<T>& output, const T* seed) {
    check(output, "momnet::Tape::backward");
    const Node& node = checked(output);
    if (!node.requires_grad) {
      throw std::logic_error(
          "momnet::Tape::backward: the output does not depend on any Var that requires a "
          "gradient (or was recorded under NoGradScope)");
    }
    // Read from the bit patterns, so that -ffast-math cannot fold the check away.
    bool finite = true, nan = false;
    for (Eigen::Index i = 0; i < node.shape.size(); ++i) {
      finite = finite && is_finite_bits(node.value[i]);
      nan = nan || is_nan_bits(node.value[i]);
    }
    if (!finite) {
      throw std::domain_error(std::string("momnet::Tape::backward: the output is ") + (nan ? "NaN" : "infinite") +
                              "; the forward pass overflowed or divided by zero");
    }
    // Gradients of an earlier pass become stale, on every node (also those
    // recorded after this output): zeroed when first touched.
    for (Node& n : nodes_) {
      n.grad_live = false;
      n.released = false;
    }
    check_parameter_versions(output.index_);
    seed_and_walk(output, seed, 0);
  }

  // A nested reverse walk for memory-saving operations: adds `seed` to the
  // gradient of `output` and walks back only to `floor` (a mark taken before
  // output was recorded). Gradients of Vars recorded before the floor are added
  // into, never reset. An output recorded before the floor (a block returning
  // an extra input unchanged) just takes the seed into its gradient.
  void backward_from(const Var<T>& output, const T* seed, const Mark& floor) {
    check(output, "momnet::Tape::backward_from");
    if (!checked(output).requires_grad) return;
    if (floor.nodes > output.index_) {
      T* grad = gradient_for(output);
      const Eigen::Index n = nodes_[output.index_].shape.size();
      for (Eigen::Index i = 0; i < n; ++i) grad[i] += seed[i];
      return;
    }
    seed_and_walk(output, seed, floor.nodes);
  }

  // ---- scopes -----------------------------------------------------------------

  Mark mark() const noexcept { return Mark{nodes_.size(), arena_.mark(), nodes_.empty() ? 0 : nodes_.back().serial}; }

  // The mark still stands in this recording: not past the end, and the nodes
  // before it are the ones it was taken after (not released by an earlier
  // rewind or clear() and recorded anew).
  bool holds(const Mark& mark) const noexcept {
    return mark.nodes <= nodes_.size() && (mark.nodes == 0 || nodes_[mark.nodes - 1].serial == mark.last_serial);
  }

  // Releases every node recorded since `mark`; their Vars become invalid.
  void rewind(const Mark& mark) {
    if (mark.nodes > nodes_.size()) {
      throw std::logic_error("momnet::Tape::rewind: the mark is past the end (already rewound)");
    }
    if (!holds(mark)) {
      throw std::logic_error("momnet::Tape::rewind: the mark is stale: the nodes it followed were released "
                             "(clear() or an earlier rewind) and others recorded in their place");
    }
    destroy_steps(mark.nodes);
    release_gradients(mark.nodes);
    nodes_.resize(mark.nodes);
    arena_.rewind(mark.arena);
  }

  // Releases every node; keeps the arena's chunks for the next recording.
  void clear() { rewind(Mark{}); }

 private:
  friend class Gradients<T>;

  // A reverse step, held by the last output node of its operation.
  struct Step {
    virtual void run(Tape& tape, std::size_t node) = 0;
    virtual ~Step() = default;
  };
  template <class F>
  struct LegacyStep final : Step {
    explicit LegacyStep(F f) : function(std::move(f)) {}
    void run(Tape& tape, std::size_t node) override { function(static_cast<const T*>(tape.nodes_[node].grad)); }
    F function;
  };
  template <class F>
  struct OpStep final : Step {
    OpStep(F f, const Var<T>* in, std::size_t n_in, std::size_t n_out)
        : function(std::move(f)), inputs(in), input_count(n_in), output_count(n_out) {}
    void run(Tape& tape, std::size_t node) override {
      const std::size_t first = node + 1 - output_count;
      // Outputs that received no gradient read as zeros.
      for (std::size_t k = first; k <= node; ++k) tape.gradient_of_node(k);
      Gradients<T> gradients(tape, inputs, input_count, first, output_count);
      function(gradients);
    }
    F function;
    const Var<T>* inputs;  // on the arena, released with the node
    std::size_t input_count;
    std::size_t output_count;
  };

  struct Node {
    T* value;
    T* grad;
    Step* step;
    std::uint64_t serial;
    std::uint64_t recorded_version;  // a parameter's node: its version when recorded
    Shape shape;
    std::uint32_t outputs;  // on a step's node: how many outputs (ending here) it serves
    std::uint32_t to_last;  // distance to the node holding this output's step
    bool retain;            // keep the gradient after the reverse step (retain_grad)
    bool released;          // the gradient was released in this backward pass
    bool requires_grad;
    bool destroy_step;   // the step owns resources: run its destructor on rewind
    bool external_grad;  // the gradient is a parameter's, never reset by the tape
    bool grad_live;      // grad holds this backward pass's gradient
    std::shared_ptr<const ParameterStatus> parameter{};  // a parameter's node: its live status
  };

  static std::uint64_t next_tape_id() noexcept {
    static std::atomic<std::uint64_t> next{0};
    return next.fetch_add(1, std::memory_order_relaxed) + 1;
  }

  // count * element bytes, refusing products that would wrap.
  static std::size_t checked_bytes(Eigen::Index count, std::size_t element) {
    if (count < 0 || static_cast<std::size_t>(count) > (std::numeric_limits<std::size_t>::max() / 2) / element) {
      throw std::length_error("momnet::Tape::allocate: " + std::to_string(count) + " elements of " +
                              std::to_string(element) + " bytes cannot be allocated");
    }
    return static_cast<std::size_t>(count) * element;
  }

  template <std::size_t K>
  std::array<Var<T>, K> as_vars(std::size_t first) const {
    std::array<Var<T>, K> vars;
    for (std::size_t k = 0; k < K; ++k) vars[k] = Var<T>(const_cast<Tape*>(this), id_, first + k, nodes_[first + k].serial);
    return vars;
  }

  // Pushes the outputs of one operation; returns the index of the first.
  template <class Backward>
  std::size_t record_outputs(const Var<T>* inputs, std::size_t input_count, const Output* outputs,
                             std::size_t output_count, Backward&& backward, bool requires_grad) {
    if (output_count == 0) throw std::invalid_argument("momnet::Tape::record_op: an operation needs an output");
    bool needs = requires_grad;
    for (std::size_t i = 0; i < input_count; ++i) {
      if (!inputs[i].valid()) continue;
      check(inputs[i], "momnet::Tape::record_op");
      needs = needs || nodes_[inputs[i].index_].requires_grad;
    }
    const std::size_t first = nodes_.size();
    nodes_.reserve(first + output_count);  // no reallocation between the pushes below
    if (!needs || !grad_enabled_) {
      for (std::size_t k = 0; k < output_count; ++k) push(outputs[k].shape, outputs[k].value, false, nullptr, false);
      return first;
    }
    Var<T>* kept = allocate_as<Var<T>>(static_cast<Eigen::Index>(input_count));
    std::copy(inputs, inputs + input_count, kept);
    using Step = OpStep<std::decay_t<Backward>>;
    Step* step = new (arena_.allocate(sizeof(Step)))
        Step(std::forward<Backward>(backward), kept, input_count, output_count);
    for (std::size_t k = 0; k + 1 < output_count; ++k) {
      push(outputs[k].shape, outputs[k].value, true, nullptr, false);
      nodes_.back().to_last = static_cast<std::uint32_t>(output_count - 1 - k);
    }
    try {
      push(outputs[output_count - 1].shape, outputs[output_count - 1].value, true, step,
           !std::is_trivially_destructible_v<std::decay_t<Backward>>);
    } catch (...) {
      step->~Step();
      throw;
    }
    nodes_.back().outputs = static_cast<std::uint32_t>(output_count);
    return first;
  }

  // Throws if a parameter read by the nodes up to `last` changed since it was
  // recorded (an optimiser step between the forward and backward passes):
  // the stored activations would mix old and new weights.
  void check_parameter_versions(std::size_t last) const {
    for (std::size_t i = 0; i <= last; ++i) {
      const Node& n = nodes_[i];
      if (n.parameter == nullptr || !n.requires_grad) continue;
      check_parameter(*n.parameter, n.recorded_version, "momnet::Tape::backward", n.shape);
    }
  }

 public:
  // Throws if a parameter recorded at `recorded_version` was destroyed or
  // modified since; `who` names the caller.
  static void check_parameter(const ParameterStatus& status, std::uint64_t recorded_version, const char* who,
                              const Shape& shape) {
    if (!status.alive) {
      throw std::logic_error(std::string(who) + ": a parameter of shape " + shape.to_string() +
                             " recorded by the forward pass was destroyed (or its model assigned over) before the "
                             "backward pass; keep the model alive until backward has run");
    }
    if (status.version != recorded_version) {
      throw std::logic_error(std::string(who) + ": a parameter of shape " + shape.to_string() +
                             " was modified after the forward pass recorded it (version " +
                             std::to_string(recorded_version) + ", now " + std::to_string(status.version) +
                             "); its stored activations are stale. Run the optimiser step after backward, then "
                             "record again");
    }
  }

 private:


  // Returns the gradient buffers of nodes from `from` on to the pool.
  void release_gradients(std::size_t from) noexcept {
    for (std::size_t i = from; i < nodes_.size(); ++i) release_gradient(nodes_[i]);
  }
  void release_gradient(Node& node) noexcept {
    if (node.external_grad || node.grad == nullptr) return;
    gradients_.release(node.grad, static_cast<std::size_t>(node.shape.size()) * sizeof(T));
    node.grad = nullptr;
    node.grad_live = false;
  }

  Var<T> push(const Shape& shape, T* value, bool needs_grad, Step* step, bool destroy_step) {
    nodes_.push_back(Node{value, nullptr, step, ++serial_, 0, shape, 1, 0, false, false, needs_grad, destroy_step,
                          false, false, nullptr});
    return Var<T>(this, id_, nodes_.size() - 1, serial_);
  }

  Var<T> copied_leaf(const Shape& shape, const T* data, bool needs_grad) {
    T* value = allocate(shape.size());
    if (shape.size() != 0) std::copy(data, data + shape.size(), value);
    return push(shape, value, needs_grad && grad_enabled_, nullptr, false);
  }
  template <class Derived>
  Var<T> copied_leaf(const Eigen::DenseBase<Derived>& values, bool needs_grad) {
    const Shape shape{values.rows(), values.cols()};
    T* value = allocate(shape.size());
    copy_row_major(values, value);
    return push(shape, value, needs_grad && grad_enabled_, nullptr, false);
  }

  Node& checked(const Var<T>& var) {
    return const_cast<Node&>(static_cast<const Tape&>(*this).checked(var));
  }
  const Node& checked(const Var<T>& var) const {
    if (var.tape_ != this) {
      throw std::invalid_argument(var.tape_ == nullptr ? "momnet::Tape: empty Var"
                                                       : "momnet::Tape: the Var belongs to a different tape");
    }
    if (var.tape_id_ != id_) {
      throw std::logic_error("momnet::Tape: the Var belongs to a tape that no longer exists (a new tape "
                             "stands at its address)");
    }
    if (var.index_ >= nodes_.size() || nodes_[var.index_].serial != var.serial_) {
      throw std::logic_error("momnet::Tape: Var #" + std::to_string(var.index_) +
                             " was released by Tape::rewind and can no longer be used");
    }
    return nodes_[var.index_];
  }

  void seed_and_walk(const Var<T>& output, const T* seed, std::size_t floor) {
    // Steps that re-record (nested scopes) need gradients on, even when the
    // caller's backward sits inside a NoGradScope.
    struct RestoreGradMode {
      Tape& tape;
      bool saved;
      ~RestoreGradMode() { tape.grad_enabled_ = saved; }
    } restore{*this, std::exchange(grad_enabled_, true)};
    T* grad = gradient_for(output);
    const Eigen::Index n = checked(output).shape.size();
    // The seed is the caller's memory: no alignment is assumed.
    // The seed is the caller's memory, read element by element: no alignment
    // is assumed.
    for (Eigen::Index i = 0; i < n; ++i) grad[i] += seed != nullptr ? seed[i] : T(1);
    // An output of a multi-output operation: its step sits on the last output.
    const std::size_t start = output.index_ + checked(output).to_last;
    for (std::size_t i = start + 1; i-- > floor;) {
      // Copy out before running: a step may record nodes (nested scopes) and
      // reallocate the node list.
      Step* step = nodes_[i].step;
      if (step == nullptr) continue;
      const std::size_t first = i + 1 - nodes_[i].outputs;
      bool live = false;
      for (std::size_t k = first; k <= i; ++k) live = live || nodes_[k].grad_live;
      if (!live) continue;
      step->run(*this, i);
      // The outputs' gradients have done their work: back to the pool.
      for (std::size_t k = first; k <= i; ++k) {
        if (nodes_[k].retain || nodes_[k].external_grad) continue;
        release_gradient(nodes_[k]);
        nodes_[k].released = true;
      }
    }
  }

  void destroy_steps(std::size_t from) noexcept {
    for (std::size_t i = nodes_.size(); i-- > from;) {
      if (nodes_[i].destroy_step) nodes_[i].step->~Step();
    }
  }

  std::unique_ptr<MemoryCounter> owned_counter_;
  MemoryCounter* counter_;
  std::uint64_t id_;
  Arena arena_;
  GradientPool gradients_;
  std::vector<Node, CountingAllocator<Node>> nodes_;
  std::uint64_t serial_ = 0;
  bool grad_enabled_ = true;
};

template <class T>
bool Gradients<T>::needs(std::size_t i) const {
  if (i >= input_count_) {
    throw std::out_of_range("momnet::Gradients::needs: input " + std::to_string(i) + " of " +
                            std::to_string(input_count_));
  }
  return inputs_[i].valid() && tape_.nodes_[inputs_[i].index()].requires_grad;
}

template <class T>
T* Gradients<T>::input(std::size_t i) {
  return needs(i) ? tape_.gradient_of_node(inputs_[i].index()) : nullptr;
}

template <class T>
const T* Gradients<T>::output(std::size_t k) const {
  if (k >= output_count_) {
    throw std::out_of_range("momnet::Gradients::output: output " + std::to_string(k) + " of " +
                            std::to_string(output_count_));
  }
  return tape_.nodes_[first_output_ + k].grad;
}

// Releases everything recorded on `tape` during this object's lifetime.
template <class T>
class TapeScope {
 public:
  explicit TapeScope(Tape<T>& tape) : tape_(tape), mark_(tape.mark()) {}
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;
  ~TapeScope() {
    if (tape_.holds(mark_)) tape_.rewind(mark_);  // a stale mark (clear() inside the scope) releases nothing
  }
  const typename Tape<T>::Mark& mark() const noexcept { return mark_; }

 private:
  Tape<T>& tape_;
  typename Tape<T>::Mark mark_;
};

}  // namespace momnet
