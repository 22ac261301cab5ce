// Momentum Residual Networks (Sander, Ablin, Blondel and Peyre, ICML 2021):
//
//   v_{n+1} = gamma v_n + (1 - gamma) f_n(x_n)
//   x_{n+1} = x_n + v_{n+1}
//
// The rule is invertible for gamma > 0, so the backward pass can rebuild every
// activation from the output instead of storing it. Backward modes:
//
//   exact          (default) One node on the caller's tape keeps only the final
//                  state, in 64-bit fixed point, and a bit store of the bits
//                  the multiplications by gamma drop (exact_momentum.hpp). Its
//                  backward walks the layers in reverse, rebuilding x_n and v_n
//                  bit for bit, re-recording one block at a time on a nested
//                  scope, taking its vector-Jacobian product and rewinding.
//                  Activation memory is one block's, whatever the depth.
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
//
// gamma is used as the rational p / 2^k nearest to it (k = gamma_bits, 16 by
// default: gamma = 0.9 becomes 58982 / 65536 = 0.899993896...), in every mode.
//
// The model must not move or be destroyed between a forward pass and the
// backward pass of the tape it was recorded on: the tape calls its blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/block_stack.hpp"
#include "momnet/exact_momentum.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/memory.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/residual.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

enum class BackwardMode { exact, stored, float_inverse };

inline const char* to_string(BackwardMode mode) {
  switch (mode) {
    case BackwardMode::exact: return "exact";
    case BackwardMode::stored: return "stored";
    case BackwardMode::float_inverse: return "float_inverse";
  }
  return "unknown";
}

struct MomentumOptions {
  double gamma = 0.9;
  BackwardMode mode = BackwardMode::exact;
  // false: each block computes x + h(x) itself and f(x) = block(x) - x.
  bool residual_blocks = true;
  // Fixed-point fraction bits F; 0 picks the scalar's default (float 32,
  // double 44; see fixed_point.hpp for range and resolution).
  int fraction_bits = 0;
  // k in gamma = p / 2^k.
  int gamma_bits = 16;
  // float_inverse only: the largest difference allowed between the rebuilt
  // and the real input, max |x_rebuilt - x| / max(1, max |x|), before the
  // backward pass throws ReconstructionError. The gradients it accumulated
  // before throwing are invalid: zero them before the next step.
  double float_drift_tolerance = 1e-3;
};

template <class T>
struct MomentumOutput {
  Var<T> x;  // x_N
  Var<T> v;  // v_N
  std::size_t bit_store_bytes = 0;  // exact mode: bytes held by the bit store
  std::size_t spills = 0;           // exact mode: layers that spilled the store
};

// What an observer sees: the state (x_n, v_n) entering layer n, in the forward
// pass before the layer and in the backward pass once rebuilt. Fixed-point
// words in the exact and stored modes, reals in float_inverse.
template <class T>
struct LayerEvent {
  enum class Phase { forward, backward };
  Phase phase;
  std::size_t layer;
  Eigen::Index elements;
  const std::int64_t* x_fixed = nullptr;
  const std::int64_t* v_fixed = nullptr;
  const T* x = nullptr;
  const T* v = nullptr;
};

// An exact state outside any tape, for MomentumResidual::evaluate / inverse.
template <class T>
class MomentumState {
 public:
  const Shape& shape() const noexcept { return shape_; }
  // The layer the state stands at: depth after evaluate(), 0 after inverse().
  std::size_t layer() const noexcept { return layer_; }
  // layer() of a state whose inverse failed part-way.
  static constexpr std::size_t broken = ~std::size_t{0};
  Tensor<T> x() const { return read(&ExactMomentum<T>::read_x); }
  Tensor<T> v() const { return read(&ExactMomentum<T>::read_v); }
  const ExactMomentum<T>& exact() const noexcept { return engine_; }
  std::size_t bit_store_bytes() const noexcept { return engine_.store_bytes(); }

 private:
  template <class Block>
  friend class MomentumResidual;

  MomentumState(const Shape& shape, const FixedPointFormat& format, const RationalGamma& gamma)
      : counter_(std::make_unique<MemoryCounter>()),
        engine_(shape.size(), format, gamma, *counter_),
        shape_(shape) {}

  Tensor<T> read(void (ExactMomentum<T>::*reader)(T*) const) const {
    Tensor<T> out(shape_);
    (engine_.*reader)(out.data());
    return out;
  }

  std::unique_ptr<MemoryCounter> counter_;
  ExactMomentum<T> engine_;
  Shape shape_;
  std::size_t layer_ = 0;
};

template <class Block>
class MomentumResidual {
 public:
  using Scalar = typename Block::Scalar;
  using T = Scalar;
  using Observer = std::function<void(const LayerEvent<T>&)>;

  explicit MomentumResidual(BlockStack<Block> stack, MomentumOptions options = {})
      : stack_(std::move(stack)), options_(validated(options)),
        format_(options_.fraction_bits == 0 ? default_fraction_bits<T>() : options_.fraction_bits),
        gamma_(options_.gamma, options_.gamma_bits) {
    const bool to_zero = options_.gamma > 0.0 && gamma_.numerator() == 0;
    const bool to_one = options_.gamma < 1.0 && gamma_.numerator() == gamma_.denominator();
    if (to_zero || to_one) {
      throw std::invalid_argument("momnet::MomentumResidual: gamma = " + std::to_string(options_.gamma) +
                                  " rounds to " + (to_zero ? "0" : "1") + " at gamma_bits = " +
                                  std::to_string(options_.gamma_bits) + "; use more gamma_bits");
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

  // x_N from x_0 with v_0 = 0; `context`, when given, goes to every block.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const Var<T>& context = Var<T>()) {
    return forward(tape, x, Var<T>(), context).x;
  }

  // (x_N, v_N) from x_0 and v_0 (`velocity`, or zero when empty). For an
  // initial velocity v_0 = g(x_0), record g on the tape and pass its output:
  // it receives gradients like any Var.
  MomentumOutput<T> forward(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity = Var<T>(),
                            const Var<T>& context = Var<T>()) {
    const char* name = "momnet::MomentumResidual";
    detail::common_tape(name, x);
    if (&x.tape() != &tape) throw std::invalid_argument(std::string(name) + ": x belongs to another tape");
    if (velocity.valid()) {
      detail::common_tape(name, x, velocity);
      if (velocity.shape() != x.shape()) {
        detail::throw_shapes(name, x.shape(), velocity.shape(), "the velocity must have the shape of x");
      }
    }
    if (context.valid()) detail::common_tape(name, x, context);
    if (!tape.grad_enabled()) return forward_without_gradients(tape, x, velocity, context);
    switch (options_.mode) {
      case BackwardMode::exact: return forward_exact(tape, x, velocity, context);
      case BackwardMode::stored: return forward_stored(tape, x, velocity, context);
      case BackwardMode::float_inverse: return forward_float(tape, x, velocity, context);
    }
    throw std::logic_error("momnet::MomentumResidual: unknown backward mode");
  }

  // The exact forward pass outside any tape (inference), keeping the final
  // fixed-point state and its bit store so that inverse() can undo it.
  MomentumState<T> evaluate(const Tensor<T>& x, const Tensor<T>* velocity = nullptr,
                            const Tensor<T>* context = nullptr) {
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
    Tape<T> tape(*state.counter_);
    typename Tape<T>::NoGradScope no_grad(tape);
    const Var<T> ctx = context != nullptr ? tape.constant(*context) : Var<T>();
    run_exact_forward(tape, state.engine_, x.shape(), ctx);
    state.layer_ = stack_.depth();
    return state;
  }

  // Rebuilds the input state (x_0, v_0) from an output state of evaluate(),
  // exactly: every bit the forward pass dropped is taken back from the store.
  void inverse(MomentumState<T>& state, const Tensor<T>* context = nullptr) {
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
    const Var<T> ctx = context != nullptr ? tape.constant(*context) : Var<T>();
    state.layer_ = MomentumState<T>::broken;  // until every layer is undone
    for (std::size_t n = stack_.depth(); n-- > 0;) {
      const TapeScope<T> layer(tape);
      rebuild_layer(tape, state.engine_, n, state.shape_, ctx, false);
    }
    state.engine_.verify_store_empty();
    state.engine_.release_spent_spills();
    state.layer_ = 0;
  }

  // Called with every layer's state in forward and backward passes (tests
  // use it to prove the rebuild is bitwise); empty by default.
  void set_observer(Observer observer) { observer_ = std::move(observer); }

  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    stack_.visit_parameters(visit);
  }

  std::size_t depth() const noexcept { return stack_.depth(); }
  const MomentumOptions& options() const noexcept { return options_; }
  // gamma as used: the rational p / 2^k.
  const RationalGamma& gamma() const noexcept { return gamma_; }
  const FixedPointFormat& fixed_point() const noexcept { return format_; }
  BlockStack<Block>& stack() noexcept { return stack_; }
  const BlockStack<Block>& stack() const noexcept { return stack_; }

 private:
  static MomentumOptions validated(MomentumOptions options) {
    const std::string name = "momnet::MomentumResidual: ";
    if (!(options.gamma >= 0.0 && options.gamma <= 1.0)) {
      throw std::invalid_argument(name + "gamma must lie in [0, 1], got " + std::to_string(options.gamma));
    }
    if (!(options.float_drift_tolerance >= 0.0)) {
      throw std::invalid_argument(name + "float_drift_tolerance must be >= 0, got " +
                                  std::to_string(options.float_drift_tolerance));
    }
    if (options.fraction_bits != 0) FixedPointFormat{options.fraction_bits};
    return options;
  }

  Var<T> evaluate_block(Tape<T>& tape, std::size_t n, const Var<T>& x, const Var<T>& context) {
    return detail::residual_function(stack_.layer(n), tape, x, context, options_.residual_blocks,
                                     "momnet::MomentumResidual", n);
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

  // The forward layers on the exact state, recording nothing that outlives a layer.
  void run_exact_forward(Tape<T>& tape, ExactMomentum<T>& state, const Shape& shape, const Var<T>& context) {
    typename Tape<T>::NoGradScope no_grad(tape);
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      notify(LayerEvent<T>::Phase::forward, n, state);
      const TapeScope<T> layer(tape);
      T* xn = tape.allocate(shape.size());
      state.read_x(xn);
      const Var<T> f = evaluate_block(tape, n, tape.leaf(shape, xn, false), context);
      state.step(f.data(), n);
    }
  }

  // Undoes layer n of `state` (x_{n+1}, v_{n+1} -> x_n, v_n), recording x_n
  // and f_n(x_n) on the tape, and returns them.
  std::pair<Var<T>, Var<T>> rebuild_layer(Tape<T>& tape, ExactMomentum<T>& state, std::size_t n, const Shape& shape,
                                          const Var<T>& context, bool with_gradient) {
    state.unstep_position(n);
    T* xn_value = tape.allocate(shape.size());
    state.read_x(xn_value);
    const Var<T> xn = tape.leaf(shape, xn_value, with_gradient);
    const Var<T> f = evaluate_block(tape, n, xn, context);
    state.unstep_velocity(f.data(), n);
    notify(LayerEvent<T>::Phase::backward, n, state);
    return {xn, f};
  }

  // The state's x and v, read into new tape storage.
  static std::pair<T*, T*> read_out(Tape<T>& tape, const ExactMomentum<T>& state) {
    T* x = tape.allocate(state.elements());
    T* v = tape.allocate(state.elements());
    state.read_x(x);
    state.read_v(v);
    return {x, v};
  }

  MomentumOutput<T> forward_without_gradients(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity,
                                              const Var<T>& context) {
    if (options_.mode == BackwardMode::float_inverse) return forward_float(tape, x, velocity, context);
    ExactMomentum<T> state(x.size(), format_, gamma_, tape.memory());
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    run_exact_forward(tape, state, x.shape(), context);
    auto [x_value, v_value] = read_out(tape, state);
    return {tape.leaf(x.shape(), x_value, false), tape.leaf(x.shape(), v_value, false), state.store_bytes(),
            state.spill_count()};
  }

  bool needs_gradient(const Var<T>& x, const Var<T>& velocity, const Var<T>& context) {
    bool needs = x.requires_grad() || (velocity.valid() && velocity.requires_grad()) ||
                 (context.valid() && context.requires_grad());
    stack_.visit_parameters([&needs](Parameter<T>&) { needs = true; });
    return needs;
  }

  // Records the second output v_N, whose gradient the x_N node's backward
  // reads from `slot`; using v_N alone still triggers that backward.
  Var<T> record_velocity_output(Tape<T>& tape, const Var<T>& x_out, T* v_value, Var<T>* slot) {
    *slot = tape.record(x_out.shape(), v_value, {x_out},
                        [x_out](const T*) { x_out.tape().gradient_for(x_out); });
    return *slot;
  }

  // Gradient buffers of the inputs, made before any nested scope so that the
  // nested backward passes can add into them.
  static void prepare_gradients(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity, const Var<T>& context) {
    for (const Var<T>* var : {&x, &velocity, &context}) {
      if (var->valid() && var->requires_grad()) tape.gradient_for(*var);
    }
  }

  // One layer of the backward recursion: takes the block's VJP at the rebuilt
  // x_n (already on the tape as `xn`, its output `f`), and updates gx, gv.
  static void backward_layer(Tape<T>& tape, const Var<T>& xn, const Var<T>& f,
                             const typename Tape<T>::Mark& floor, T* gx, T* gv, T gamma,
                             T complement) {
    const Eigen::Index n = xn.size();
    auto GX = array_view(gx, n);
    auto GV = array_view(gv, n);
    T* seed = tape.allocate(n);
    array_view(seed, n) = complement * (GX + GV);  // (1 - gamma) c
    GV = gamma * (GX + GV);                          // gv_n = gamma c
    tape.backward_from(f, seed, floor);
    GX += array_view(tape.gradient_for(xn), n);      // gx_n = gx + (1 - gamma) J^T c
  }

  static void add_gradient(Tape<T>& tape, const Var<T>& var, const T* grad) {
    if (!var.valid() || !var.requires_grad()) return;
    const Eigen::Index n = var.size();
    array_view(tape.gradient_for(var), n) += array_view(grad, n);
  }

  MomentumOutput<T> forward_exact(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity, const Var<T>& context) {
    const Shape shape = x.shape();
    ExactMomentum<T> state(shape.size(), format_, gamma_, tape.memory());
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    run_exact_forward(tape, state, shape, context);
    const std::size_t store_bytes = state.store_bytes(), spills = state.spill_count();
    auto [x_value, v_value] = read_out(tape, state);
    Var<T>* v_slot = tape.template allocate_as<Var<T>>(1);
    *v_slot = Var<T>();
    auto backward = [this, state = std::move(state), x, velocity, context, shape, v_slot](const T* g) {
      Tape<T>& tape = x.tape();
      prepare_gradients(tape, x, velocity, context);
      const TapeScope<T> scope(tape);
      const Eigen::Index n_elements = shape.size();
      auto [gx, gv] = output_gradients(tape, g, *v_slot, n_elements);
      const T gamma = static_cast<T>(gamma_.value()), complement = static_cast<T>(gamma_.complement());
      ExactMomentum<T> rebuilt = state.rewinding_copy();
      for (std::size_t n = stack_.depth(); n-- > 0;) {
        const TapeScope<T> layer(tape);
        const auto [xn, f] = rebuild_layer(tape, rebuilt, n, shape, context, true);
        backward_layer(tape, xn, f, layer.mark(), gx, gv, gamma, complement);
      }
      rebuilt.verify_rebuilt(x.data(), velocity.valid() ? velocity.data() : nullptr);
      add_gradient(tape, x, gx);
      add_gradient(tape, velocity, gv);
    };
    const Var<T> x_out = tape.record_node(shape, x_value, needs_gradient(x, velocity, context), std::move(backward));
    const Var<T> v_out = record_velocity_output(tape, x_out, v_value, v_slot);
    return {x_out, v_out, store_bytes, spills};
  }

  // gx = dL/dx_N (given) and gv = dL/dv_N (zero if v_N was not used), in
  // tape storage that the recursion updates layer by layer.
  static std::pair<T*, T*> output_gradients(Tape<T>& tape, const T* g, const Var<T>& v_out, Eigen::Index n) {
    T* gx = tape.allocate(n);
    T* gv = tape.allocate(n);
    array_view(gx, n) = array_view(g, n);
    const T* g_v = v_out.valid() ? tape.gradient_if_any(v_out) : nullptr;
    if (g_v != nullptr) {
      array_view(gv, n) = array_view(g_v, n);
    } else {
      array_view(gv, n).setZero();
    }
    return {gx, gv};
  }

  // Same fixed-point forward as exact mode, recorded layer by layer: x_{n+1}
  // and v_{n+1} are nodes whose values come from the exact state and whose
  // gradients follow the real-valued recurrence.
  MomentumOutput<T> forward_stored(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity, const Var<T>& context) {
    const Shape shape = x.shape();
    const Eigen::Index n_elements = shape.size();
    ExactMomentum<T> state(n_elements, format_, gamma_, tape.memory());
    state.load(x.data(), velocity.valid() ? velocity.data() : nullptr);
    auto [x_start, v_start] = read_out(tape, state);
    // The rounding to fixed point passes gradients straight through.
    Var<T> xn = tape.record(shape, x_start, {x}, [x, n_elements](const T* g) {
      array_view(x.tape().gradient_for(x), n_elements) += array_view(g, n_elements);
    });
    Var<T> vn = tape.leaf(shape, v_start, false);
    if (velocity.valid()) {
      vn = tape.record(shape, v_start, {velocity}, [velocity, n_elements](const T* g) {
        array_view(velocity.tape().gradient_for(velocity), n_elements) += array_view(g, n_elements);
      });
    }
    const T gamma = static_cast<T>(gamma_.value()), complement = static_cast<T>(gamma_.complement());
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      notify(LayerEvent<T>::Phase::forward, n, state);
      const Var<T> f = evaluate_block(tape, n, xn, context);
      state.step(f.data(), n);
      auto [x_next, v_next] = read_out(tape, state);
      const Var<T> v_prev = vn, x_prev = xn;
      vn = tape.record(shape, v_next, {v_prev, f},
                       [v_prev, f, gamma, complement, n_elements](const T* g) {
                         const auto G = array_view(g, n_elements);
                         if (v_prev.requires_grad()) array_view(v_prev.tape().gradient_for(v_prev), n_elements) += gamma * G;
                         if (f.requires_grad()) array_view(f.tape().gradient_for(f), n_elements) += complement * G;
                       });
      xn = tape.record(shape, x_next, {x_prev, vn},
                       [x_prev, v = vn, n_elements](const T* g) {
                         const auto G = array_view(g, n_elements);
                         if (x_prev.requires_grad()) array_view(x_prev.tape().gradient_for(x_prev), n_elements) += G;
                         if (v.requires_grad()) array_view(v.tape().gradient_for(v), n_elements) += G;
                       });
    }
    return {xn, vn, state.store_bytes(), state.spill_count()};
  }

  // Floating-point forward; with gradients on, one node whose backward runs
  // the floating-point inverse.
  MomentumOutput<T> forward_float(Tape<T>& tape, const Var<T>& x, const Var<T>& velocity, const Var<T>& context) {
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
        const Var<T> f = evaluate_block(tape, n, tape.leaf(shape, xn, false), context);
        V = gamma * V + complement * f.array();
        X += V;
      }
    }
    if (!tape.grad_enabled()) return {tape.leaf(shape, x_value, false), tape.leaf(shape, v_value, false)};
    Var<T>* v_slot = tape.template allocate_as<Var<T>>(1);
    *v_slot = Var<T>();
    auto backward = [this, x, velocity, context, shape, x_value, v_value, v_slot, gamma, complement](const T* g) {
      Tape<T>& tape = x.tape();
      prepare_gradients(tape, x, velocity, context);
      const TapeScope<T> scope(tape);
      const Eigen::Index n_elements = shape.size();
      auto [gx, gv] = output_gradients(tape, g, *v_slot, n_elements);
      T* x_work = tape.allocate(n_elements);
      T* v_work = tape.allocate(n_elements);
      auto X = array_view(x_work, n_elements);
      auto V = array_view(v_work, n_elements);
      X = array_view(static_cast<const T*>(x_value), n_elements);
      V = array_view(static_cast<const T*>(v_value), n_elements);
      for (std::size_t n = stack_.depth(); n-- > 0;) {
        X -= V;
        const TapeScope<T> layer(tape);
        T* xn_value = tape.allocate(n_elements);
        array_view(xn_value, n_elements) = X;
        const Var<T> xn = tape.leaf(shape, xn_value, true);
        const Var<T> f = evaluate_block(tape, n, xn, context);
        V = (V - complement * f.array()) / gamma;
        notify(LayerEvent<T>::Phase::backward, n, n_elements, x_work, v_work);
        backward_layer(tape, xn, f, layer.mark(), gx, gv, gamma, complement);
      }
      check_drift(x_work, x.data(), n_elements, "x_0");
      check_drift(v_work, velocity.valid() ? velocity.data() : nullptr, n_elements, "v_0");
      add_gradient(tape, x, gx);
      add_gradient(tape, velocity, gv);
    };
    const Var<T> x_out = tape.record_node(shape, x_value, needs_gradient(x, velocity, context), std::move(backward));
    const Var<T> v_out = record_velocity_output(tape, x_out, v_value, v_slot);
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
      finite = finite && std::isfinite(d);
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
};

// The momentum counterpart of a residual network, with a copy of its blocks
// (the ResNet stays usable and independent): `auto net = to_momentum(resnet, 0.9);`
template <class Block>
MomentumResidual<Block> to_momentum(const Residual<Block>& residual, double gamma,
                                    MomentumOptions options = {}) {
  options.gamma = gamma;
  options.residual_blocks = residual.options().residual_blocks;
  return MomentumResidual<Block>(residual.stack(), options);
}

}  // namespace momnet
