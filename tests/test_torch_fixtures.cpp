// Agreement with PyTorch. scripts/torch_reference.py (torch 1.13,
// torchvision 0.14) wrote tests/data/torch_<model>.safetensors: a model's
// state_dict, an input, and PyTorch's output, loss, input gradient, every
// parameter gradient and (training mode) the buffers after the step. Here
// momnet builds the same architecture, loads the state by its names, repeats
// the step and must agree with every tensor to max |momnet - torch| /
// max |torch| <= 1e-5: float32 on both sides, differing only in summation
// orders (and, in the momentum stacks, momnet's fixed-point state).
// The Transformer fixtures (an nn.TransformerEncoder and an nn.Transformer
// with attention and key padding masks) hold the masks as momnet takes them,
// additive float masks, and a Momentum encoder computed by PyTorch's own loop.
//
// The reverse direction: with MOMNET_WRITE_TORCH_CHECK=DIR in the
// environment, the last test also writes models initialised by momnet, with
// momnet's values, to DIR/momnet_<model>.safetensors, for
//   /usr/bin/python3 scripts/torch_reference.py check DIR/momnet_<model>.safetensors <model>
// which loads them into PyTorch (strict load_state_dict) and compares.
#include <catch2/catch.hpp>

#if __has_include(<nlohmann/json.hpp>)  // momnet::io is optional (tests/CMakeLists.txt)

#include <momnet/io/state_dict.hpp>
#include <nlohmann/json.hpp>
#include <momnet/momnet.hpp>
#include <momnet/models/resnet.hpp>
#include <momnet/models/transformer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace momnet;

namespace {

constexpr double tolerance = 1e-5;

using Reals = std::map<std::string, Tensor<float>>;
using Integers = std::map<std::string, Tensor<std::int64_t>>;

// The values a step produces (or a fixture expects), under the fixture's names.
struct Values {
  Reals reals;
  Integers integers;
};

std::string fixture_path(const std::string& model) {
  return std::string(MOMNET_TEST_DATA_DIR) + "/torch_" + model + ".safetensors";
}

// The fixture's own entries, as opposed to the model's state_dict names
// (the same rule as is_data in scripts/torch_reference.py).
bool is_data(const std::string& name) {
  for (const char* whole : {"input", "src", "tgt", "labels", "loss_weight", "output", "loss"}) {
    if (name == whole) return true;
  }
  for (const char* prefix : {"grad.", "train.", "eval.", "plain.", "momentum.", "mask."}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// What a step reads (inputs, masks, the loss's weights), as opposed to what it computes.
bool is_input(const std::string& name) {
  return name == "input" || name == "src" || name == "tgt" || name == "labels" || name == "loss_weight" ||
         name.rfind("mask.", 0) == 0;
}

struct Fixture {
  Values data;
  std::map<std::string, std::string> metadata;

  const Tensor<float>& real(const std::string& name) const {
    const auto it = data.reals.find(name);
    if (it == data.reals.end()) throw std::out_of_range("fixture has no real tensor '" + name + "'");
    return it->second;
  }
  // A metadata entry holding a JSON list of integers ("[6, 4]").
  std::vector<Eigen::Index> indices(const std::string& key) const {
    return nlohmann::json::parse(metadata.at(key)).get<std::vector<Eigen::Index>>();
  }
  std::vector<int> labels() const {
    const auto it = data.integers.find("labels");
    if (it == data.integers.end()) throw std::out_of_range("fixture has no 'labels'");
    return std::vector<int>(it->second.data(), it->second.data() + it->second.size());
  }
};

// Loads `path` into `model` strictly: every state_dict name of the model must
// be in the file with its shape, and the file may hold nothing else but the
// fixture's data, which lands in the returned Fixture (through the same
// strict load_state, as extra named values).
template <class Model>
Fixture load_fixture(Model& model, const std::string& path) {
  const SafetensorsFile file(path);
  Fixture fixture;
  std::vector<StateRef<float>> state = state_of(model);
  for (const TensorEntry& e : file.entries()) {
    if (!is_data(e.name)) continue;
    const Shape shape(std::vector<Eigen::Index>(e.shape.begin(), e.shape.end()));
    if (is_floating(e.dtype)) {
      state.push_back(StateRef<float>::of(e.name, fixture.data.reals.emplace(e.name, Tensor<float>(shape)).first->second));
    } else {
      state.push_back(
          StateRef<float>::of(e.name, fixture.data.integers.emplace(e.name, Tensor<std::int64_t>(shape)).first->second));
    }
  }
  fixture.metadata = load_state(state, path).metadata;
  return fixture;
}

Tensor<float> copy_of(const float* values, const Shape& shape) {
  Tensor<float> t(shape);
  std::copy(values, values + shape.size(), t.data());
  return t;
}

// Output, loss, gradients (of the inputs and every parameter) of the step
// just taken on `tape`, named as the fixtures name them after `prefix`.
template <class Model>
void collect(Model& model, const std::vector<std::pair<std::string, Var<float>>>& inputs, const Var<float>& output,
             const Var<float>& loss, const std::string& prefix, Values& out) {
  out.reals.emplace(prefix + "output", copy_of(output.data(), output.shape()));
  out.reals.emplace(prefix + "loss", copy_of(loss.data(), loss.shape()));
  for (const auto& [name, input] : inputs) {
    out.reals.emplace(prefix + "grad." + name, copy_of(input.grad().data(), input.shape()));
  }
  for (auto& [name, p] : named_parameters(model)) {
    out.reals.emplace(prefix + "grad." + name, copy_of(p->grad_data(), p->shape()));
  }
}

// Every buffer of `model` under `prefix`.
template <class Model>
void collect_buffers(Model& model, const std::string& prefix, Values& out) {
  for (auto& [name, b] : named_buffers(model)) {
    if (b.real != nullptr) {
      out.reals.emplace(prefix + name, *b.real);
    } else {
      out.integers.emplace(prefix + name, *b.integer);
    }
  }
}

// One step of the MLP fixture: loss = sum(output * loss_weight).
template <class Model>
Values run_mlp(Model& model, const Tensor<float>& input, const Tensor<float>& loss_weight) {
  zero_grad(model);
  Tape<float> tape;
  const Var<float> x = tape.variable(input);
  const Var<float> output = model(tape, x);
  const Var<float> loss = sum(mul(output, tape.constant(loss_weight)));
  tape.backward(loss);
  Values values;
  collect(model, {{"input", x}}, output, loss, "", values);
  return values;
}

// One step of a ResNet fixture in `mode` ("train" or "eval"): loss =
// cross_entropy(output, labels), the mean over the batch; in training mode
// the buffers after the step too.
Values run_resnet(Sequential<float>& net, const Tensor<float>& input, const std::vector<int>& labels,
                  const std::string& mode) {
  set_training(net, mode == "train");
  zero_grad(net);
  Tape<float> tape;
  const Var<float> x = tape.variable(input);
  const Var<float> output = net.forward(tape, x);
  const Var<float> loss = cross_entropy(output, labels);
  tape.backward(loss);
  Values values;
  collect(net, {{"input", x}}, output, loss, mode + ".", values);
  if (mode == "train") collect_buffers(net, "train.after.", values);
  return values;
}

const Tensor<float>& real(const Values& values, const std::string& name) {
  const auto it = values.reals.find(name);
  if (it == values.reals.end()) throw std::out_of_range("no real tensor '" + name + "'");
  return it->second;
}

// The masks of `values` (inputs of a step), as tape constants; absent ones empty.
Var<float> mask(Tape<float>& tape, const Values& values, const std::string& name) {
  const auto it = values.reals.find("mask." + name);
  return it == values.reals.end() ? Var<float>() : tape.constant(it->second);
}

// One step of the encoder fixture (plain or Momentum encoder): loss =
// sum(output * loss_weight), masks src_mask and src_key_padding_mask.
template <class Encoder>
Values run_encoder(Encoder& encoder, const Values& data, const std::string& prefix) {
  set_training(encoder, false);  // dropout 0: the same in either mode, as PyTorch's eval
  zero_grad(encoder);
  Tape<float> tape;
  const Var<float> x = tape.variable(real(data, "input"));
  const Var<float> output = encoder(tape, x, mask(tape, data, "src_mask"), mask(tape, data, "src_key_padding_mask"));
  const Var<float> loss = sum(mul(output, tape.constant(real(data, "loss_weight"))));
  tape.backward(loss);
  Values values;
  collect(encoder, {{"input", x}}, output, loss, prefix, values);
  return values;
}

// One step of the Transformer fixture: loss = sum(output * loss_weight),
// every mask the data holds.
template <class Model>
Values run_transformer(Model& model, const Values& data, const std::string& prefix) {
  set_training(model, false);
  zero_grad(model);
  Tape<float> tape;
  const Var<float> src = tape.variable(real(data, "src"));
  const Var<float> tgt = tape.variable(real(data, "tgt"));
  TransformerMasks<float> masks;
  masks.src_mask = mask(tape, data, "src_mask");
  masks.tgt_mask = mask(tape, data, "tgt_mask");
  masks.memory_mask = mask(tape, data, "memory_mask");
  masks.src_key_padding_mask = mask(tape, data, "src_key_padding_mask");
  masks.tgt_key_padding_mask = mask(tape, data, "tgt_key_padding_mask");
  masks.memory_key_padding_mask = mask(tape, data, "memory_key_padding_mask");
  const Var<float> output = model(tape, src, tgt, masks);
  const Var<float> loss = sum(mul(output, tape.constant(real(data, "loss_weight"))));
  tape.backward(loss);
  Values values;
  collect(model, {{"src", src}, {"tgt", tgt}}, output, loss, prefix, values);
  return values;
}

// The fixtures' Transformers (scripts/torch_reference.py, whose metadata the
// tests check against these): d_model 16, feed-forward 32, dropout 0.
constexpr Eigen::Index transformer_width = 16;

// nn.TransformerEncoder of 2 pre-norm gelu layers with 4 heads, and a final norm.
TransformerEncoder<float> torch_encoder(std::uint64_t seed) {
  Rng rng(seed);
  TransformerLayerOptions options;
  options.dim_feedforward = 32;
  options.dropout = 0.0;
  options.activation = TransformerActivation::gelu;
  options.norm_first = true;
  const TransformerEncoderLayer<float> layer(transformer_width, 4, rng, options);
  return TransformerEncoder<float>(layer, 2, LayerNorm<float>(transformer_width));
}

// nn.Transformer: 2 post-norm relu encoder and decoder layers with 2 heads.
Transformer<float> torch_transformer(std::uint64_t seed) {
  Rng rng(seed);
  TransformerOptions options;
  options.d_model = transformer_width;
  options.nhead = 2;
  options.num_encoder_layers = 2;
  options.num_decoder_layers = 2;
  options.dim_feedforward = 32;
  options.dropout = 0.0;
  return Transformer<float>(options, rng);
}

// max |a - b| / max |b|, b being PyTorch's.
double relative_error(const Tensor<float>& a, const Tensor<float>& b) {
  double difference = 0, scale = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    difference = std::max(difference, std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b.data()[i])));
  }
  return scale > 0 ? difference / scale : difference;
}

// Compares what momnet computed with every value the fixture expects under
// `prefix` (all of them: a value the fixture holds and momnet did not compute
// fails too). Returns the worst relative error.
double compare(const Values& got, const Fixture& fixture, const std::string& prefix) {
  double worst = 0;
  std::string worst_name;
  std::size_t expected = 0;
  for (const auto& [name, t] : fixture.data.reals) {
    if (is_input(name) || name.rfind(prefix, 0) != 0) continue;
    ++expected;
    INFO("PyTorch's " << name);
    const auto it = got.reals.find(name);
    REQUIRE(it != got.reals.end());
    REQUIRE(it->second.shape() == t.shape());
    const double error = relative_error(it->second, t);
    CHECK(error <= tolerance);
    if (error >= worst) {
      worst = error;
      worst_name = name;
    }
  }
  for (const auto& [name, t] : fixture.data.integers) {
    if (is_input(name) || name.rfind(prefix, 0) != 0) continue;
    ++expected;
    INFO("PyTorch's " << name);
    const auto it = got.integers.find(name);
    REQUIRE(it != got.integers.end());
    REQUIRE(it->second.shape() == t.shape());
    CHECK((it->second.array() == t.array()).all());
  }
  CHECK(expected == got.reals.size() + got.integers.size());
  INFO("worst relative error " << worst << " in " << worst_name);
  CHECK(worst <= tolerance);
  return worst;
}

ResNetConfig basic_config() { return ResNetConfig::cifar(2, {4, 8, 16}, 3, 10); }

ResNetConfig bottleneck_config() {
  ResNetConfig config = ResNetConfig::cifar(1, {2, 4, 8}, 3, 10);
  config.block = ResNetBlock::bottleneck;
  config.blocks_per_stage = {1, 2, 2};
  config.stem_width = 4;
  return config;
}

MomentumResidual<MLPBlock<float>> mlp_momentum(BackwardMode mode, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<MLPBlock<float>> blocks;
  for (int i = 0; i < 6; ++i) blocks.emplace_back(8, 16, rng);  // tanh, as the PyTorch MLPBlock
  MomentumOptions options;
  options.gamma = 0.9;
  options.mode = mode;
  return MomentumResidual<MLPBlock<float>>(std::move(blocks), options);
}

std::string exact_decimal(double value) {
  std::ostringstream text;
  text << std::setprecision(17) << value;
  return text.str();
}

}  // namespace

TEST_CASE("A Momentum ResNet of MLP blocks agrees with PyTorch's momentum loop", "[torch][momentum]") {
  for (const BackwardMode mode : {BackwardMode::exact, BackwardMode::stored}) {
    INFO("mode " << to_string(mode));
    MomentumResidual<MLPBlock<float>> model = mlp_momentum(mode, 1);
    const Fixture fixture = load_fixture(model, fixture_path("mlp_momentum"));
    // PyTorch ran with the gamma momnet uses: 0.9 rounded to p / 2^16.
    REQUIRE(std::stod(fixture.metadata.at("gamma")) == model.gamma().value());
    const Values got = run_mlp(model, fixture.real("input"), fixture.real("loss_weight"));
    compare(got, fixture, "");
  }
}

TEST_CASE("A CIFAR ResNet of BasicBlocks agrees with torchvision in training and eval mode", "[torch][resnet]") {
  for (const std::string mode : {"train", "eval"}) {
    INFO("mode " << mode);
    Rng rng(2);
    Sequential<float> net = resnet<float>(basic_config(), rng);
    const Fixture fixture = load_fixture(net, fixture_path("resnet_basic"));
    compare(run_resnet(net, fixture.real("input"), fixture.labels(), mode), fixture, mode + ".");
  }
}

TEST_CASE("A CIFAR ResNet of Bottlenecks agrees with torchvision in training and eval mode", "[torch][resnet]") {
  for (const std::string mode : {"train", "eval"}) {
    INFO("mode " << mode);
    Rng rng(3);
    Sequential<float> net = resnet<float>(bottleneck_config(), rng);
    const Fixture fixture = load_fixture(net, fixture_path("resnet_bottleneck"));
    compare(run_resnet(net, fixture.real("input"), fixture.labels(), mode), fixture, mode + ".");
  }
}

TEST_CASE("to_momentum keeps torchvision's names: the converted ResNets load the same files", "[torch][resnet][momentum]") {
  for (const auto& [model, config] : {std::pair{std::string("resnet_basic"), basic_config()},
                                      std::pair{std::string("resnet_bottleneck"), bottleneck_config()}}) {
    INFO(model);
    Rng rng(4);
    Sequential<float> net = resnet<float>(config, rng);
    load_fixture(net, fixture_path(model));
    // At gamma 0.9, exact mode: the same names and, once loaded, the same values.
    Sequential<float> momentum = to_momentum(resnet<float>(config, rng), 0.9);
    const Fixture fixture = load_fixture(momentum, fixture_path(model));
    const auto a = named_parameters(net);
    const auto b = named_parameters(momentum);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].first == b[i].first);
      CHECK((a[i].second->array() == b[i].second->array()).all());
    }
    const Values step = run_resnet(momentum, fixture.real("input"), fixture.labels(), "train");
    for (const auto& [name, t] : step.reals) CHECK(t.array().isFinite().all());
    // At gamma 0 (stored mode) the momentum stages are the ResNet's stages,
    // up to the fixed-point rounding of their state: PyTorch's values again.
    MomentumOptions stored;
    stored.mode = BackwardMode::stored;
    for (const std::string mode : {"train", "eval"}) {
      INFO("gamma 0, mode " << mode);
      Sequential<float> resnet_again = to_momentum(resnet<float>(config, rng), 0.0, stored);
      const Fixture same = load_fixture(resnet_again, fixture_path(model));
      compare(run_resnet(resnet_again, same.real("input"), same.labels(), mode), same, mode + ".");
    }
  }
}

// The masks of a fixture are the ones momnet's builders make (the random
// src_mask aside): PyTorch's and momnet's conventions agree.
TEST_CASE("The Transformer fixtures' masks are momnet's causal and key padding masks", "[torch][transformer]") {
  TransformerEncoder<float> encoder = torch_encoder(1);
  const Fixture e = load_fixture(encoder, fixture_path("transformer_encoder"));
  const std::vector<Eigen::Index> lengths = e.indices("src_lengths");
  CHECK(lengths == std::vector<Eigen::Index>{6, 4});
  CHECK((key_padding_mask<float>(lengths, 6).array() == e.real("mask.src_key_padding_mask").array()).all());
  CHECK(e.real("mask.src_mask").array().isFinite().all());

  Transformer<float> transformer = torch_transformer(2);
  const Fixture t = load_fixture(transformer, fixture_path("transformer"));
  const std::vector<Eigen::Index> src = t.indices("src_lengths"), tgt = t.indices("tgt_lengths");
  CHECK((causal_mask<float>(4).array() == t.real("mask.tgt_mask").array()).all());
  CHECK((Transformer<float>::generate_square_subsequent_mask(4).array() == t.real("mask.tgt_mask").array()).all());
  CHECK((key_padding_mask<float>(src, 5).array() == t.real("mask.src_key_padding_mask").array()).all());
  CHECK((key_padding_mask<float>(src, 5).array() == t.real("mask.memory_key_padding_mask").array()).all());
  CHECK((key_padding_mask<float>(tgt, 4).array() == t.real("mask.tgt_key_padding_mask").array()).all());
  // Some key of every sequence is masked: the masks change the answer.
  CHECK(src != std::vector<Eigen::Index>{5, 5});
  CHECK(tgt != std::vector<Eigen::Index>{4, 4});
}

TEST_CASE("A pre-norm gelu TransformerEncoder with masks agrees with nn.TransformerEncoder", "[torch][transformer]") {
  TransformerEncoder<float> encoder = torch_encoder(3);
  const Fixture fixture = load_fixture(encoder, fixture_path("transformer_encoder"));
  // The architecture PyTorch ran is the one built here.
  CHECK(fixture.metadata.at("nhead") == "4");
  CHECK(fixture.metadata.at("num_layers") == "2");
  CHECK(fixture.metadata.at("activation") == "gelu");
  CHECK(fixture.metadata.at("norm_first") == "true");
  CHECK(fixture.metadata.at("final_norm") == "true");
  compare(run_encoder(encoder, fixture.data, "plain."), fixture, "plain.");

  // At gamma 0 (stored mode) the Momentum encoder is the plain one, up to
  // its fixed-point state: PyTorch's plain values again.
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  TransformerEncoder<float, MomentumResidual> gamma0 = to_momentum(torch_encoder(4), 0.0, stored);
  const Fixture same = load_fixture(gamma0, fixture_path("transformer_encoder"));
  compare(run_encoder(gamma0, same.data, "plain."), same, "plain.");
}

TEST_CASE("The Momentum TransformerEncoder agrees with PyTorch's momentum loop over the layers, exact and stored",
          "[torch][transformer][momentum]") {
  for (const BackwardMode mode : {BackwardMode::exact, BackwardMode::stored}) {
    INFO("mode " << to_string(mode));
    MomentumOptions options;
    options.mode = mode;
    TransformerEncoder<float, MomentumResidual> encoder = to_momentum(torch_encoder(5), 0.9, options);
    const Fixture fixture = load_fixture(encoder, fixture_path("transformer_encoder"));
    // PyTorch ran with the gamma momnet uses: 0.9 rounded to p / 2^16.
    REQUIRE(std::stod(fixture.metadata.at("gamma")) == encoder.layers().gamma().value());
    compare(run_encoder(encoder, fixture.data, "momentum."), fixture, "momentum.");
  }
}

TEST_CASE("A post-norm Transformer with a causal mask and key padding masks agrees with nn.Transformer",
          "[torch][transformer]") {
  Transformer<float> transformer = torch_transformer(6);
  const Fixture fixture = load_fixture(transformer, fixture_path("transformer"));
  CHECK(fixture.metadata.at("nhead") == "2");
  CHECK(fixture.metadata.at("num_encoder_layers") == "2");
  CHECK(fixture.metadata.at("num_decoder_layers") == "2");
  CHECK(fixture.metadata.at("activation") == "relu");
  CHECK(fixture.metadata.at("norm_first") == "false");
  compare(run_transformer(transformer, fixture.data, "plain."), fixture, "plain.");

  // to_momentum keeps nn.Transformer's names: the converted model loads the
  // same file, and at gamma 0 (stored) computes PyTorch's values, the
  // decoder's memory gradient included (grad.src).
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  Transformer<float, MomentumResidual> gamma0 = to_momentum(torch_transformer(7), 0.0, stored);
  const Fixture same = load_fixture(gamma0, fixture_path("transformer"));
  compare(run_transformer(gamma0, same.data, "plain."), same, "plain.");

  // At gamma 0.9, exact: no PyTorch reference, but the same file loads and
  // the step runs to finite values.
  Transformer<float, MomentumResidual> momentum = to_momentum(torch_transformer(8), 0.9);
  const Fixture again = load_fixture(momentum, fixture_path("transformer"));
  const Values step = run_transformer(momentum, again.data, "momentum.");
  for (const auto& [name, t] : step.reals) {
    INFO(name);
    CHECK(t.array().isFinite().all());
  }
}

namespace {

// A file for `torch_reference.py check`: `state` (the model before any
// step), the inputs, and momnet's values of every step.
void write_check_file(const std::string& path, const Values& state, const Values& inputs,
                      const std::vector<Values>& steps, std::map<std::string, std::string> metadata) {
  std::vector<NamedTensor> tensors;
  for (const Values* values : {&state, &inputs}) {
    for (const auto& [name, t] : values->reals) tensors.emplace_back(name, t);
    for (const auto& [name, t] : values->integers) tensors.emplace_back(name, t);
  }
  for (const Values& values : steps) {
    for (const auto& [name, t] : values.reals) tensors.emplace_back(name, t);
    for (const auto& [name, t] : values.integers) tensors.emplace_back(name, t);
  }
  metadata.emplace("format", "pt");
  metadata.emplace("generator", "tests/test_torch_fixtures.cpp (momnet)");
  // Always checked that it serialises and parses back with every name; on
  // disk only when asked.
  const std::vector<std::uint8_t> bytes = serialize_safetensors(tensors, metadata);
  const SafetensorsFile parsed = SafetensorsFile::parse(bytes.data(), bytes.size(), path);
  CHECK(parsed.entries().size() == tensors.size());
  if (!path.empty()) write_safetensors(path, tensors, metadata);
}

template <class Model>
Values state_copy(Model& model) {
  Values values;
  for (auto& [name, p] : named_parameters(model)) values.reals.emplace(name, copy_of(p->value_data(), p->shape()));
  collect_buffers(model, "", values);
  return values;
}

Tensor<float> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<float> t(shape);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(rng.normal());
  return t;
}

// Batch-norm state away from 1, 0, 0, 1, so that PyTorch reading it matters.
void randomise_batch_norms(Sequential<float>& net, Rng& rng) {
  std::set<std::string> norms;  // the prefixes of layers with running statistics
  for (auto& [name, b] : named_buffers(net)) {
    const std::string suffix = ".running_mean";
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      norms.insert(name.substr(0, name.size() - suffix.size()));
    }
  }
  const auto in_norm = [&](const std::string& name, const std::string& leaf) {
    return name.size() > leaf.size() && name.compare(name.size() - leaf.size(), leaf.size(), leaf) == 0 &&
           norms.count(name.substr(0, name.size() - leaf.size())) != 0;
  };
  for (auto& [name, p] : named_parameters(net)) {
    for (Eigen::Index i = 0; i < p->size(); ++i) {
      if (in_norm(name, ".weight")) p->value_data()[i] = static_cast<float>(rng.uniform(0.5, 1.5));
      if (in_norm(name, ".bias")) p->value_data()[i] = static_cast<float>(rng.uniform(-0.3, 0.3));
    }
  }
  for (auto& [name, b] : named_buffers(net)) {
    if (b.integer != nullptr) {
      b.integer->array().setConstant(5);
      continue;
    }
    const bool variance = in_norm(name, ".running_var");
    for (Eigen::Index i = 0; i < b.real->size(); ++i) {
      b.real->data()[i] = static_cast<float>(variance ? rng.uniform(0.5, 2.0) : rng.uniform(-0.3, 0.3));
    }
  }
}

// The rank-1 parameters (biases, norms) away from momnet's 0 and 1 starts,
// so that PyTorch reading them matters.
template <class Model>
void randomise_vectors(Model& model, Rng& rng) {
  for (auto& [name, p] : named_parameters(model)) {
    if (p->shape().rank() != 1) continue;
    const std::string weight = ".weight";
    const bool norm_weight = name.find("norm") != std::string::npos && name.size() > weight.size() &&
                             name.compare(name.size() - weight.size(), weight.size(), weight) == 0;
    for (Eigen::Index i = 0; i < p->size(); ++i) {
      p->value_data()[i] = static_cast<float>(norm_weight ? rng.uniform(0.5, 1.5) : 0.2 * rng.normal());
    }
  }
}

}  // namespace

TEST_CASE("momnet-initialised models go to PyTorch (MOMNET_WRITE_TORCH_CHECK=DIR writes them)", "[torch][io]") {
  const char* directory = std::getenv("MOMNET_WRITE_TORCH_CHECK");
  const auto path = [&](const std::string& model) {
    return directory == nullptr ? std::string() : std::string(directory) + "/momnet_" + model + ".safetensors";
  };
  Rng rng(5);
  {
    MomentumResidual<MLPBlock<float>> model = mlp_momentum(BackwardMode::exact, 6);
    Values inputs;
    inputs.reals.emplace("input", random_tensor(Shape{4, 8}, rng));
    inputs.reals.emplace("loss_weight", random_tensor(Shape{4, 8}, rng));
    const Values state = state_copy(model);
    const Values step = run_mlp(model, inputs.reals.at("input"), inputs.reals.at("loss_weight"));
    write_check_file(path("mlp_momentum"), state, inputs, {step},
                     {{"model", "mlp_momentum"}, {"gamma", exact_decimal(model.gamma().value())}});
  }
  for (const auto& [model, config] : {std::pair{std::string("resnet_basic"), basic_config()},
                                      std::pair{std::string("resnet_bottleneck"), bottleneck_config()}}) {
    Sequential<float> net = resnet<float>(config, rng);
    randomise_batch_norms(net, rng);
    Values inputs;
    inputs.reals.emplace("input", random_tensor(Shape{4, 3, 8, 8}, rng));
    Tensor<std::int64_t> labels(Shape{4});
    for (Eigen::Index i = 0; i < 4; ++i) labels.data()[i] = static_cast<std::int64_t>(rng.next() % 10);
    inputs.integers.emplace("labels", labels);
    const std::vector<int> label_list(labels.data(), labels.data() + labels.size());
    const Values state = state_copy(net);
    std::vector<Values> steps;
    for (const std::string mode : {"train", "eval"}) {
      Sequential<float> copy = net;  // each step from the same state
      steps.push_back(run_resnet(copy, inputs.reals.at("input"), label_list, mode));
    }
    write_check_file(path(model), state, inputs, steps, {{"model", model}});
  }
  {
    TransformerEncoder<float> encoder = torch_encoder(7);
    randomise_vectors(encoder, rng);
    Values inputs;
    inputs.reals.emplace("input", random_tensor(Shape{2, 6, transformer_width}, rng));
    inputs.reals.emplace("loss_weight", random_tensor(Shape{2, 6, transformer_width}, rng));
    Tensor<float> src_mask = random_tensor(Shape{6, 6}, rng);
    src_mask.array() *= 0.5f;
    inputs.reals.emplace("mask.src_mask", src_mask);
    inputs.reals.emplace("mask.src_key_padding_mask", key_padding_mask<float>({6, 3}, 6));
    const Values state = state_copy(encoder);
    TransformerEncoder<float, MomentumResidual> momentum = to_momentum(encoder, 0.9);
    const Values plain_step = run_encoder(encoder, inputs, "plain.");
    const Values momentum_step = run_encoder(momentum, inputs, "momentum.");
    write_check_file(path("transformer_encoder"), state, inputs, {plain_step, momentum_step},
                     {{"model", "transformer_encoder"},
                      {"gamma", exact_decimal(momentum.layers().gamma().value())}});
  }
  {
    Transformer<float> transformer = torch_transformer(8);
    randomise_vectors(transformer, rng);
    Values inputs;
    inputs.reals.emplace("src", random_tensor(Shape{2, 5, transformer_width}, rng));
    inputs.reals.emplace("tgt", random_tensor(Shape{2, 4, transformer_width}, rng));
    inputs.reals.emplace("loss_weight", random_tensor(Shape{2, 4, transformer_width}, rng));
    inputs.reals.emplace("mask.tgt_mask", causal_mask<float>(4));
    inputs.reals.emplace("mask.src_key_padding_mask", key_padding_mask<float>({4, 5}, 5));
    inputs.reals.emplace("mask.tgt_key_padding_mask", key_padding_mask<float>({2, 4}, 4));
    inputs.reals.emplace("mask.memory_key_padding_mask", key_padding_mask<float>({4, 5}, 5));
    const Values state = state_copy(transformer);
    write_check_file(path("transformer"), state, inputs, {run_transformer(transformer, inputs, "plain.")},
                     {{"model", "transformer"}});
  }
  if (directory != nullptr) WARN("wrote momnet_*.safetensors to " << directory);
}

#endif  // __has_include(<nlohmann/json.hpp>)
