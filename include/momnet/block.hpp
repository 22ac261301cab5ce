// The Block concept: what Residual and MomentumResidual require of the
// residual functions f_n they stack.
//
//   class Block {
//    public:
//     using Scalar = float;  // or double
//
//     // REQUIRES: x has the shape this block accepts, say [batch, d] or
//     //           [batch, channels, height, width].
//     // ENSURES:  returns f(x), of the same shape as x, recorded on `tape`
//     //           with momnet's operations (or your own, written with
//     //           Tape::record_op), so that the tape can take its
//     //           vector-Jacobian product. Parameters enter through
//     //           tape.param(p), so their gradients accumulate into p.grad().
//     // One of these three (the stack calls the first that fits):
//     Var<Scalar> forward(Tape<Scalar>& tape, const Var<Scalar>& x, const CallContext<Scalar>& context);
//     Var<Scalar> forward(Tape<Scalar>& tape, const Var<Scalar>& x, const Var<Scalar>& extra);  // one extra input
//     Var<Scalar> forward(Tape<Scalar>& tape, const Var<Scalar>& x);                            // no extra input
//
//     // ENSURES: names every parameter, buffer and member module (module.hpp):
//     //          visit.parameter("weight", w); visit.buffer("running_mean", m);
//     //          visit.child("fc1", fc1).
//     template <class Visitor> void visit_state(Visitor& visit);
//     // (Older blocks may offer visit_parameters(f) instead: f(Parameter&) for each.)
//
//     // Optional: a block with a train/eval mode of its own (dropout, batch norm).
//     void set_training(bool training);
//   };
//
// The context (call_context.hpp) carries the layer index, the training step,
// train/eval, whether the call is a replay, the stack's seed and its extra
// inputs (context.extra(i): an encoder memory, a mask; they receive
// gradients like any Var).
//
// Replay rules, for the exact memory-free backward (which calls forward again
// on the rebuilt input, with context.replay = true):
//   * forward must be a pure function of x, the context's layer, step,
//     training flag, seed and extra inputs, and the parameters: called again
//     with the same arguments it must return the same bits.
//   * Randomness comes from context.random(stream), keyed by (seed, step,
//     layer): never from a sequential generator, whose next draw differs.
//   * State (running statistics, counters) changes only when
//     context.replay is false: once per layer per training step, whatever
//     the backward mode.
//
// A "non-residual" block computes the whole update g(x) = x + h(x) itself
// (residual_blocks = false in MomentumOptions or ResidualOptions): a
// Residual stack takes x_{n+1} = g(x_n) as it is, a MomentumResidual uses
// f(x) = g(x) - x.
// Use check_block_gradients() to test a block's gradients numerically.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "momnet/call_context.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/tape.hpp"

namespace momnet {
namespace detail {

template <class Block, class T, class = void>
struct has_plain_forward : std::false_type {};
template <class Block, class T>
struct has_plain_forward<Block, T,
                         std::void_t<decltype(std::declval<Block&>().forward(
                             std::declval<Tape<T>&>(), std::declval<const Var<T>&>()))>>
    : std::true_type {};

template <class Block, class T, class = void>
struct has_extra_forward : std::false_type {};
template <class Block, class T>
struct has_extra_forward<Block, T,
                         std::void_t<decltype(std::declval<Block&>().forward(
                             std::declval<Tape<T>&>(), std::declval<const Var<T>&>(),
                             std::declval<const Var<T>&>()))>> : std::true_type {};

template <class Block, class T, class = void>
struct has_context_forward : std::false_type {};
template <class Block, class T>
struct has_context_forward<Block, T,
                           std::void_t<decltype(std::declval<Block&>().forward(
                               std::declval<Tape<T>&>(), std::declval<const Var<T>&>(),
                               std::declval<const CallContext<T>&>()))>> : std::true_type {};

// Calls the block's forward that fits the context: with the context, with its
// one extra input, or with x alone.
template <class Block, class T>
Var<T> call_block(Block& block, Tape<T>& tape, const Var<T>& x, const CallContext<T>& context, const char* stack) {
  if constexpr (has_context_forward<Block, T>::value) {
    return block.forward(tape, x, context);
  } else {
    const std::size_t extras = context.extra_count();
    if constexpr (has_extra_forward<Block, T>::value) {
      if (extras == 1) return block.forward(tape, x, context.extra(0));
    }
    if constexpr (has_plain_forward<Block, T>::value) {
      if (extras == 0) return block.forward(tape, x);
    }
    throw std::invalid_argument(std::string(stack) + ": the stack was given " + std::to_string(extras) +
                                " extra input(s), but the block has no forward that takes " +
                                (extras == 0 ? std::string("x alone")
                                             : extras == 1 ? std::string("one extra input")
                                                           : std::to_string(extras) + " extra inputs") +
                                "; give it forward(tape, x, const CallContext<Scalar>&)");
  }
}

// The block's output, checked to keep the shape of x. `stack` and the
// context's layer name the caller in errors.
template <class Block, class T>
Var<T> block_output(Block& block, Tape<T>& tape, const Var<T>& x, const CallContext<T>& context, const char* stack) {
  const Var<T> out = call_block(block, tape, x, context, stack);
  if (!out.valid() || out.shape() != x.shape()) {
    throw std::invalid_argument(std::string(stack) + ": block " + std::to_string(context.layer) + " returned " +
                                (out.valid() ? out.shape().to_string() : std::string("nothing")) +
                                " for an input of " + x.shape().to_string() +
                                "; a residual block must keep the shape");
  }
  return out;
}

// f_n(x): the block's output, minus x for a non-residual block.
template <class Block, class T>
Var<T> residual_function(Block& block, Tape<T>& tape, const Var<T>& x, const CallContext<T>& context,
                         bool residual_block, const char* stack) {
  const Var<T> out = block_output(block, tape, x, context, stack);
  return residual_block ? out : sub(out, x);
}

}  // namespace detail
}  // namespace momnet
