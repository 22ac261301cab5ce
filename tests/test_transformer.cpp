// The Transformer stacks (models/transformer.hpp): PyTorch's names and
// shapes, to_momentum, the masks and the memory as extra inputs of the
// stacks, bitwise rebuilds through attention with masks and dropout, exact
// gradients against stored ones and against finite differences.
#include <catch2/catch.hpp>

#include <momnet/momnet.hpp>
#include <momnet/models/transformer.hpp>

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "helpers.hpp"
#include "support.hpp"

using namespace momnet;
using momnet_test::relative_error;

namespace {

template <class T>
Tensor<T> random_values(const Shape& shape, std::uint64_t seed, double scale = 1.0) {
  const Tensor<double> u = momnet_test::uniform(shape, seed, -scale, scale);
  Tensor<T> t(shape);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(u.data()[i]);
  return t;
}

TransformerOptions small_options(double dropout = 0.0, bool norm_first = false) {
  TransformerOptions o;
  o.d_model = 8;
  o.nhead = 2;
  o.num_encoder_layers = 2;
  o.num_decoder_layers = 1;
  o.dim_feedforward = 16;
  o.dropout = dropout;
  o.norm_first = norm_first;
  return o;
}

TransformerLayerOptions layer_options(double dropout, bool norm_first = false,
                                      TransformerActivation activation = TransformerActivation::relu) {
  TransformerLayerOptions o;
  o.dim_feedforward = 16;
  o.dropout = dropout;
  o.norm_first = norm_first;
  o.activation = activation;
  return o;
}

// nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2,
// num_decoder_layers=1, dim_feedforward=16).state_dict(), in order (PyTorch 1.13).
std::vector<std::pair<std::string, std::string>> pytorch_transformer_names() {
  const std::vector<std::pair<std::string, std::string>> attention{
      {"in_proj_weight", "24,8"}, {"in_proj_bias", "24"}, {"out_proj.weight", "8,8"}, {"out_proj.bias", "8"}};
  const std::vector<std::pair<std::string, std::string>> feed_forward{
      {"linear1.weight", "16,8"}, {"linear1.bias", "16"}, {"linear2.weight", "8,16"}, {"linear2.bias", "8"}};
  std::vector<std::pair<std::string, std::string>> names;
  auto add = [&names](const std::string& prefix, const std::vector<std::pair<std::string, std::string>>& list) {
    for (const auto& [name, shape] : list) names.emplace_back(prefix + name, shape);
  };
  auto norms = [](int count) {
    std::vector<std::pair<std::string, std::string>> list;
    for (int i = 1; i <= count; ++i) {
      list.emplace_back("norm" + std::to_string(i) + ".weight", "8");
      list.emplace_back("norm" + std::to_string(i) + ".bias", "8");
    }
    return list;
  };
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "encoder.layers." + std::to_string(layer) + ".";
    add(prefix + "self_attn.", attention);
    add(prefix, feed_forward);
    add(prefix, norms(2));
  }
  add("encoder.", {{"norm.weight", "8"}, {"norm.bias", "8"}});
  add("decoder.layers.0.self_attn.", attention);
  add("decoder.layers.0.multihead_attn.", attention);
  add("decoder.layers.0.", feed_forward);
  add("decoder.layers.0.", norms(3));
  add("decoder.", {{"norm.weight", "8"}, {"norm.bias", "8"}});
  return names;
}

std::string shape_text(const Shape& shape) {
  std::string text;
  for (Eigen::Index i = 0; i < shape.rank(); ++i) text += (i ? "," : "") + std::to_string(shape.dim(i));
  return text;
}

template <class Model>
std::vector<std::pair<std::string, std::string>> names_of(Model& model) {
  std::vector<std::pair<std::string, std::string>> names;
  for (auto& [name, p] : named_parameters(model)) names.emplace_back(name, shape_text(p->shape()));
  return names;
}

template <class Model>
std::vector<double> parameter_gradients(Model& model) {
  std::vector<double> g;
  for (Parameter<typename Model::Scalar>* p : parameters_of(model)) {
    g.insert(g.end(), p->grad_array().begin(), p->grad_array().end());
  }
  return g;
}

// sum(out * R) for a fixed random R: a loss whose gradient does not vanish
// behind a final LayerNorm (sum(out^2) of a normalised output is nearly constant).
template <class T>
Var<T> projection_loss(Tape<T>& tape, const Var<T>& out, std::uint64_t seed = 99) {
  return sum(mul(out, tape.constant(random_values<T>(out.shape(), seed))));
}

template <class T>
std::vector<double> values_of(const Var<T>& v) {
  return std::vector<double>(v.data(), v.data() + v.size());
}

template <class T>
std::vector<double> grad_of(const Var<T>& v) {
  return std::vector<double>(v.grad().data(), v.grad().data() + v.size());
}

}  // namespace

TEST_CASE("Transformer has nn.Transformer's parameter names and shapes, kept by to_momentum",
          "[transformer][names]") {
  Rng rng(1);
  Transformer<float> plain(small_options(), rng);
  const auto expected = pytorch_transformer_names();
  CHECK(names_of(plain) == expected);
  auto momentum = to_momentum(plain, 0.9);
  CHECK(names_of(momentum) == expected);
  // The conversion copies the values: the momentum model starts from the
  // plain one's weights and the two stay independent.
  const auto p = named_parameters(plain);
  const auto m = named_parameters(momentum);
  REQUIRE(p.size() == m.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    INFO(p[i].first);
    CHECK((p[i].second->array() == m[i].second->array()).all());
    CHECK(p[i].second != m[i].second);
  }
  // nn.Transformer redraws every matrix: the layers' copies differ after it.
  const auto encoder_parameters = named_parameters(plain.encoder().layers());
  CHECK_FALSE((encoder_parameters[0].second->array() == encoder_parameters[12].second->array()).all());
}

TEST_CASE("TransformerEncoder(layer, n) copies the layer as PyTorch does; the final norm is optional",
          "[transformer][names]") {
  Rng rng(2);
  TransformerEncoderLayer<double> layer(8, 2, rng, layer_options(0.0));
  TransformerEncoder<double> encoder(layer, 3);
  const auto named = named_parameters(encoder);
  REQUIRE(named.size() == 36);
  CHECK(named[0].first == "layers.0.self_attn.in_proj_weight");
  CHECK(named[35].first == "layers.2.norm2.bias");
  CHECK((named[0].second->array() == named[12].second->array()).all());  // copies
  CHECK(encoder.num_layers() == 3);
  TransformerEncoder<double> with_norm(layer, 1, LayerNorm<double>(8));
  CHECK(named_parameters(with_norm).back().first == "norm.bias");
}

TEST_CASE("The stacks give PyTorch's layer output: x + (layer(x) - x) with the masks as extra inputs",
          "[transformer]") {
  Rng rng(3);
  TransformerEncoderLayer<double> layer(8, 2, rng, layer_options(0.0));
  TransformerEncoder<double> encoder(layer, 1);
  Tape<double> tape;
  const Var<double> src = tape.constant(random_values<double>(Shape{2, 5, 8}, 4));
  const Var<double> mask = tape.constant(causal_mask<double>(5));
  const Var<double> padding = tape.constant(key_padding_mask<double>({5, 3}, 5));
  // Each mask alone and both, against the layer called on its own.
  for (int which = 0; which < 3; ++which) {
    AttentionMasks<double> masks;
    if (which != 1) masks.attn_mask = mask;
    if (which != 0) masks.key_padding_mask = padding;
    const Var<double> direct = layer.forward(tape, src, masks);
    const Var<double> stacked = encoder.forward(tape, src, masks.attn_mask, masks.key_padding_mask);
    INFO(which);
    CHECK(relative_error(values_of(direct), values_of(stacked)) <= 1e-14);
  }
  // A mask makes a difference (the test above would pass if masks were ignored).
  CHECK(relative_error(values_of(encoder.forward(tape, src)), values_of(encoder.forward(tape, src, mask))) > 1e-3);
}

TEST_CASE("The decoder stack passes the memory and each of the four masks to its layers", "[transformer]") {
  Rng rng(30);
  TransformerDecoderLayer<double> layer(8, 2, rng, layer_options(0.0));
  TransformerDecoder<double> decoder(layer, 1);
  Tape<double> tape;
  const Var<double> tgt = tape.constant(random_values<double>(Shape{2, 3, 8}, 31));
  const Var<double> memory = tape.constant(random_values<double>(Shape{2, 4, 8}, 32));
  const Var<double> tgt_mask = tape.constant(causal_mask<double>(3));
  const Var<double> memory_mask = tape.constant(random_values<double>(Shape{3, 4}, 33, 2.0));
  const Var<double> tgt_padding = tape.constant(key_padding_mask<double>({3, 2}, 3));
  const Var<double> memory_padding = tape.constant(key_padding_mask<double>({4, 1}, 4));
  const Var<double> none;
  // Each mask alone (the others absent, so that a mask given in the wrong
  // place or dropped shows), then all four.
  const std::vector<std::vector<Var<double>>> cases{{tgt_mask, none, none, none},
                                                    {none, memory_mask, none, none},
                                                    {none, none, tgt_padding, none},
                                                    {none, none, none, memory_padding},
                                                    {tgt_mask, memory_mask, tgt_padding, memory_padding}};
  std::vector<double> unmasked = values_of(decoder.forward(tape, tgt, memory));
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& m = cases[i];
    const Var<double> direct = layer.forward(tape, tgt, memory, AttentionMasks<double>{m[0], m[2]},
                                             AttentionMasks<double>{m[1], m[3]});
    const Var<double> stacked = decoder.forward(tape, tgt, memory, m[0], m[1], m[2], m[3]);
    INFO("case " << i);
    CHECK(relative_error(values_of(direct), values_of(stacked)) <= 1e-14);
    CHECK(relative_error(values_of(stacked), unmasked) > 1e-4);
  }
}

TEST_CASE("A plain Transformer passes the gradient check with every mask", "[transformer][gradients]") {
  Rng rng(5);
  for (const bool norm_first : {false, true}) {
    Transformer<double> model(small_options(0.0, norm_first), rng);
    const Tensor<double> src = random_values<double>(Shape{2, 4, 8}, 6);
    const Tensor<double> tgt = random_values<double>(Shape{2, 3, 8}, 7);
    auto loss = [&](Tape<double>& tape, const std::vector<Var<double>>& vars) {
      TransformerMasks<double> masks;
      masks.tgt_mask = tape.constant(causal_mask<double>(3));
      masks.src_key_padding_mask = tape.constant(key_padding_mask<double>({4, 2}, 4));
      masks.memory_key_padding_mask = masks.src_key_padding_mask;
      masks.tgt_key_padding_mask = tape.constant(key_padding_mask<double>({3, 3}, 3));
      return projection_loss(tape, model.forward(tape, vars[0], vars[1], masks));
    };
    const GradientCheckResult result = check_gradients(loss, {src, tgt}, parameters_of(model));
    INFO("norm_first " << norm_first << ": " << result.worst);
    CHECK(result.passed);
  }
}

TEST_CASE("to_momentum at gamma = 0 (stored) is the plain Transformer, dropout masks included",
          "[transformer][momentum]") {
  Rng rng(8);
  Transformer<double> plain(small_options(0.2), rng);
  MomentumOptions stored;
  stored.mode = BackwardMode::stored;
  auto momentum = to_momentum(plain, 0.0, stored);
  const Tensor<double> src = random_values<double>(Shape{2, 4, 8}, 9);
  const Tensor<double> tgt = random_values<double>(Shape{2, 3, 8}, 10);
  std::vector<std::vector<double>> outputs, grads;
  for (int model = 0; model < 2; ++model) {
    Tape<double> tape;
    TransformerMasks<double> masks;
    masks.tgt_mask = tape.constant(causal_mask<double>(3));
    const Var<double> s = tape.variable(src), t = tape.variable(tgt);
    const Var<double> out = model == 0 ? plain.forward(tape, s, t, masks) : momentum.forward(tape, s, t, masks);
    tape.backward(projection_loss(tape, out));
    outputs.push_back(values_of(out));
    std::vector<double> g = grad_of(s);
    const std::vector<double> gt = grad_of(t);
    g.insert(g.end(), gt.begin(), gt.end());
    grads.push_back(std::move(g));
  }
  CHECK(relative_error(outputs[0], outputs[1]) <= 1e-13);
  CHECK(relative_error(grads[0], grads[1]) <= 1e-12);
  // And gamma > 0 is another network.
  auto heavy = to_momentum(plain, 0.9);
  Tape<double> tape;
  const Var<double> out = heavy.forward(tape, tape.constant(src), tape.constant(tgt));
  CHECK(relative_error(outputs[0], values_of(out)) > 1e-3);
}

TEMPLATE_TEST_CASE("Momentum encoder and decoder stacks rebuild bit for bit at depth 100 through attention with "
                   "masks and dropout",
                   "[transformer][momentum][exact]", float, double) {
  using T = TestType;
  const std::size_t depth = 100;
  Rng rng(11);
  // A post-norm encoder and a pre-norm GELU decoder, each of depth 100 (small
  // widths: the test is about the arithmetic, not the size).
  std::vector<TransformerEncoderLayer<T>> encoder_layers;
  std::vector<TransformerDecoderLayer<T>> decoder_layers;
  for (std::size_t i = 0; i < depth; ++i) {
    encoder_layers.emplace_back(8, 2, rng, layer_options(0.1));
    decoder_layers.emplace_back(8, 2, rng, layer_options(0.1, true, TransformerActivation::gelu));
  }
  MomentumOptions options;
  options.gamma = 0.9;
  options.seed = 21;
  TransformerEncoder<T, MomentumResidual> encoder(encoder_layers, std::nullopt, options);
  TransformerDecoder<T, MomentumResidual> decoder(decoder_layers, std::nullopt, options);
  std::vector<std::vector<std::int64_t>> forward_states(2 * depth), rebuilt(2 * depth);
  auto observe = [&](std::size_t offset) {
    return [&forward_states, &rebuilt, offset](const LayerEvent<T>& e) {
      std::vector<std::int64_t> words(e.x_fixed, e.x_fixed + e.elements);
      words.insert(words.end(), e.v_fixed, e.v_fixed + e.elements);
      (e.phase == LayerEvent<T>::Phase::forward ? forward_states : rebuilt)[offset + e.layer] = std::move(words);
    };
  };
  encoder.layers().set_observer(observe(0));
  decoder.layers().set_observer(observe(depth));
  Tape<T> tape;
  const Var<T> src = tape.variable(random_values<T>(Shape{2, 5, 8}, 12));
  const Var<T> tgt = tape.variable(random_values<T>(Shape{2, 4, 8}, 13));
  const Var<T> memory = encoder.forward(tape, src, Var<T>(), tape.constant(key_padding_mask<T>({5, 4}, 5)));
  const Var<T> out = decoder.forward(tape, tgt, memory, tape.constant(causal_mask<T>(4)), Var<T>(), Var<T>(),
                                     tape.constant(key_padding_mask<T>({5, 4}, 5)));
  tape.backward(projection_loss(tape, out));
  std::size_t same = 0;
  for (std::size_t n = 0; n < 2 * depth; ++n) same += forward_states[n] == rebuilt[n] && !rebuilt[n].empty();
  CHECK(same == 2 * depth);
  // The gradient reached the source through the memory.
  double norm = 0.0;
  for (double g : grad_of(src)) norm += g * g;
  CHECK(norm > 0.0);
}

TEST_CASE("Exact gradients of a Momentum Transformer at depth 48 equal the stored mode's", "[transformer][momentum][exact]") {
  TransformerOptions o = small_options(0.1);
  o.num_encoder_layers = 24;
  o.num_decoder_layers = 24;
  Rng rng(14);
  Transformer<double> plain(o, rng);
  MomentumOptions exact_options, stored_options;
  stored_options.mode = BackwardMode::stored;
  auto exact = to_momentum(plain, 0.9, exact_options);
  auto stored = to_momentum(plain, 0.9, stored_options);
  const Tensor<double> src = random_values<double>(Shape{2, 5, 8}, 15);
  const Tensor<double> tgt = random_values<double>(Shape{2, 4, 8}, 16);
  std::vector<std::vector<double>> grads;
  for (int model = 0; model < 2; ++model) {
    auto& net = model == 0 ? exact : stored;
    zero_grad(net);
    Tape<double> tape;
    TransformerMasks<double> masks;
    masks.tgt_mask = tape.constant(causal_mask<double>(4));
    masks.src_key_padding_mask = tape.constant(key_padding_mask<double>({5, 3}, 5));
    masks.memory_key_padding_mask = masks.src_key_padding_mask;
    const Var<double> s = tape.variable(src), t = tape.variable(tgt);
    tape.backward(projection_loss(tape, net.forward(tape, s, t, masks)));
    std::vector<double> g = parameter_gradients(net);
    for (const Var<double>* v : {&s, &t}) {
      const std::vector<double> gv = grad_of(*v);
      g.insert(g.end(), gv.begin(), gv.end());
    }
    grads.push_back(std::move(g));
  }
  CHECK(relative_error(grads[0], grads[1]) <= 1e-12);
}

TEST_CASE("The decoder's memory gets its gradient through the exact backward (finite differences)",
          "[transformer][momentum][gradients]") {
  Rng rng(17);
  std::vector<TransformerDecoderLayer<double>> layers;
  for (int i = 0; i < 3; ++i) layers.emplace_back(8, 2, rng, layer_options(0.0, i % 2 == 1));
  MomentumOptions options;
  options.gamma = 0.9;
  TransformerDecoder<double, MomentumResidual> decoder(layers, LayerNorm<double>(8), options);
  const Tensor<double> tgt = random_values<double>(Shape{2, 3, 8}, 18);
  const Tensor<double> memory = random_values<double>(Shape{2, 4, 8}, 19);
  auto loss = [&](Tape<double>& tape, const std::vector<Var<double>>& vars) {
    return projection_loss(tape, decoder.forward(tape, vars[0], vars[1], tape.constant(causal_mask<double>(3))));
  };
  const GradientCheckResult result = check_gradients(loss, {tgt, memory}, parameters_of(decoder),
                                                     momnet_test::quantized_check());
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("Train and eval mode reach the layers inside the stacks", "[transformer]") {
  Rng rng(20);
  Transformer<float> model(small_options(0.5), rng);
  const Tensor<float> src = random_values<float>(Shape{2, 4, 8}, 21);
  const Tensor<float> tgt = random_values<float>(Shape{2, 3, 8}, 22);
  auto run = [&] {
    Tape<float> tape;
    return values_of(model.forward(tape, tape.constant(src), tape.constant(tgt)));
  };
  // Training: dropout draws new masks each step.
  CHECK(relative_error(run(), run()) > 1e-3);
  eval(model);
  CHECK(run() == run());
  train(model);
  CHECK(relative_error(run(), run()) > 1e-3);
}

TEST_CASE("The Transformer stacks refuse bad inputs with clear messages", "[transformer][errors]") {
  Rng rng(23);
  Transformer<double> model(small_options(), rng);
  Tape<double> tape;
  const Var<double> src = tape.constant(random_values<double>(Shape{2, 4, 8}, 24));
  const Var<double> tgt = tape.constant(random_values<double>(Shape{2, 3, 8}, 25));
  REQUIRE_THROWS_EXACT(model.decoder().forward(tape, tgt, Var<double>()), std::invalid_argument,
                       "momnet::TransformerDecoder::forward", "memory");
  // A mask of the wrong size reaches the layer through the stack and is refused there.
  CHECK_THROWS_AS(model.encoder().forward(tape, src, tape.constant(causal_mask<double>(3))), std::invalid_argument);
  // d_model differs from the input's last axis.
  const Var<double> wide = tape.constant(random_values<double>(Shape{2, 4, 6}, 26));
  CHECK_THROWS_AS(model.forward(tape, wide, tgt), std::invalid_argument);
  // A stack that would add x twice is refused.
  TransformerEncoderLayer<double> layer(8, 2, rng, layer_options(0.0));
  Residual<TransformerEncoderLayer<double>> residual(std::vector<TransformerEncoderLayer<double>>{layer});
  REQUIRE_THROWS_EXACT((TransformerEncoder<double>(residual, std::nullopt)), std::invalid_argument,
                       "momnet::TransformerEncoder", "residual_blocks = false");
}
