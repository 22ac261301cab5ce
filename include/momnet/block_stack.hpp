// The blocks of a residual stack: one per layer, or one shared by every
// layer (weight-tied depth: a single block applied `depth` times, its
// gradients summed over the layers). Depth is a run-time value, never a type.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace momnet {

template <class Block>
class BlockStack {
 public:
  using Scalar = typename Block::Scalar;

  // One block per layer.
  explicit BlockStack(std::vector<Block> blocks)
      : blocks_(std::move(blocks)), depth_(blocks_.size()), tied_(false) {}
  // One block applied `depth` times.
  BlockStack(Block block, std::size_t depth) : depth_(depth), tied_(true) {
    blocks_.push_back(std::move(block));
  }

  std::size_t depth() const noexcept { return depth_; }
  bool weight_tied() const noexcept { return tied_; }
  Block& layer(std::size_t n) { return blocks_[tied_ ? 0 : n]; }
  const Block& layer(std::size_t n) const { return blocks_[tied_ ? 0 : n]; }
  // The distinct blocks: depth() of them, or one when weight-tied.
  std::vector<Block>& blocks() noexcept { return blocks_; }
  const std::vector<Block>& blocks() const noexcept { return blocks_; }

  // The distinct blocks named `first`, `first + 1`, ... (a weight-tied stack
  // names its one block `first`), as a stack's own state. `first` is 1 for a
  // torchvision stage whose block 0 sits outside the stack (layer1.1, ...).
  template <class Visitor>
  void visit_state(Visitor& visit, std::size_t first = 0) {
    for (std::size_t i = 0; i < blocks_.size(); ++i) visit.child(std::to_string(first + i), blocks_[i]);
  }


 private:
  std::vector<Block> blocks_;
  std::size_t depth_;
  bool tied_;
};

}  // namespace momnet
