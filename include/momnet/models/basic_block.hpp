// torchvision's BasicBlock (ResNet-18/34 and the CIFAR ResNets):
//   out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)),
// 3x3 convolutions without bias, the stride on conv1, and a projection
// shortcut (`downsample`) when the stride or the channel count changes.
//
// The ReLU after the addition makes the block a "non-residual" one in
// momnet's terms: it computes the whole update g(x), not f in x + f(x). A
// stack of BasicBlocks therefore uses residual_blocks = false: a Residual
// stack passes g(x) on as torchvision's does, and a MomentumResidual uses
// f(x) = g(x) - x, the reference package's is_residual conversion.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

#include "momnet/call_context.hpp"
#include "momnet/layers/batch_norm.hpp"
#include "momnet/layers/conv2d.hpp"
#include "momnet/models/downsample.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/ops/unary.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class BasicBlock {
 public:
  using Scalar = T;
  static constexpr Eigen::Index expansion = 1;

  // `in_channels` to `channels` outputs; stride 2 halves the resolution. A
  // shortcut projection is made when the shape changes (or when asked for).
  BasicBlock(Eigen::Index in_channels, Eigen::Index channels, Eigen::Index stride, Rng& rng)
      : conv1_(in_channels, channels, 3, rng, conv_options(stride)),
        bn1_(channels),
        conv2_(channels, channels, 3, rng, conv_options(1)),
        bn2_(channels) {
    if (stride != 1 || in_channels != channels) downsample_.emplace(in_channels, channels, stride, rng);
  }

  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    Var<T> h = relu(bn1_.forward(tape, conv1_.forward(tape, x), context));
    h = bn2_.forward(tape, conv2_.forward(tape, h), context);
    const Var<T> shortcut = downsample_ ? downsample_->forward(tape, x, context) : x;
    return relu(add(h, shortcut));
  }
  // On its own (outside a stack or Sequential): the block's own train/eval mode.
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    CallContext<T> context;
    context.training = training_;
    return forward(tape, x, context);
  }

  // torchvision's names: conv1, bn1, conv2, bn2, downsample.0, downsample.1.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("conv1", conv1_);
    visit.child("bn1", bn1_);
    visit.child("conv2", conv2_);
    visit.child("bn2", bn2_);
    if (downsample_) visit.child("downsample", *downsample_);
  }
  void set_training(bool training) noexcept { training_ = training; }

  Conv2d<T>& conv1() noexcept { return conv1_; }
  Conv2d<T>& conv2() noexcept { return conv2_; }
  BatchNorm2d<T>& bn1() noexcept { return bn1_; }
  BatchNorm2d<T>& bn2() noexcept { return bn2_; }
  // The norm whose weight zero_init_residual sets to 0 (the block starts as the identity).
  BatchNorm2d<T>& last_norm() noexcept { return bn2_; }
  bool has_downsample() const noexcept { return downsample_.has_value(); }
  Downsample<T>& downsample() {
    if (!downsample_) throw std::logic_error("momnet::BasicBlock::downsample: this block has no projection shortcut");
    return *downsample_;
  }

 private:
  static Conv2dOptions conv_options(Eigen::Index stride) {
    Conv2dOptions o;
    o.stride = {stride, stride};
    o.padding = {1, 1};
    o.bias = false;
    return o;
  }

  Conv2d<T> conv1_;
  BatchNorm2d<T> bn1_;
  Conv2d<T> conv2_;
  BatchNorm2d<T> bn2_;
  std::optional<Downsample<T>> downsample_;
  bool training_ = true;
};

}  // namespace momnet
