// torchvision's Bottleneck (ResNet-50/101/152, "ResNet V1.5": the stride on
// the 3x3 convolution):
//   out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)),
// conv1 1x1 to `width`, conv2 3x3 (stride, groups), conv3 1x1 to
// channels * 4, with width = channels * (width_per_group / 64) * groups.
// Non-residual like BasicBlock (the ReLU follows the addition): stacks use
// residual_blocks = false.
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
class Bottleneck {
 public:
  using Scalar = T;
  static constexpr Eigen::Index expansion = 4;

  Bottleneck(Eigen::Index in_channels, Eigen::Index channels, Eigen::Index stride, Rng& rng,
             Eigen::Index groups = 1, Eigen::Index width_per_group = 64)
      : conv1_(in_channels, width(channels, groups, width_per_group), 1, rng, conv_options(1, 0, 1)),
        bn1_(width(channels, groups, width_per_group)),
        conv2_(width(channels, groups, width_per_group), width(channels, groups, width_per_group), 3, rng,
               conv_options(stride, 1, groups)),
        bn2_(width(channels, groups, width_per_group)),
        conv3_(width(channels, groups, width_per_group), channels * expansion, 1, rng, conv_options(1, 0, 1)),
        bn3_(channels * expansion) {
    if (stride != 1 || in_channels != channels * expansion) {
      downsample_.emplace(in_channels, channels * expansion, stride, rng);
    }
  }

  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    Var<T> h = relu(bn1_.forward(tape, conv1_.forward(tape, x), context));
    h = relu(bn2_.forward(tape, conv2_.forward(tape, h), context));
    h = bn3_.forward(tape, conv3_.forward(tape, h), context);
    const Var<T> shortcut = downsample_ ? downsample_->forward(tape, x, context) : x;
    return relu(add(h, shortcut));
  }
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    CallContext<T> context;
    context.training = training_;
    return forward(tape, x, context);
  }

  // torchvision's names: conv1..3, bn1..3, downsample.0, downsample.1.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("conv1", conv1_);
    visit.child("bn1", bn1_);
    visit.child("conv2", conv2_);
    visit.child("bn2", bn2_);
    visit.child("conv3", conv3_);
    visit.child("bn3", bn3_);
    if (downsample_) visit.child("downsample", *downsample_);
  }
  void set_training(bool training) noexcept { training_ = training; }

  Conv2d<T>& conv1() noexcept { return conv1_; }
  Conv2d<T>& conv2() noexcept { return conv2_; }
  Conv2d<T>& conv3() noexcept { return conv3_; }
  BatchNorm2d<T>& last_norm() noexcept { return bn3_; }
  bool has_downsample() const noexcept { return downsample_.has_value(); }
  Downsample<T>& downsample() {
    if (!downsample_) throw std::logic_error("momnet::Bottleneck::downsample: this block has no projection shortcut");
    return *downsample_;
  }

 private:
  static Eigen::Index width(Eigen::Index channels, Eigen::Index groups, Eigen::Index width_per_group) {
    if (channels <= 0 || groups <= 0 || width_per_group <= 0) {
      throw std::invalid_argument("momnet::Bottleneck: channels, groups and width_per_group must be positive, got " +
                                  std::to_string(channels) + ", " + std::to_string(groups) + ", " +
                                  std::to_string(width_per_group));
    }
    return channels * width_per_group / 64 * groups;
  }
  static Conv2dOptions conv_options(Eigen::Index stride, Eigen::Index padding, Eigen::Index groups) {
    Conv2dOptions o;
    o.stride = {stride, stride};
    o.padding = {padding, padding};
    o.groups = groups;
    o.bias = false;
    return o;
  }

  Conv2d<T> conv1_;
  BatchNorm2d<T> bn1_;
  Conv2d<T> conv2_;
  BatchNorm2d<T> bn2_;
  Conv2d<T> conv3_;
  BatchNorm2d<T> bn3_;
  std::optional<Downsample<T>> downsample_;
  bool training_ = true;
};

}  // namespace momnet
