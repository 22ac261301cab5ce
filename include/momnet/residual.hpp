// The plain residual network x_{n+1} = x_n + f_n(x_n): every block recorded
// on the caller's tape, every activation stored for the backward pass. It is
// the baseline MomentumResidual is measured against, and what to_momentum()
// converts.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/block_stack.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct ResidualOptions {
  // false: each block computes x + h(x) itself and f(x) = block(x) - x.
  bool residual_blocks = true;
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

  // x_N from x_0; `context`, when given, is passed to every block.
  Var<T> operator()(Tape<T>& tape, const Var<T>& x, const Var<T>& context = Var<T>()) {
    detail::common_tape("momnet::Residual", x);
    if (context.valid()) detail::common_tape("momnet::Residual", x, context);
    Var<T> h = x;
    for (std::size_t n = 0; n < stack_.depth(); ++n) {
      Var<T> f = detail::residual_function(stack_.layer(n), tape, h, context, options_.residual_blocks,
                                           "momnet::Residual", n);
      h = add(h, f);
    }
    return h;
  }

  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    stack_.visit_parameters(visit);
  }

  std::size_t depth() const noexcept { return stack_.depth(); }
  BlockStack<Block>& stack() noexcept { return stack_; }
  const BlockStack<Block>& stack() const noexcept { return stack_; }
  const ResidualOptions& options() const noexcept { return options_; }

 private:
  BlockStack<Block> stack_;
  ResidualOptions options_;
};

}  // namespace momnet
