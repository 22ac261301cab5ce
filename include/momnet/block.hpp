// The Block concept: what Residual and MomentumResidual require of the
// residual functions f_n they stack.
//
//   class Block {
//    public:
//     using Scalar = float;  // or double
//
//     // REQUIRES: x has the shape this block accepts, say [batch, d].
//     // ENSURES:  returns f(x), of the same shape as x, recorded on `tape`
//     //           with momnet's operations (or your own, built with
//     //           Tape::record), so that the tape can take its vector-Jacobian
//     //           product. Parameters enter through tape.param(p), so their
//     //           gradients accumulate into p.grad().
//     //           For the exact memory-free backward, forward must be a pure
//     //           function of x, the context and the parameters: called again
//     //           with the same arguments it must return the same bits. Keep no
//     //           state between calls; draw any randomness from a generator keyed
//     //           by (step, layer) so that it replays.
//     Var<Scalar> forward(Tape<Scalar>& tape, const Var<Scalar>& x);
//
//     // Optional: blocks that read an extra input (an encoder memory, a
//     // context) that receives gradients. Called when the stack is given one.
//     Var<Scalar> forward(Tape<Scalar>& tape, const Var<Scalar>& x, const Var<Scalar>& context);
//
//     // ENSURES: calls visit(Parameter<Scalar>&) once for each parameter.
//     template <class Visitor> void visit_parameters(Visitor&& visit);
//   };
//
// A "non-residual" block computes the whole update g(x) = x + h(x) itself;
// the stacks then use f(x) = g(x) - x (residual_blocks = false in
// MomentumOptions or ResidualOptions).
// Use check_block_gradients() to test a block's gradients numerically.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

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
struct has_context_forward : std::false_type {};
template <class Block, class T>
struct has_context_forward<Block, T,
                           std::void_t<decltype(std::declval<Block&>().forward(
                               std::declval<Tape<T>&>(), std::declval<const Var<T>&>(),
                               std::declval<const Var<T>&>()))>> : std::true_type {};

// f_n(x): the block's output (minus x for a non-residual block), checked to
// keep the shape of x. `stack` and `layer` name the caller in errors.
template <class Block, class T>
Var<T> residual_function(Block& block, Tape<T>& tape, const Var<T>& x, const Var<T>& context,
                         bool residual_block, const char* stack, std::size_t layer) {
  Var<T> out;
  if (context.valid()) {
    if constexpr (has_context_forward<Block, T>::value) {
      out = block.forward(tape, x, context);
    } else {
      throw std::invalid_argument(std::string(stack) +
                                  ": a context was given but the block has no "
                                  "forward(tape, x, context)");
    }
  } else {
    if constexpr (has_plain_forward<Block, T>::value) {
      out = block.forward(tape, x);
    } else {
      throw std::invalid_argument(std::string(stack) +
                                  ": the block needs a context: forward(tape, x, context)");
    }
  }
  if (!out.valid() || out.shape() != x.shape()) {
    throw std::invalid_argument(std::string(stack) + ": block " + std::to_string(layer) + " returned " +
                                (out.valid() ? out.shape().to_string() : std::string("nothing")) +
                                " for an input of " + x.shape().to_string() +
                                "; a residual block must keep the shape");
  }
  return residual_block ? out : sub(out, x);
}

}  // namespace detail
}  // namespace momnet
