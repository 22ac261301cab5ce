// The plain residual network x_{n+1} = x_n + f_n(x_n): every block recorded
// on the caller's tape, every activation stored for the backward pass. It is
// the baseline MomentumResidual is measured against, and what to_momentum()
// converts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/block_stack.hpp"
#include "momnet/call_context.hpp"
#include "momnet/module.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct ResidualOptions {
  // false: each block computes x + h(x) itself, and x_{n+1} = block(x_n).
  bool residual_blocks = true;
  // The seed of the blocks' random draws (CallContext::random).
  std::uint64_t seed = 0;
  // The name of the first block in visit_state (named_parameters): 1 for a
  // stage whose block 0 sits outside the stack, as torchvision's layer1.1.
  std::size_t first_block_name = 0;
};

template <class Block>
class Residual {
 public:
  using Scalar = typename Block::Scalar;
  using T = Scalar;

  // One block per layer.
  explicit Residual(std::vector<Block> blocks, ResidualOptions options = {})
      : stack_(std::move(blocks)), options_(options) {}
  // One block applied `depth` times (weight-tied depth).
  Residual(Block block, std::size_t depth, ResidualOptions options = {})
      : stack_(std::move(block), depth), options_(options) {}

  // x_N from x_0; `extra`, when given, is passed to every block.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const Var<T>& extra = Var<T>()) {
    return (*this)(tape, x, extra.valid() ? std::vector<Var<T>>{extra} : std::vector<Var<T>>{});
  }
  // x_N from x_0 with any number of extra inputs for the blocks.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const std::vector<Var<T>>& extras) {
    const char* name = "momnet::Residual";
    detail::common_tape(name, x);
    for (const Var<T>& extra : extras) detail::common_tape(name, x, extra);
    CallContext<T> context(extras.data(), extras.size());
    context.step = step_++;
    context.training = training_;
    context.seed = options_.seed;
    Var<T> h = x;
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      context.layer = n;
      // A non-residual block's output is x_{n+1} itself: taking it as is
      // (not x + (g(x) - x)) saves two passes and gives PyTorch's bits.
      const Var<T> out = detail::block_output(stack_.layer(n), tape, h, context, name);
      h = options_.residual_blocks ? add(h, out) : out;
    }
    return h;
  }
  Var<T> forward(Tape<T>& tape, const Var<T>& x) { return (*this)(tape, x); }

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

  // Train or eval mode, passed to the blocks in their CallContext.
  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }
  // The number of forward passes so far (the step the next pass gives its blocks).
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

  std::size_t depth() const noexcept { return stack_.depth(); }
  BlockStack<Block>& stack() noexcept { return stack_; }
  const BlockStack<Block>& stack() const noexcept { return stack_; }
  const ResidualOptions& options() const noexcept { return options_; }

 private:
  BlockStack<Block> stack_;
  ResidualOptions options_;
  std::uint64_t step_ = 0;
  bool training_ = true;
};

}  // namespace momnet
