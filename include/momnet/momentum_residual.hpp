// Momentum Residual Networks (Sander, Ablin, Blondel and Peyre, ICML 2021):
//
//   v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)
//   x_{n+1} = x_n + v_{n+1}
//
// The rule is invertible for gamma > 0, so the backward pass can rebuild every
// activation from the output instead of storing it (docs/design.md). Modes:
//
//   exact          (default) One two-output node (x_N, v_N) on the caller's
//                  tape keeps only the final state, in 64-bit fixed point, and
//                  a bit store of the bits the multiplications by gamma drop
//                  (exact_momentum.hpp). Its backward walks the layers in
//                  reverse, rebuilding x_n and v_n bit for bit, re-recording
//                  one block at a time on a nested scope, taking its
//                  vector-Jacobian product and rewinding. Activation memory is
//                  one block's, whatever the depth.
//   stored         The same forward arithmetic (so the same outputs, bit for
//                  bit), recorded layer by layer on the tape: plain backprop,
//                  memory growing with depth. Allows gamma = 0 (a ResNet).
//   float_inverse  Floating-point forward and inverse: fast, no bit store, but
//                  dividing by gamma multiplies rounding error by 1/gamma per
//                  layer, so the rebuilt activations drift exponentially with
//                  depth. The backward checks the rebuilt input against the
//                  real one and throws past float_drift_tolerance.
//
// Gradients (all modes), with c = gx_{n+1} + gv_{n+1}:
//   gx_n = gx_{n+1} + (1 - gamma) J_x f_n(x_n)^T c,  gv_n = gamma c,
//   gtheta_n += (1 - gamma) J_theta f_n(x_n)^T c.
// The rounding to fixed point is treated as the identity (straight through).
// The exact and float modes share that reverse sweep; they differ only in how
// a layer is rebuilt.
//
// gamma is used as the rational p / 2^k nearest to it (k = gamma_bits, 16 by
// default: gamma = 0.9 becomes 58982 / 65536 = 0.899993896...), in every mode.
//
// Blocks are called with a CallContext (call_context.hpp): the layer, the
// stack's step (its count of forward passes, the same on replay), train/eval,
// replay (true when the backward rebuilds a layer), the seed and the extra
// inputs.
//
// A recorded forward pass refers to the model through a cell the model
// updates when it moves, so moving a model (a growing std::vector of them)
// between forward and backward is safe; destroying it makes the backward
// throw.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/block_stack.hpp"
#include "momnet/call_context.hpp"
#include "momnet/exact_momentum.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/memory.hpp"
#include "momnet/module.hpp"
#include "momnet/momentum_options.hpp"
#include "momnet/momentum_state.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/residual.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

template <class Block>
class MomentumResidual {
 public:
  using Scalar = typename Block::Scalar;
  using T = Scalar;
  using Observer = std::function<void(const LayerEvent<T>&)>;

  explicit MomentumResidual(BlockStack<Block> stack, MomentumOptions options = {})
      : stack_(std::move(stack)), options_(validated(options)),
        format_(options_.fraction_bits == 0 ? default_fraction_bits<T>() : options_.fraction_bits),
        gamma_(options_.gamma, options_.gamma_bits), self_(std::make_shared<MomentumResidual*>(this)) {
    const bool to_zero = options_.gamma > 0.0 && gamma_.numerator() == 0;
    const bool to_one = options_.gamma < 1.0 && gamma_.numerator() == gamma_.denominator();
    if (to_zero || to_one) {
      throw std::invalid_argument("momnet::MomentumResidual: gamma = " + precise(options_.gamma) + " rounds to " +
                                  (to_zero ? "0" : "1") + " at gamma_bits = " + std::to_string(options_.gamma_bits) +
                                  "; use more gamma_bits");
    }
    if (options_.mode != BackwardMode::stored && gamma_.numerator() == 0) {
      throw std::invalid_argument(
          "momnet::MomentumResidual: gamma = 0 has no inverse; the memory-free backward modes need "
          "gamma > 0 (use BackwardMode::stored, or Residual)");
    }
  }
  // One block per layer.
  explicit MomentumResidual(std::vector<Block> blocks, MomentumOptions options = {})
      : MomentumResidual(BlockStack<Block>(std::move(blocks)), options) {}
  // One block applied `depth` times (weight-tied depth).
  MomentumResidual(Block block, std::size_t depth, MomentumOptions options = {})
      : MomentumResidual(BlockStack<Block>(std::move(block), depth), options) {}

  // A copy is a new model: passes recorded on the original stay with it.
  MomentumResidual(const MomentumResidual& other)
      : stack_(other.stack_), options_(other.options_), format_(other.format_), gamma_(other.gamma_),
        observer_(other.observer_), step_(other.step_), training_(other.training_),
        self_(std::make_shared<MomentumResidual*>(this)) {}
  // A move takes the passes recorded on `other` along: their backward runs here.
  MomentumResidual(MomentumResidual&& other) noexcept
      : stack_(std::move(other.stack_)), options_(other.options_), format_(other.format_), gamma_(other.gamma_),
        observer_(std::move(other.observer_)), step_(other.step_), training_(other.training_),
        self_(std::move(other.self_)) {
    *self_ = this;
    other.self_ = std::make_shared<MomentumResidual*>(&other);
  }
  MomentumResidual& operator=(const MomentumResidual& other) {
    if (this != &other) *this = MomentumResidual(other);
    return *this;
  }
  MomentumResidual& operator=(MomentumResidual&& other) noexcept {
    if (this == &other) return *this;
    *self_ = nullptr;  // passes recorded on the model being replaced can no longer run
    stack_ = std::move(other.stack_);
    options_ = other.options_;
    format_ = other.format_;
    gamma_ = other.gamma_;
    observer_ = std::move(other.observer_);
    step_ = other.step_;
    training_ = other.training_;
    self_ = std::move(other.self_);
    *self_ = this;
    other.self_ = std::make_shared<MomentumResidual*>(&other);
    return *this;
  }
  ~MomentumResidual() {
    if (self_) *self_ = nullptr;
  }

  // x_N from x_0 with v_0 = 0; `extra`, when given, goes to every block.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const Var<T>& extra = Var<T>()) {
    return forward(tape, x, Var<T>(), extra).x;
  }
  // x_N from x_0 with v_0 = 0 and any number of extra inputs for the blocks.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const std::vector<Var<T>>& extras) {
    return forward(tape, x, Var<T>(), extras).x;
  }

  // (x_N, v_N) from x_0 and v_0 (`velocity`, or zero when empty). For an
  // initial velocity v_0 = g(x_0), record g on the tape and pass its output:
  // it receives gradients like any Var.
  MomentumOutput<T> forward(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity = Var<T>(),
                            const Var<T>& extra = Var<T>()) {
    return forward(tape, x, velocity, extra.valid() ? std::vector<Var<T>>{extra} : std::vector<Var<T>>{});
  }
  MomentumOutput<T> forward(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                            const std::vector<Var<T>>& extras) {
    const char* name = "momnet::MomentumResidual";
    detail::common_tape(name, x);
    if (&x.tape() != &tape) throw std::invalid_argument(std::string(name) + ": x belongs to another tape");
    if (velocity.valid()) {
      detail::common_tape(name, x, velocity);
      if (velocity.shape() != x.shape()) {
        detail::throw_shapes(name, x.shape(), velocity.shape(), "the velocity must have the shape of x");
      }
    }
    for (const Var<T>& extra : extras) detail::common_tape(name, x, extra);
    const Call call{step_, training_};
    ++step_;
    if (!tape.grad_enabled()) return forward_without_gradients(tape, x, velocity, extras, call);
    switch (options_.mode) {
      case BackwardMode::exact: return forward_exact(tape, x, velocity, extras, call);
      case BackwardMode::stored: return forward_stored(tape, x, velocity, extras, call);
      case BackwardMode::float_inverse: return forward_float(tape, x, velocity, extras, call);
    }
    throw std::logic_error("momnet::MomentumResidual: unknown backward mode");
  }

  // The exact forward pass outside any tape (inference), keeping the final
  // fixed-point state and its bit store so that inverse() can undo it.
  MomentumState<T> evaluate(const Tensor<T>& x, const Tensor<T>* velocity = nullptr,
                            const Tensor<T>* extra = nullptr) {
    return evaluate(x, velocity, extra != nullptr ? std::vector<const Tensor<T>*>{extra} : std::vector<const Tensor<T>*>{});
  }
  MomentumState<T> evaluate(const Tensor<T>& x, const Tensor<T>* velocity, const std::vector<const Tensor<T>*>& extras) {
    if (options_.mode == BackwardMode::float_inverse) {
      throw std::logic_error("momnet::MomentumResidual::evaluate: runs the exact arithmetic; this model uses "
                             "BackwardMode::float_inverse");
    }
    if (velocity != nullptr && velocity->shape() != x.shape()) {
      detail::throw_shapes("momnet::MomentumResidual::evaluate", x.shape(), velocity->shape(),
                           "the velocity must have the shape of x");
    }
    MomentumState<T> state(x.shape(), format_, gamma_);
    state.engine_.load(x.data(), velocity != nullptr ? velocity->data() : nullptr);
    state.input_digest_ = state.digest();
    state.step_ = step_;
    state.training_ = training_;
    Tape<T> tape(*state.counter_);
    typename Tape<T>::NoGradScope no_grad(tape);
    const std::vector<Var<T>> vars = constants(tape, extras);
    run_exact_forward(tape, state.engine_, x.shape(), vars, Call{state.step_, state.training_});
    state.layer_ = stack_.depth();
    return state;
  }

  // Rebuilds the input state (x_0, v_0) from an output state of evaluate(),
  // exactly: every bit the forward pass dropped is taken back from the store.
  // Throws ReconstructionError when the result is not the state evaluate()
  // started from (parameters or extra inputs changed in between).
  void inverse(MomentumState<T>& state, const Tensor<T>* extra = nullptr) {
    inverse(state, extra != nullptr ? std::vector<const Tensor<T>*>{extra} : std::vector<const Tensor<T>*>{});
  }
  void inverse(MomentumState<T>& state, const std::vector<const Tensor<T>*>& extras) {
    if (options_.mode == BackwardMode::float_inverse || gamma_.numerator() == 0) {
      throw std::logic_error("momnet::MomentumResidual::inverse: needs the exact arithmetic (mode exact or "
                             "stored) and gamma > 0");
    }
    if (state.layer_ == MomentumState<T>::broken) {
      throw std::logic_error("momnet::MomentumResidual::inverse: an earlier inverse of this state failed "
                             "part-way; the state is no longer usable");
    }
    if (state.layer_ != stack_.depth()) {
      throw std::logic_error("momnet::MomentumResidual::inverse: the state stands at layer " +
                             std::to_string(state.layer_) + ", not at the output (layer " +
                             std::to_string(stack_.depth()) + ")");
    }
    Tape<T> tape(*state.counter_);
    typename Tape<T>::NoGradScope no_grad(tape);
    const std::vector<Var<T>> vars = constants(tape, extras);
    const Call call{state.step_, state.training_};
    state.layer_ = MomentumState<T>::broken;  // until every layer is undone
    for (std::size_t n = stack_.depth(); n-- > 0;) {
      const TapeScope<T> layer(tape);
      rebuild_layer(tape, state.engine_, n, state.shape_, vars, call, false);
    }
    state.engine_.verify_store_empty();
    if (state.digest() != state.input_digest_) {
      throw ReconstructionError(
          "momnet::MomentumResidual::inverse: the rebuilt input state differs from the one evaluate() started "
          "from: the parameters or the extra inputs changed in between");
    }
    state.engine_.release_spent_spills();
    state.layer_ = 0;
  }

  // Called with every layer's state in forward and backward passes (tests
  // use it to prove the rebuild is bitwise); empty by default.
  void set_observer(Observer observer) { observer_ = std::move(observer); }

  // Blocks named `0`, `1`, ... from options().first_block_name (a
  // weight-tied stack names its one block once).
  template <class Visitor>
  void visit_state(Visitor& visit) {
    stack_.visit_state(visit, options_.first_block_name);
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    for_each_parameter(*this, visit);
  }

  // Train or eval mode, passed to the blocks in their CallContext (set by
  // momnet::train / eval / set_training on any enclosing module).
  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }
  // The number of forward passes so far: the step the next pass gives its
  // blocks. Set it to resume a run (random draws are keyed by it).
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

  std::size_t depth() const noexcept { return stack_.depth(); }
  const MomentumOptions& options() const noexcept { return options_; }
  // gamma as used: the rational p / 2^k.
  const RationalGamma& gamma() const noexcept { return gamma_; }
  const FixedPointFormat& fixed_point() const noexcept { return format_; }
  BlockStack<Block>& stack() noexcept { return stack_; }
  const BlockStack<Block>& stack() const noexcept { return stack_; }

 private:
  // What is fixed for a whole pass, forward and backward.
  struct Call {
    std::uint64_t step;
    bool training;
  };
  using Self = std::shared_ptr<MomentumResidual*>;

  static std::string precise(double value) { return precise_string(value); }


  static MomentumOptions validated(MomentumOptions options) {
    const std::string name = "momnet::MomentumResidual: ";
    if (!(options.gamma >= 0.0 && options.gamma <= 1.0)) {
      throw std::invalid_argument(name + "gamma must lie in [0, 1], got " + precise(options.gamma));
    }
    if (!(options.float_drift_tolerance >= 0.0)) {
      throw std::invalid_argument(name + "float_drift_tolerance must be >= 0, got " +
                                  precise(options.float_drift_tolerance));
    }
    if (options.fraction_bits != 0) FixedPointFormat{options.fraction_bits};
    return options;
  }

  // The model a recorded pass belongs to, wherever it has moved.
  static MomentumResidual& live(const Self& self) {
    if (*self == nullptr) {
      throw std::logic_error(
          "momnet::MomentumResidual: the model was destroyed (or assigned over) between the forward pass and "
          "its backward pass; keep it alive until backward has run");
    }
    return **self;
  }

  static std::vector<Var<T>> constants(Tape<T>& tape, const std::vector<const Tensor<T>*>& tensors) {
    std::vector<Var<T>> vars;
    for (const Tensor<T>* t : tensors) {
      if (t == nullptr) throw std::invalid_argument("momnet::MomentumResidual: an extra input is null");
      vars.push_back(tape.constant(*t));
    }
    return vars;
  }

  CallContext<T> context(std::size_t layer, const Call& call, bool replay, const Var<T>* extras,
                         std::size_t extra_count) const {
    CallContext<T> ctx(extras, extra_count);
    ctx.layer = layer;
    ctx.step = call.step;
    ctx.training = call.training;
    ctx.replay = replay;
    ctx.seed = options_.seed;
    return ctx;
  }

  Var<T> evaluate_block(Tape<T>& tape, std::size_t n, const Var<T>& x, const CallContext<T>& ctx) {
    return detail::residual_function(stack_.layer(n), tape, x, ctx, options_.residual_blocks,
                                     "momnet::MomentumResidual");
  }

  // Layer n at x_n for the sweeps that keep no per-layer nodes: the block's
  // output on the tape and the values of f_n(x_n). For a non-residual block
  // f = out - x_n is computed off the tape (the same bits as sub()), and
  // backward_layer() subtracts the seed itself: no node, no gradient buffer
  // and no reverse pass for the subtraction.
  struct LayerOutput {
    Var<T> x;
    Var<T> out;
    const T* f;
  };
  LayerOutput evaluate_layer(Tape<T>& tape, std::size_t n, const Var<T>& x, const CallContext<T>& ctx) {
    const Var<T> out = detail::block_output(stack_.layer(n), tape, x, ctx, "momnet::MomentumResidual");
    if (options_.residual_blocks) return {x, out, out.data()};
    T* f = tape.allocate(x.size());
    array_view(f, x.size()) = out.array() - x.array();
    return {x, out, f};
  }

  void notify(typename LayerEvent<T>::Phase phase, std::size_t n, const ExactMomentum<T>& state) const {
    if (!observer_) return;
    LayerEvent<T> event{phase, n, state.elements()};
    event.x_fixed = state.x();
    event.v_fixed = state.v();
    observer_(event);
  }
  void notify(typename LayerEvent<T>::Phase phase, std::size_t n, Eigen::Index elements, const T* x,
              const T* v) const {
    if (!observer_) return;
    LayerEvent<T> event{phase, n, elements};
    event.x = x;
    event.v = v;
    observer_(event);
  }

  // The forward layers on the exact state, recording nothing that outlives a
  // layer. `replay`: a second run of a forward pass already taken (no running
  // statistics updated again, the same dropout masks).
  void run_exact_forward(Tape<T>& tape, ExactMomentum<T>& state, const Shape& shape,
                         const std::vector<Var<T>>& extras, const Call& call, bool replay = false) {
    typename Tape<T>::NoGradScope no_grad(tape);
    // x_n and x_{n+1} in two buffers that trade places: step() writes the
    // next layer's input in its own pass over the state.
    const TapeScope<T> sweep(tape);
    T* xn = tape.allocate(shape.size());
    T* next = tape.allocate(shape.size());
    state.read_x(xn);
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      notify(LayerEvent<T>::Phase::forward, n, state);
      const TapeScope<T> layer(tape);
      const LayerOutput layer_output =
          evaluate_layer(tape, n, tape.leaf(shape, xn, false), context(n, call, replay, extras.data(), extras.size()));
      state.step(layer_output.f, n, next);
      std::swap(xn, next);
    }
  }

  // Undoes layer n of `state` (x_{n+1}, v_{n+1} -> x_n, v_n), recording x_n
  // and the block's output on the tape, and returns them.
  LayerOutput rebuild_layer(Tape<T>& tape, ExactMomentum<T>& state, std::size_t n, const Shape& shape,
                                          const std::vector<Var<T>>& extras, const Call& call, bool with_gradient) {
    T* xn_value = tape.allocate(shape.size());
    state.unstep_position(n, xn_value);
    const Var<T> xn = tape.leaf(shape, xn_value, with_gradient);
    const LayerOutput layer_output = evaluate_layer(tape, n, xn, context(n, call, true, extras.data(), extras.size()));
    state.unstep_velocity(layer_output.f, n);
    notify(LayerEvent<T>::Phase::backward, n, state);
    return layer_output;
  }

  // Words for an exact state of `elements` values on the tape's arena.
  static typename ExactMomentum<T>::Words arena_words(Tape<T>& tape, Eigen::Index elements) {
    std::int64_t* x = tape.template allocate_as<std::int64_t>(elements);
    std::int64_t* v = tape.template allocate_as<std::int64_t>(elements);
    return {x, v, tape.template allocate_as<std::uint64_t>(elements)};
  }

  // Words for a state used only during one call, from the tape's gradient
  // pool, which keeps them for the next call of the same size.
  class ScratchWords {
   public:
    ScratchWords(Tape<T>& tape, Eigen::Index elements)
        : x_(tape.scratch(count(elements))), v_(tape.scratch(count(elements))), store_(tape.scratch(count(elements))) {}
    typename ExactMomentum<T>::Words words() const {
      return {reinterpret_cast<std::int64_t*>(x_.data()), reinterpret_cast<std::int64_t*>(v_.data()),
              reinterpret_cast<std::uint64_t*>(store_.data())};
    }

   private:
    // Values of T that hold `elements` 64-bit words.
    static Eigen::Index count(Eigen::Index elements) {
      constexpr Eigen::Index per_word = (8 + sizeof(T) - 1) / sizeof(T);
      if (elements > std::numeric_limits<Eigen::Index>::max() / per_word) {
        throw std::length_error("momnet::MomentumResidual: " + std::to_string(elements) +
                                " elements are too many for the exact state");
      }
      return elements * per_word;
    }
    typename Tape<T>::Scratch x_, v_, store_;
  };

  // The state's x and v, read into new tape storage.
  static std::pair<T*, T*> read_out(Tape<T>& tape, const ExactMomentum<T>& state) {
    T* x = tape.allocate(state.elements());
    T* v = tape.allocate(state.elements());
    state.read_x(x);
    state.read_v(v);
    return {x, v};
  }

  MomentumOutput<T> forward_without_gradients(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                                              const std::vector<Var<T>>& extras, const Call& call) {
    if (options_.mode == BackwardMode::float_inverse) return forward_float(tape, x, velocity, extras, call);
    const ScratchWords words(tape, x.size());
    ExactMomentum<T> state(x.size(), format_, gamma_, tape.memory(), words.words());
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    run_exact_forward(tape, state, x.shape(), extras, call);
    auto [x_value, v_value] = read_out(tape, state);
    return {tape.leaf(x.shape(), x_value, false), tape.leaf(x.shape(), v_value, false), state.store_bytes(),
            state.spill_count()};
  }

  // The inputs of the one node: x, the velocity (possibly empty), the extras.
  static std::vector<Var<T>> node_inputs(const Var<T>& x, const Var<T>& velocity, const std::vector<Var<T>>& extras) {
    std::vector<Var<T>> inputs{x, velocity};
    inputs.insert(inputs.end(), extras.begin(), extras.end());
    return inputs;
  }

  // The parameters' statuses and versions at the forward pass: the rebuild
  // re-records the blocks, so the tape's own check never sees them.
  struct Watched {
    std::shared_ptr<const ParameterStatus> status;
    std::uint64_t version;
    Shape shape;
  };
  std::vector<Watched> watch_parameters() {
    std::vector<Watched> watched;
    for_each_parameter(*this, [&watched](Parameter<T>& p) { watched.push_back({p.status(), p.version(), p.shape()}); });
    return watched;
  }
  static void check_watched(const std::vector<Watched>& watched) {
    for (const Watched& w : watched) {
      if (w.status) Tape<T>::check_parameter(*w.status, w.version, "momnet::MomentumResidual", w.shape);
    }
  }

  // Throws if Eigen's thread count changed since the forward pass: products
  // split differently round differently, and the exact rebuild needs the
  // same bits.
  static void check_threads(int recorded) {
    const int now = Eigen::nbThreads();
    if (now != recorded) {
      throw ReconstructionError("momnet::MomentumResidual: Eigen ran on " + std::to_string(recorded) +
                                " thread(s) in the forward pass and on " + std::to_string(now) +
                                " in the backward pass; the rebuild must recompute each block with the same "
                                "thread count (Eigen::setNbThreads) to get the same bits");
    }
  }

  // One layer of the backward recursion: takes the VJP of f_n at the rebuilt
  // x_n (on the tape: `layer.x`, the block's output `layer.out`), and updates
  // gx, gv. For a non-residual block f = out - x, so J_f^T = J_out^T - I.
  void backward_layer(Tape<T>& tape, const LayerOutput& layer, const typename Tape<T>::Mark& floor, T* gx, T* gv,
                      T gamma, T complement) const {
    const Eigen::Index n = layer.x.size();
    auto GX = array_view(gx, n);
    auto GV = array_view(gv, n);
    T* seed = tape.allocate(n);
    auto Seed = array_view(seed, n);
    Seed = complement * (GX + GV);  // (1 - gamma) c
    GV = gamma * (GX + GV);         // gv_n = gamma c
    tape.backward_from(layer.out, seed, floor);
    GX += array_view(tape.gradient_for(layer.x), n);  // gx_n = gx + (1 - gamma) J^T c
    if (!options_.residual_blocks) GX -= Seed;
  }

  // The reverse sweep shared by the exact and float modes: start() sets up
  // working memory inside the sweep's scope; from the output gradients,
  // rebuild(n) re-records layer n (returning its LayerOutput) and its VJP
  // updates (gx, gv); finish() checks the rebuilt input; then the gradients
  // of x_0 and v_0 go to inputs 0 and 1.
  template <class Start, class Rebuild, class Finish>
  void reverse_sweep(Gradients<T>& g, Eigen::Index n_elements, Start&& start, Rebuild&& rebuild, Finish&& finish) {
    Tape<T>& tape = g.tape();
    // Every input's gradient buffer exists before the nested scopes, which
    // add into those of the extras.
    T* gx_in = g.input(0);
    T* gv_in = g.input(1);
    for (std::size_t i = 2; i < g.input_count(); ++i) g.input(i);
    const TapeScope<T> scope(tape);
    start();
    T* gx = tape.allocate(n_elements);
    T* gv = tape.allocate(n_elements);
    array_view(gx, n_elements) = array_view(g.output(0), n_elements);
    array_view(gv, n_elements) = array_view(g.output(1), n_elements);
    const T gamma = static_cast<T>(gamma_.value()), complement = static_cast<T>(gamma_.complement());
    for (std::size_t n = stack_.depth(); n-- > 0;) {
      const TapeScope<T> layer(tape);
      backward_layer(tape, rebuild(n), layer.mark(), gx, gv, gamma, complement);
    }
    finish();
    if (gx_in != nullptr) array_view(gx_in, n_elements) += array_view(static_cast<const T*>(gx), n_elements);
    if (gv_in != nullptr) array_view(gv_in, n_elements) += array_view(static_cast<const T*>(gv), n_elements);
  }

  MomentumOutput<T> forward_exact(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                                  const std::vector<Var<T>>& extras, const Call& call) {
    const Shape shape = x.shape();
    // The state lives as long as the node: its words go on the tape's arena,
    // released with the node and reused by the next step.
    ExactMomentum<T> state(shape.size(), format_, gamma_, tape.memory(), arena_words(tape, shape.size()));
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    run_exact_forward(tape, state, shape, extras, call);
    const std::size_t store_bytes = state.store_bytes(), spills = state.spill_count();
    auto [x_value, v_value] = read_out(tape, state);
    std::vector<Watched> watched = watch_parameters();
    const bool has_parameters = !watched.empty();
    // The backward rewinds the state in place, layer by layer, instead of a
    // copy of it: no second set of words (24 bytes per value) and no pass to
    // copy them. A later backward through this node (a second loss, or one
    // after a failed pass) finds the state rewound, or part-way, and first
    // runs the forward layers again from x_0 and v_0, replayed.
    auto rule = [self = self_, state = std::move(state), at_output = true, x, velocity, extras, shape, call,
                 threads = Eigen::nbThreads(), watched = std::move(watched)](Gradients<T>& g) mutable {
      MomentumResidual& net = live(self);
      check_watched(watched);
      check_threads(threads);
      const T* v0 = velocity.valid() ? velocity.data() : nullptr;
      net.reverse_sweep(
          g, shape.size(),
          [&] {
            if (!at_output) {
              state.load(x.data(), v0);
              net.run_exact_forward(g.tape(), state, shape, extras, call, true);
            }
            at_output = false;  // from here until the next run of this rule
          },
          [&](std::size_t n) { return net.rebuild_layer(g.tape(), state, n, shape, extras, call, true); },
          [&] { state.verify_rebuilt(x.data(), v0); });
    };
    const auto [x_out, v_out] = tape.template record_op<2>(
        node_inputs(x, velocity, extras),
        std::array<typename Tape<T>::Output, 2>{{{shape, x_value}, {shape, v_value}}}, std::move(rule),
        has_parameters);
    return {x_out, v_out, store_bytes, spills};
  }

  // Same fixed-point forward as exact mode, recorded layer by layer: x_{n+1}
  // and v_{n+1} are nodes whose values come from the exact state and whose
  // gradients follow the real-valued recurrence.
  MomentumOutput<T> forward_stored(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                                   const std::vector<Var<T>>& extras, const Call& call) {
    const Shape shape = x.shape();
    const Eigen::Index n_elements = shape.size();
    const ScratchWords words(tape, n_elements);
    ExactMomentum<T> state(n_elements, format_, gamma_, tape.memory(), words.words());
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    auto [x_start, v_start] = read_out(tape, state);
    // The rounding to fixed point passes gradients straight through.
    const auto pass = [n_elements](Gradients<T>& g) {
      if (T* gi = g.input(0)) array_view(gi, n_elements) += array_view(g.output(0), n_elements);
    };
    Var<T> xn = tape.record_op({x}, shape, x_start, pass);
    Var<T> vn = velocity.valid() ? tape.record_op({velocity}, shape, v_start, pass) : tape.leaf(shape, v_start, false);
    const T gamma = static_cast<T>(gamma_.value()), complement = static_cast<T>(gamma_.complement());
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      notify(LayerEvent<T>::Phase::forward, n, state);
      const Var<T> f = evaluate_block(tape, n, xn, context(n, call, false, extras.data(), extras.size()));
      T* x_next = tape.allocate(n_elements);
      T* v_next = tape.allocate(n_elements);
      state.step(f.data(), n, x_next);
      state.read_v(v_next);
      vn = tape.record_op({vn, f}, shape, v_next, [gamma, complement, n_elements](Gradients<T>& g) {
        const auto G = array_view(g.output(0), n_elements);
        if (T* gv = g.input(0)) array_view(gv, n_elements) += gamma * G;
        if (T* gf = g.input(1)) array_view(gf, n_elements) += complement * G;
      });
      xn = tape.record_op({xn, vn}, shape, x_next, [n_elements](Gradients<T>& g) {
        const auto G = array_view(g.output(0), n_elements);
        if (T* gx = g.input(0)) array_view(gx, n_elements) += G;
        if (T* gv = g.input(1)) array_view(gv, n_elements) += G;
      });
    }
    return {xn, vn, state.store_bytes(), state.spill_count()};
  }

  // Floating-point forward; with gradients on, one node whose backward runs
  // the floating-point inverse.
  MomentumOutput<T> forward_float(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                                  const std::vector<Var<T>>& extras, const Call& call) {
    const Shape shape = x.shape();
    const Eigen::Index n_elements = shape.size();
    const T gamma = static_cast<T>(gamma_.value()), complement = static_cast<T>(gamma_.complement());
    T* x_value = tape.allocate(n_elements);
    T* v_value = tape.allocate(n_elements);
    auto X = array_view(x_value, n_elements);
    auto V = array_view(v_value, n_elements);
    X = x.array();
    if (velocity.valid()) {
      V = velocity.array();
    } else {
      V.setZero();
    }
    {
      typename Tape<T>::NoGradScope no_grad(tape);
      for (std::size_t n = 0; n < stack_.depth(); ++n) {
        notify(LayerEvent<T>::Phase::forward, n, n_elements, x_value, v_value);
        const TapeScope<T> layer(tape);
        T* xn = tape.allocate(n_elements);
        array_view(xn, n_elements) = X;
        const LayerOutput layer_output = evaluate_layer(tape, n, tape.leaf(shape, xn, false),
                                                        context(n, call, false, extras.data(), extras.size()));
        V = gamma * V + complement * array_view(layer_output.f, n_elements);
        X += V;
      }
    }
    if (!tape.grad_enabled()) return {tape.leaf(shape, x_value, false), tape.leaf(shape, v_value, false)};
    std::vector<Watched> watched = watch_parameters();
    const bool has_parameters = !watched.empty();
    auto rule = [self = self_, x, velocity, extras, shape, call, x_value, v_value, gamma, complement,
                 watched = std::move(watched)](Gradients<T>& g) {
      MomentumResidual& net = live(self);
      check_watched(watched);
      Tape<T>& tape = g.tape();
      const Eigen::Index n_elements = shape.size();
      // The rebuilt state, for the final check.
      T* x_work = nullptr;
      T* v_work = nullptr;
      net.reverse_sweep(
          g, n_elements,
          [&] {
            x_work = tape.allocate(n_elements);
            v_work = tape.allocate(n_elements);
            array_view(x_work, n_elements) = array_view(static_cast<const T*>(x_value), n_elements);
            array_view(v_work, n_elements) = array_view(static_cast<const T*>(v_value), n_elements);
          },
          [&](std::size_t n) {
            auto X = array_view(x_work, n_elements);
            auto V = array_view(v_work, n_elements);
            X -= V;
            T* xn_value = tape.allocate(n_elements);
            array_view(xn_value, n_elements) = X;
            const Var<T> xn = tape.leaf(shape, xn_value, true);
            const LayerOutput layer_output =
                net.evaluate_layer(tape, n, xn, net.context(n, call, true, extras.data(), extras.size()));
            V = (V - complement * array_view(layer_output.f, n_elements)) / gamma;
            net.notify(LayerEvent<T>::Phase::backward, n, n_elements, x_work, v_work);
            return layer_output;
          },
          [&] {
            net.check_drift(x_work, x.data(), n_elements, "x_0");
            net.check_drift(v_work, velocity.valid() ? velocity.data() : nullptr, n_elements, "v_0");
          });
    };
    const auto [x_out, v_out] = tape.template record_op<2>(
        node_inputs(x, velocity, extras),
        std::array<typename Tape<T>::Output, 2>{{{shape, x_value}, {shape, v_value}}}, std::move(rule),
        has_parameters);
    return {x_out, v_out};
  }

  // Throws unless max |rebuilt - real| / max(1, max |real|) is within the
  // tolerance; `real` null means zeros.
  void check_drift(const T* rebuilt, const T* real, Eigen::Index n, const char* what) const {
    double difference = 0.0, scale = 1.0;
    bool finite = true;
    for (Eigen::Index i = 0; i < n; ++i) {
      const double reference = real != nullptr ? static_cast<double>(real[i]) : 0.0;
      const double d = std::abs(static_cast<double>(rebuilt[i]) - reference);
      finite = finite && is_finite_bits(d);  // survives -ffast-math
      difference = std::max(difference, finite ? d : 0.0);
      scale = std::max(scale, std::abs(reference));
    }
    const double drift = finite ? difference / scale : INFINITY;
    if (!(drift <= options_.float_drift_tolerance)) {
      std::ostringstream message;
      message << "momnet::MomentumResidual: the float_inverse backward drifted: the rebuilt " << what
              << " differs from the real one by " << drift << " (relative to max(1, max |" << what
              << "|)), over float_drift_tolerance " << options_.float_drift_tolerance
              << "; its gradients would be wrong. Use BackwardMode::exact";
      throw ReconstructionError(message.str());
    }
  }

  BlockStack<Block> stack_;
  MomentumOptions options_;
  FixedPointFormat format_;
  RationalGamma gamma_;
  Observer observer_;
  std::uint64_t step_ = 0;
  bool training_ = true;
  Self self_;  // the cell recorded passes reach this model through
};

// The momentum counterpart of a residual network, with a copy of its blocks
// (the ResNet stays usable and independent): `auto net = to_momentum(resnet, 0.9);`
template <class Block>
MomentumResidual<Block> to_momentum(const Residual<Block>& residual, double gamma, MomentumOptions options = {}) {
  options.gamma = gamma;
  options.residual_blocks = residual.options().residual_blocks;
  options.seed = residual.options().seed;
  options.first_block_name = residual.options().first_block_name;
  MomentumResidual<Block> net(residual.stack(), options);
  net.set_training(residual.training());
  net.set_step(residual.step());
  return net;
}

}  // namespace momnet
