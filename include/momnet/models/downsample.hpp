// The projection shortcut of a shape-changing ResNet block: a 1x1
// convolution with the block's stride, then batch norm, named `0` and `1` as
// torchvision's `downsample` Sequential (layer2.0.downsample.0.weight).
#pragma once

#include <Eigen/Core>

#include "momnet/call_context.hpp"
#include "momnet/layers/batch_norm.hpp"
#include "momnet/layers/conv2d.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class Downsample {
 public:
  using Scalar = T;

  Downsample(Eigen::Index in_channels, Eigen::Index out_channels, Eigen::Index stride, Rng& rng)
      : conv_(in_channels, out_channels, 1, rng, options(stride)), bn_(out_channels) {}

  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    return bn_.forward(tape, conv_.forward(tape, x), context);
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("0", conv_);
    visit.child("1", bn_);
  }

  Conv2d<T>& conv() noexcept { return conv_; }
  BatchNorm2d<T>& norm() noexcept { return bn_; }

 private:
  static Conv2dOptions options(Eigen::Index stride) {
    Conv2dOptions o;
    o.stride = {stride, stride};
    o.bias = false;
    return o;
  }

  Conv2d<T> conv_;
  BatchNorm2d<T> bn_;
};

}  // namespace momnet
