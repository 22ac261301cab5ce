// The ResNet builder (models/resnet.hpp), its blocks, and conv nets with
// batch norm and dropout inside a MomentumResidual: torchvision's names and
// shapes, gradients, to_momentum, bitwise rebuilds and running statistics
// updated once per step.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>
#include <momnet/layers/dropout.hpp>
#include <momnet/models/resnet.hpp>

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace momnet;
using momnet_test::relative_error;

namespace {

std::string shape_text(const Shape& shape) {
  std::string text;
  for (Eigen::Index i = 0; i < shape.rank(); ++i) text += (i ? "," : "") + std::to_string(shape.dim(i));
  return text;
}

struct NameList {
  std::vector<std::string> parameters, buffers;          // in order
  std::map<std::string, std::string> shapes;              // name -> "d0,d1,..."
};

NameList torchvision_names(const std::string& model) {
  const std::string path = std::string(MOMNET_TEST_DATA_DIR) + "/torchvision_" + model + "_names.txt";
  std::ifstream in(path);
  REQUIRE(in.good());
  NameList list;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string kind, name, shape;
    fields >> kind >> name >> shape;
    (kind == "parameter" ? list.parameters : list.buffers).push_back(name);
    list.shapes[name] = shape;
  }
  return list;
}

template <class T>
NameList momnet_names(Sequential<T>& net) {
  NameList list;
  for (auto& [name, p] : named_parameters(net)) {
    list.parameters.push_back(name);
    list.shapes[name] = shape_text(p->shape());
  }
  for (auto& [name, b] : named_buffers(net)) {
    list.buffers.push_back(name);
    list.shapes[name] = shape_text(b.shape());
  }
  return list;
}

template <class T>
Tensor<T> random_tensor(const Shape& shape, std::uint64_t seed) {
  Tensor<T> t(shape);
  Rng rng(seed);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(rng.uniform(-1.0, 1.0));
  return t;
}

// A residual function with batch norm and dropout, f(x) = conv(drop(relu(bn(conv(x))))),
// small enough for a stack of hundreds of layers in a test.
template <class T>
class ConvDropBlock {
 public:
  using Scalar = T;
  ConvDropBlock(Eigen::Index channels, Rng& rng, double p)
      : conv1_(channels, channels, 3, rng, options()), bn_(channels), drop_(p), conv2_(channels, channels, 3, rng, options()) {}
  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    Var<T> h = relu(bn_.forward(tape, conv1_.forward(tape, x), context));
    h = drop_.forward(tape, h, context);
    return scale(conv2_.forward(tape, h), T(0.5));
  }
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("conv1", conv1_);
    visit.child("bn", bn_);
    visit.child("conv2", conv2_);
  }
  BatchNorm2d<T>& bn() { return bn_; }

 private:
  static Conv2dOptions options() {
    Conv2dOptions o;
    o.padding = {1, 1};
    return o;
  }
  Conv2d<T> conv1_;
  BatchNorm2d<T> bn_;
  Dropout<T> drop_;
  Conv2d<T> conv2_;
};

}  // namespace

TEST_CASE("resnet18 has torchvision's parameter and buffer names and shapes", "[resnet][names]") {
  Rng rng(1);
  Sequential<float> net = resnet<float>(ResNetConfig::resnet18(10), rng);
  const NameList expected = torchvision_names("resnet18");
  const NameList got = momnet_names(net);
  CHECK(got.parameters == expected.parameters);
  CHECK(got.buffers == expected.buffers);
  CHECK(got.shapes == expected.shapes);
  CHECK(parameter_count(net) == 11181642);  // torchvision's resnet18(num_classes=10)
}

TEST_CASE("resnet50's names are torchvision's, whatever the widths", "[resnet][names]") {
  Rng rng(2);
  ResNetConfig config = ResNetConfig::resnet50(10);
  config.widths = {2, 4, 8, 16};  // names do not depend on widths; keeps the test small
  config.stem_width = 4;
  Sequential<float> net = resnet<float>(config, rng);
  const NameList expected = torchvision_names("resnet50");
  const NameList got = momnet_names(net);
  CHECK(got.parameters == expected.parameters);
  CHECK(got.buffers == expected.buffers);
}

TEST_CASE("ResNets map images to class scores; the CIFAR stem keeps the resolution", "[resnet]") {
  Rng rng(3);
  SECTION("ImageNet stem") {
    ResNetConfig config = ResNetConfig::resnet18(7);
    config.widths = {2, 4, 4, 8};
    config.stem_width = 2;
    Sequential<double> net = resnet<double>(config, rng);
    Tape<double> tape;
    const Var<double> out = net.forward(tape, tape.constant(random_tensor<double>(Shape{2, 3, 32, 32}, 4)));
    CHECK(out.shape() == Shape{2, 7});
  }
  SECTION("CIFAR stem, one channel in") {
    Sequential<float> net = resnet<float>(ResNetConfig::cifar(2, {4, 8}, 1, 10), rng);
    Tape<float> tape;
    const Var<float> out = net.forward(tape, tape.constant(random_tensor<float>(Shape{3, 1, 12, 12}, 5)));
    CHECK(out.shape() == Shape{3, 10});
    tape.backward(sum(out));
    for (auto& [name, p] : named_parameters(net)) CHECK(p->grad_array().isFinite().all());
  }
}

TEST_CASE("torchvision's initialisation: fan-out kaiming convolutions, unit batch norms, zero_init_residual", "[resnet]") {
  Rng rng(6);
  ResNetConfig config = ResNetConfig::cifar(2, {8, 16}, 1, 10);
  config.zero_init_residual = true;
  Sequential<double> net = resnet<double>(config, rng);
  for (auto& [name, p] : named_parameters(net)) {
    INFO(name);
    if (p->shape().rank() == 4) {
      const double fan_out = static_cast<double>(p->shape().dim(0) * p->shape().dim(2) * p->shape().dim(3));
      const double stddev = std::sqrt((p->array().square()).mean());
      CHECK(stddev == Approx(std::sqrt(2.0 / fan_out)).epsilon(0.35));  // a few hundred draws
    } else if (name.find(".bn2.weight") != std::string::npos) {
      CHECK((p->array() == 0.0).all());
    } else if (name.find("bn") != std::string::npos || name.find("downsample.1") != std::string::npos) {
      const bool is_weight = name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0;
      CHECK((p->array() == (is_weight ? 1.0 : 0.0)).all());
    }
  }
}

TEST_CASE("BasicBlock and Bottleneck pass the gradient check in training and eval mode", "[resnet][gradients]") {
  Rng rng(7);
  const Tensor<double> input = random_tensor<double>(Shape{2, 4, 5, 5}, 8);
  auto check_block = [&](auto block, bool training) {
    block.set_training(training);
    auto loss = [&](Tape<double>& tape, const std::vector<Var<double>>& vars) {
      CallContext<double> context;
      context.training = training;
      context.replay = true;  // the check calls forward many times: leave the statistics alone
      return sum(square(block.forward(tape, vars[0], context)));
    };
    const GradientCheckResult result = check_gradients(loss, {input}, parameters_of(block));
    INFO(result.worst);
    CHECK(result.passed);
  };
  SECTION("BasicBlock, identity shortcut") { check_block(BasicBlock<double>(4, 4, 1, rng), true); }
  SECTION("BasicBlock, projection shortcut, stride 2") { check_block(BasicBlock<double>(4, 6, 2, rng), true); }
  SECTION("BasicBlock in eval mode") { check_block(BasicBlock<double>(4, 4, 1, rng), false); }
  SECTION("Bottleneck, projection, stride 2, groups 2") { check_block(Bottleneck<double>(4, 2, 2, rng, 2, 64), true); }
  SECTION("Bottleneck, identity shortcut") { check_block(Bottleneck<double>(4, 1, 1, rng), true); }
}

TEST_CASE("to_momentum keeps every stage's first block and converts the rest with the same state", "[resnet][momentum]") {
  Rng rng(9);
  Sequential<double> net = resnet<double>(ResNetConfig::cifar(3, {4, 8}, 1, 5), rng);
  MomentumOptions options;
  options.mode = BackwardMode::stored;
  Sequential<double> momentum = to_momentum(net, 0.0, options);
  // The same names, the same values.
  const auto a = named_parameters(net);
  const auto b = named_parameters(momentum);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].first == b[i].first);
    CHECK((a[i].second->array() == b[i].second->array()).all());
  }
  CHECK(momnet_names(net).buffers == momnet_names(momentum).buffers);
  // gamma = 0 is the ResNet itself: v = f(x), x + v = block(x) (up to the
  // fixed-point rounding of the stack's state).
  const Tensor<double> x = random_tensor<double>(Shape{3, 1, 8, 8}, 10);
  eval(net);
  eval(momentum);
  const Tensor<double> y_resnet = net.infer(x);
  const Tensor<double> y_momentum = momentum.infer(x);
  for (Eigen::Index i = 0; i < y_resnet.size(); ++i) CHECK(y_momentum.data()[i] == Approx(y_resnet.data()[i]).margin(1e-9));
  // And the stages' stacks are MomentumResidual now.
  Sequential<double>& stage = momentum.get<Sequential<double>>(3);
  CHECK(momentum.name(3) == "layer1");
  CHECK_NOTHROW(stage.get<MomentumResidual<BasicBlock<double>>>(1));
}

TEST_CASE("A Momentum ResNet stage in training mode: exact gradients equal stored, statistics updated once per step",
          "[resnet][momentum][state]") {
  Rng rng(11);
  Sequential<double> net = resnet<double>(ResNetConfig::cifar(4, {3, 6}, 1, 4), rng);
  MomentumOptions exact_options, stored_options;
  exact_options.mode = BackwardMode::exact;
  stored_options.mode = BackwardMode::stored;
  Sequential<double> exact = to_momentum(net, 0.9, exact_options);
  Sequential<double> stored = to_momentum(net, 0.9, stored_options);
  const std::vector<int> labels{0, 1, 2, 3};
  const int steps = 3;
  for (int step = 0; step < steps; ++step) {
    const Tensor<double> x = random_tensor<double>(Shape{4, 1, 6, 6}, 20 + step);
    std::vector<std::vector<double>> grads;
    for (Sequential<double>* model : {&exact, &stored, &net}) {
      zero_grad(*model);
      Tape<double> tape;
      tape.backward(cross_entropy(model->forward(tape, tape.constant(x)), labels));
      std::vector<double> g;
      for (Parameter<double>* p : parameters_of(*model)) g.insert(g.end(), p->grad_array().begin(), p->grad_array().end());
      grads.push_back(std::move(g));
    }
    CHECK(relative_error(grads[0], grads[1]) <= 1e-10);
  }
  // Running statistics: identical bits in exact and stored mode (the same
  // forward values; the exact rebuild does not update them again), and
  // num_batches_tracked counts the steps in all three networks.
  const auto exact_buffers = named_buffers(exact);
  const auto stored_buffers = named_buffers(stored);
  const auto resnet_buffers = named_buffers(net);
  REQUIRE(exact_buffers.size() == stored_buffers.size());
  for (std::size_t i = 0; i < exact_buffers.size(); ++i) {
    INFO(exact_buffers[i].first);
    if (exact_buffers[i].second.integer != nullptr) {
      CHECK(exact_buffers[i].second.integer->data()[0] == steps);
      CHECK(stored_buffers[i].second.integer->data()[0] == steps);
      CHECK(resnet_buffers[i].second.integer->data()[0] == steps);
    } else {
      const Tensor<double>& e = *exact_buffers[i].second.real;
      const Tensor<double>& s = *stored_buffers[i].second.real;
      for (Eigen::Index k = 0; k < e.size(); ++k) CHECK(e.data()[k] == s.data()[k]);
    }
  }
}

TEMPLATE_TEST_CASE("Batch norm and dropout in training mode rebuild bit for bit at depth 200", "[resnet][momentum][exact]",
                   float, double) {
  using T = TestType;
  Rng rng(12);
  std::vector<ConvDropBlock<T>> blocks;
  const std::size_t depth = 200;
  for (std::size_t i = 0; i < depth; ++i) blocks.emplace_back(2, rng, 0.2);
  MomentumOptions options;
  options.gamma = 0.9;
  options.seed = 77;
  MomentumResidual<ConvDropBlock<T>> exact(blocks, options);
  options.mode = BackwardMode::stored;
  MomentumResidual<ConvDropBlock<T>> stored(blocks, options);
  // The observer sees each layer's fixed-point state in the forward pass and
  // again once rebuilt in the backward pass: the two must be the same words.
  std::vector<std::vector<std::int64_t>> forward_states(depth), rebuilt(depth);
  exact.set_observer([&](const LayerEvent<T>& e) {
    std::vector<std::int64_t> words(e.x_fixed, e.x_fixed + e.elements);
    words.insert(words.end(), e.v_fixed, e.v_fixed + e.elements);
    (e.phase == LayerEvent<T>::Phase::forward ? forward_states : rebuilt)[e.layer] = std::move(words);
  });
  const Tensor<T> x = random_tensor<T>(Shape{2, 2, 4, 4}, 13);
  std::vector<std::vector<double>> grads;
  for (auto* model : {&exact, &stored}) {
    Tape<T> tape;
    const Var<T> input = tape.variable(x);
    tape.backward(sum(square(model->forward(tape, input).x)));
    std::vector<double> g(input.grad().data(), input.grad().data() + input.size());
    grads.push_back(std::move(g));
  }
  std::size_t same = 0;
  for (std::size_t n = 0; n < depth; ++n) same += forward_states[n] == rebuilt[n] && !rebuilt[n].empty();
  CHECK(same == depth);
  CHECK(relative_error(grads[0], grads[1]) <= (std::is_same_v<T, float> ? 1e-5 : 1e-12));
  // Each layer's statistics moved once: num_batches_tracked is 1 in every block.
  for (auto& [name, b] : named_buffers(exact)) {
    if (b.integer != nullptr) CHECK(b.integer->data()[0] == 1);
  }
}

TEST_CASE("The ResNet builder and conv nets refuse bad configurations and inputs", "[resnet][errors]") {
  Rng rng(14);
  ResNetConfig config = ResNetConfig::cifar(2, {4, 8}, 1, 10);
  SECTION("stages and widths of different lengths") {
    config.widths = {4};
    REQUIRE_THROWS_WITH(resnet<float>(config, rng), Catch::Contains("blocks_per_stage and widths"));
  }
  SECTION("a stage without blocks") {
    config.blocks_per_stage = {2, 0};
    REQUIRE_THROWS_WITH(resnet<float>(config, rng), Catch::Contains("stage 2 needs at least one block"));
  }
  SECTION("groups on BasicBlocks") {
    config.groups = 2;
    REQUIRE_THROWS_WITH(resnet<float>(config, rng), Catch::Contains("BasicBlock only supports groups = 1"));
  }
  SECTION("an image with the wrong channel count") {
    Sequential<float> net = resnet<float>(config, rng);
    Tape<float> tape;
    REQUIRE_THROWS_AS(net.forward(tape, tape.constant(random_tensor<float>(Shape{2, 3, 8, 8}, 15))), std::invalid_argument);
  }
  SECTION("batch norm in training mode with one value per channel") {
    Sequential<float> net = resnet<float>(config, rng);
    Tape<float> tape;
    REQUIRE_THROWS_WITH(net.forward(tape, tape.constant(random_tensor<float>(Shape{1, 1, 1, 1}, 16))),
                        Catch::Contains("more than 1 value per channel"));
  }
}
