// ResNets in torchvision's layout, as a Sequential with torchvision's
// parameter and buffer names (conv1.weight, layer1.0.bn1.running_mean,
// layer2.0.downsample.0.weight, fc.bias), so that weights move between the
// two (io/state_dict.hpp):
//
//   conv1 - bn1 - relu - [maxpool] - layer1 ... layerK - avgpool - flatten - fc
//
// Each stage `layerK` is a Sequential: its first block `0` (which may change
// the shape: stride 2, more channels) and, when the stage has more blocks, a
// Residual stack of the rest named from 1 (layer1.1, layer1.2, ...). The
// stack holds non-residual blocks (residual_blocks = false: a block computes
// relu(F(x) + x) itself), so the ResNet computes exactly what torchvision's
// does, and to_momentum(resnet, gamma) (sequential.hpp) turns every stage's
// stack into a MomentumResidual with the same parameters and buffers: the
// reference package's transform_to_momentumnet(..., keep_first_layer=True).
//
// Two stems: ImageNet's (7x7 stride-2 convolution, 3x3 stride-2 max pool)
// and the CIFAR ResNets' (3x3 stride-1 convolution, no pool).
// Initialisation as torchvision's: convolutions kaiming-normal over fan-out
// (ReLU gain), batch norms weight 1 and bias 0, fc as nn.Linear;
// zero_init_residual sets each block's last batch-norm weight to 0.
#pragma once

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "momnet/init.hpp"
#include "momnet/layers/activation.hpp"
#include "momnet/layers/batch_norm.hpp"
#include "momnet/layers/conv2d.hpp"
#include "momnet/layers/flatten.hpp"
#include "momnet/layers/linear.hpp"
#include "momnet/layers/pooling.hpp"
#include "momnet/models/basic_block.hpp"
#include "momnet/models/bottleneck.hpp"
#include "momnet/module.hpp"
#include "momnet/random.hpp"
#include "momnet/residual.hpp"
#include "momnet/sequential.hpp"

namespace momnet {

enum class ResNetBlock { basic, bottleneck };
enum class ResNetStem { imagenet, cifar };

struct ResNetConfig {
  ResNetBlock block = ResNetBlock::basic;
  std::vector<std::size_t> blocks_per_stage{2, 2, 2, 2};
  std::vector<Eigen::Index> widths{64, 128, 256, 512};  // each stage's `planes`
  ResNetStem stem = ResNetStem::imagenet;
  Eigen::Index stem_width = 64;  // channels after the stem (torchvision's inplanes)
  Eigen::Index in_channels = 3;
  Eigen::Index num_classes = 1000;
  Eigen::Index groups = 1;             // Bottleneck only (ResNeXt)
  Eigen::Index width_per_group = 64;   // Bottleneck only (Wide ResNet: 128)
  bool zero_init_residual = false;

  static ResNetConfig resnet18(Eigen::Index num_classes = 1000) { return imagenet(ResNetBlock::basic, {2, 2, 2, 2}, num_classes); }
  static ResNetConfig resnet34(Eigen::Index num_classes = 1000) { return imagenet(ResNetBlock::basic, {3, 4, 6, 3}, num_classes); }
  static ResNetConfig resnet50(Eigen::Index num_classes = 1000) { return imagenet(ResNetBlock::bottleneck, {3, 4, 6, 3}, num_classes); }
  static ResNetConfig resnet101(Eigen::Index num_classes = 1000) { return imagenet(ResNetBlock::bottleneck, {3, 4, 23, 3}, num_classes); }

  // A CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem and one
  // stage per width, stride 2 between stages; `blocks` BasicBlocks per stage
  // makes ResNet-(6 blocks + 2) with the default three widths.
  static ResNetConfig cifar(std::size_t blocks, std::vector<Eigen::Index> widths = {16, 32, 64},
                            Eigen::Index in_channels = 3, Eigen::Index num_classes = 10) {
    ResNetConfig c;
    c.block = ResNetBlock::basic;
    c.stem = ResNetStem::cifar;
    c.blocks_per_stage.assign(widths.size(), blocks);
    c.stem_width = widths.empty() ? 0 : widths.front();
    c.widths = std::move(widths);
    c.in_channels = in_channels;
    c.num_classes = num_classes;
    return c;
  }

 private:
  static ResNetConfig imagenet(ResNetBlock block, std::vector<std::size_t> blocks, Eigen::Index num_classes) {
    ResNetConfig c;
    c.block = block;
    c.blocks_per_stage = std::move(blocks);
    c.num_classes = num_classes;
    return c;
  }
};

namespace detail {

inline void check_resnet_config(const ResNetConfig& c) {
  const std::string name = "momnet::resnet: ";
  if (c.blocks_per_stage.empty() || c.blocks_per_stage.size() != c.widths.size()) {
    throw std::invalid_argument(name + "blocks_per_stage and widths must be non-empty and of one length, got " +
                                std::to_string(c.blocks_per_stage.size()) + " and " + std::to_string(c.widths.size()));
  }
  for (std::size_t i = 0; i < c.widths.size(); ++i) {
    if (c.blocks_per_stage[i] == 0 || c.widths[i] <= 0) {
      throw std::invalid_argument(name + "stage " + std::to_string(i + 1) + " needs at least one block and a positive width, got " +
                                  std::to_string(c.blocks_per_stage[i]) + " blocks of width " + std::to_string(c.widths[i]));
    }
  }
  if (c.stem_width <= 0 || c.in_channels <= 0 || c.num_classes <= 0 || c.groups <= 0 || c.width_per_group <= 0) {
    throw std::invalid_argument(name + "stem_width, in_channels, num_classes, groups and width_per_group must be positive");
  }
  if (c.block == ResNetBlock::basic && (c.groups != 1 || c.width_per_group != 64)) {
    throw std::invalid_argument(name + "BasicBlock only supports groups = 1 and width_per_group = 64 (as torchvision)");
  }
}

template <class Block, class T>
Block make_resnet_block(const ResNetConfig& c, Eigen::Index in, Eigen::Index planes, Eigen::Index stride, Rng& rng) {
  if constexpr (std::is_same_v<Block, Bottleneck<T>>) {
    return Block(in, planes, stride, rng, c.groups, c.width_per_group);
  } else {
    return Block(in, planes, stride, rng);
  }
}

// Appends the stages layer1 ... layerK; returns the channels they end with.
template <class Block, class T>
Eigen::Index add_resnet_stages(Sequential<T>& net, const ResNetConfig& c, Eigen::Index in, Rng& rng) {
  for (std::size_t s = 0; s < c.widths.size(); ++s) {
    const Eigen::Index planes = c.widths[s];
    const Eigen::Index stride = s == 0 ? 1 : 2;
    Sequential<T> stage;
    stage.add("0", make_resnet_block<Block, T>(c, in, planes, stride, rng));
    in = planes * Block::expansion;
    if (c.blocks_per_stage[s] > 1) {
      std::vector<Block> rest;
      rest.reserve(c.blocks_per_stage[s] - 1);
      for (std::size_t b = 1; b < c.blocks_per_stage[s]; ++b) rest.push_back(make_resnet_block<Block, T>(c, in, planes, 1, rng));
      ResidualOptions options;
      options.residual_blocks = false;  // blocks end in relu(F(x) + x)
      options.first_block_name = 1;     // layerK.1, layerK.2, ... as torchvision
      stage.add("", Residual<Block>(std::move(rest), options));
    }
    net.add("layer" + std::to_string(s + 1), std::move(stage));
  }
  return in;
}

}  // namespace detail

template <class T>
Sequential<T> resnet(const ResNetConfig& config, Rng& rng) {
  detail::check_resnet_config(config);
  Sequential<T> net;
  Conv2dOptions stem;
  stem.bias = false;
  if (config.stem == ResNetStem::imagenet) {
    stem.stride = {2, 2};
    stem.padding = {3, 3};
    net.add("conv1", Conv2d<T>(config.in_channels, config.stem_width, 7, rng, stem));
  } else {
    stem.padding = {1, 1};
    net.add("conv1", Conv2d<T>(config.in_channels, config.stem_width, 3, rng, stem));
  }
  net.add("bn1", BatchNorm2d<T>(config.stem_width));
  net.add("relu", Activation<T>(ActivationKind::relu));
  if (config.stem == ResNetStem::imagenet) {
    Pool2dOptions pool;
    pool.kernel = {3, 3};
    pool.stride = {2, 2};
    pool.padding = {1, 1};
    net.add("maxpool", MaxPool2d<T>(pool));
  }
  const Eigen::Index features =
      config.block == ResNetBlock::basic
          ? detail::add_resnet_stages<BasicBlock<T>, T>(net, config, config.stem_width, rng)
          : detail::add_resnet_stages<Bottleneck<T>, T>(net, config, config.stem_width, rng);
  net.add("avgpool", AdaptiveAvgPool2d<T>(Size2{1, 1}));
  net.add("flatten", Flatten<T>(1));
  net.add("fc", Linear<T>(features, config.num_classes, rng));

  // torchvision's initialisation: every convolution (the rank-4 weights)
  // kaiming-normal over fan-out with ReLU's gain; batch norms keep 1 and 0.
  for (auto& [name, p] : named_parameters(net)) {
    if (p->shape().rank() == 4) {
      const Eigen::Index fan_out = p->shape().dim(0) * p->shape().dim(2) * p->shape().dim(3);
      init::kaiming_normal(*p, fan_out, rng);
    }
  }
  if (config.zero_init_residual) {
    // The last norm of every block: bn2 (BasicBlock) or bn3 (Bottleneck).
    const std::string last = config.block == ResNetBlock::basic ? ".bn2.weight" : ".bn3.weight";
    for (auto& [name, p] : named_parameters(net)) {
      if (name.size() > last.size() && name.compare(name.size() - last.size(), last.size(), last) == 0) {
        p->array().setZero();
      }
    }
  }
  return net;
}

}  // namespace momnet
