// TransformerEncoderLayer and TransformerDecoderLayer: PyTorch's names, the
// post-norm and pre-norm wiring against the same computation written out
// with the layers' parts, gradients against finite differences (w.r.t. the
// input, the decoder's memory given as extra input 0 and every parameter),
// replayable dropout, the layers inside Residual and MomentumResidual with
// masks as extra inputs (the exact backward's gradients equal stored
// backprop's), float runs, and the exact exception for each bad argument.
#include <catch2/catch.hpp>

#include <momnet/layers/attention_mask.hpp>
#include <momnet/models/transformer_decoder_layer.hpp>
#include <momnet/models/transformer_encoder_layer.hpp>
#include <momnet/momnet.hpp>

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using momnet::AttentionMasks;
using momnet::CallContext;
using momnet::Parameter;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::TransformerActivation;
using momnet::TransformerDecoderLayer;
using momnet::TransformerEncoderLayer;
using momnet::TransformerLayerOptions;
using momnet::Var;
using momnet_test::uniform;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

// Small sizes keep the finite-difference checks fast (also under the sanitizers).
constexpr Index B = 2, T = 3, S = 4, D = 4, H = 2, FF = 8;
const double inf = std::numeric_limits<double>::infinity();

TransformerLayerOptions layer_options(bool norm_first, TransformerActivation activation, double dropout = 0.0,
                                      bool bias = true) {
  TransformerLayerOptions options;
  options.dim_feedforward = FF;
  options.dropout = dropout;
  options.activation = activation;
  options.norm_first = norm_first;
  options.bias = bias;
  return options;
}

// Random values in every parameter (biases start at zero, norms at one).
template <class Module>
void randomize(Module& module, std::uint64_t seed) {
  momnet::Rng rng(seed);
  for (auto& entry : momnet::named_parameters(module)) {
    Parameter<typename Module::Scalar>& p = *entry.second;
    const bool norm_weight = entry.first.find("norm") != std::string::npos &&
                             entry.first.find("weight") != std::string::npos;
    for (Index i = 0; i < p.size(); ++i) {
      p.value_data()[i] = static_cast<typename Module::Scalar>(rng.uniform(-0.5, 0.5) + (norm_weight ? 1.0 : 0.0));
    }
  }
}

template <class Layer>
Layer make_layer(const TransformerLayerOptions& options, std::uint64_t seed = 1) {
  momnet::Rng rng(seed);
  Layer layer(D, H, rng, options);
  randomize(layer, seed + 100);
  return layer;
}

std::vector<std::string> names_of_parameters(std::vector<std::pair<std::string, Parameter<double>*>> list) {
  std::vector<std::string> names;
  for (const auto& entry : list) names.push_back(entry.first);
  return names;
}

// [L, L]: the causal mask plus finite values.
Tensor<double> self_mask(Index length, std::uint64_t seed) {
  Tensor<double> m = momnet::causal_mask<double>(length);
  const Tensor<double> noise = uniform(Shape{length, length}, seed, -0.5, 0.5);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] += noise.data()[i];
  return m;
}

// [B, L]: batch 1 padded after `length` positions, plus finite values.
Tensor<double> padding(Index length, Index max_len, std::uint64_t seed) {
  Tensor<double> m = momnet::key_padding_mask<double>({max_len, length}, max_len);
  const Tensor<double> noise = uniform(Shape{B, max_len}, seed, -0.5, 0.5);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] += noise.data()[i];
  return m;
}

// [T, S] with -inf at (t, s) for s > t + 1.
Tensor<double> memory_mask() {
  Tensor<double> m = uniform(Shape{T, S}, 5, -0.5, 0.5);
  for (Index t = 0; t < T; ++t) {
    for (Index s = t + 2; s < S; ++s) m.data()[t * S + s] = -inf;
  }
  return m;
}

std::vector<double> values(const Var<double>& v) { return std::vector<double>(v.data(), v.data() + v.size()); }

void require_passed(const momnet::GradientCheckResult& result) {
  INFO(result.worst << " (error " << result.max_error << ")");
  CHECK(result.passed);
}

struct Masks {
  Tensor<double> src_mask = self_mask(T, 11);
  Tensor<double> src_padding = padding(2, T, 12);
  Tensor<double> memory_mask = ::memory_mask();
  Tensor<double> memory_padding = padding(3, S, 13);
};

// The decoder's extra inputs in the stack convention, on `tape`.
Vars decoder_extras(Tape<double>& tape, const Var<double>& memory, const Masks& m) {
  return {memory, tape.constant(m.src_mask), tape.constant(m.memory_mask), tape.constant(m.src_padding),
          tape.constant(m.memory_padding)};
}

}  // namespace

// ---- names ---------------------------------------------------------------------

TEST_CASE("Transformer layers have PyTorch's parameter names in state_dict order", "[transformer][names]") {
  momnet::Rng rng(1);
  TransformerEncoderLayer<double> encoder(D, H, rng);
  // torch.nn.TransformerEncoderLayer(8, 2).state_dict().keys() (PyTorch 1.13).
  CHECK(names_of_parameters(momnet::named_parameters(encoder)) ==
        std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                                 "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
                                 "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"});
  TransformerDecoderLayer<double> decoder(D, H, rng);
  CHECK(names_of_parameters(momnet::named_parameters(decoder)) ==
        std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                                 "self_attn.out_proj.bias", "multihead_attn.in_proj_weight",
                                 "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight",
                                 "multihead_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
                                 "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                                 "norm3.weight", "norm3.bias"});
  // PyTorch 2.1's bias=False: no bias anywhere, norms included.
  TransformerEncoderLayer<double> encoder_nb(D, H, rng, layer_options(false, TransformerActivation::relu, 0.1, false));
  CHECK(names_of_parameters(momnet::named_parameters(encoder_nb)) ==
        std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
                                 "linear2.weight", "norm1.weight", "norm2.weight"});
  TransformerDecoderLayer<double> decoder_nb(D, H, rng, layer_options(true, TransformerActivation::gelu, 0.1, false));
  CHECK(names_of_parameters(momnet::named_parameters(decoder_nb)) ==
        std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.out_proj.weight",
                                 "multihead_attn.in_proj_weight", "multihead_attn.out_proj.weight", "linear1.weight",
                                 "linear2.weight", "norm1.weight", "norm2.weight", "norm3.weight"});

  // Shapes, defaults and initialisation.
  CHECK(encoder.dim_feedforward() == 2048);
  CHECK(encoder.linear1().weight().shape() == Shape{2048, D});
  CHECK(encoder.options().dropout == 0.1);
  CHECK(encoder.d_model() == D);
  CHECK(encoder.nhead() == H);
  CHECK(encoder.norm1().weight().array().minCoeff() == 1.0);
  CHECK(encoder.norm2().bias().array().abs().maxCoeff() == 0.0);
  CHECK(encoder.linear2().bias().array().abs().maxCoeff() <= 1.0 / std::sqrt(2048.0));
  CHECK(encoder.linear2().bias().array().abs().maxCoeff() > 0.0);
  CHECK(decoder.norm3().eps() == 1e-5);
  CHECK(decoder.multihead_attn().in_proj_bias().array().abs().maxCoeff() == 0.0);
  CHECK(encoder.training());
}

// ---- wiring --------------------------------------------------------------------

TEST_CASE("Transformer layers compute PyTorch's post-norm and pre-norm formulas", "[transformer][values]") {
  const Masks m;
  const Tensor<double> src = uniform(Shape{B, T, D}, 21), mem = uniform(Shape{B, S, D}, 22);
  for (const bool norm_first : {false, true}) {
    for (const TransformerActivation act : {TransformerActivation::relu, TransformerActivation::gelu}) {
      INFO("norm_first " << norm_first << ", " << momnet::to_string(act));
      auto enc = make_layer<TransformerEncoderLayer<double>>(layer_options(norm_first, act));
      auto dec = make_layer<TransformerDecoderLayer<double>>(layer_options(norm_first, act));
      Tape<double> tape;
      const Var<double> x = tape.constant(src), memory = tape.constant(mem);
      const AttentionMasks<double> self{tape.constant(m.src_mask), tape.constant(m.src_padding)};
      const AttentionMasks<double> cross{tape.constant(m.memory_mask), tape.constant(m.memory_padding)};
      const CallContext<double> none;
      auto ff = [&](auto& layer, const Var<double>& h) {
        const Var<double> hidden = layer.linear1().forward(tape, h);
        return layer.linear2().forward(tape, act == TransformerActivation::relu ? momnet::relu(hidden)
                                                                                 : momnet::gelu(hidden));
      };
      auto sa = [&](auto& layer, const Var<double>& h) { return layer.self_attn().forward(tape, h, h, h, self, none); };
      auto ca = [&](const Var<double>& h) {
        return dec.multihead_attn().forward(tape, h, memory, memory, cross, none);
      };

      Var<double> e = x, d = x;
      if (norm_first) {
        e = momnet::add(e, sa(enc, enc.norm1().forward(tape, e)));
        e = momnet::add(e, ff(enc, enc.norm2().forward(tape, e)));
        d = momnet::add(d, sa(dec, dec.norm1().forward(tape, d)));
        d = momnet::add(d, ca(dec.norm2().forward(tape, d)));
        d = momnet::add(d, ff(dec, dec.norm3().forward(tape, d)));
      } else {
        e = enc.norm1().forward(tape, momnet::add(e, sa(enc, e)));
        e = enc.norm2().forward(tape, momnet::add(e, ff(enc, e)));
        d = dec.norm1().forward(tape, momnet::add(d, sa(dec, d)));
        d = dec.norm2().forward(tape, momnet::add(d, ca(d)));
        d = dec.norm3().forward(tape, momnet::add(d, ff(dec, d)));
      }
      const Var<double> encoded = enc.forward(tape, x, self);
      const Var<double> decoded = dec.forward(tape, x, memory, self, cross);
      REQUIRE(encoded.shape() == Shape{B, T, D});
      REQUIRE(decoded.shape() == Shape{B, T, D});
      CHECK((encoded.array() - e.array()).abs().maxCoeff() < 1e-14);
      CHECK((decoded.array() - d.array()).abs().maxCoeff() < 1e-14);
    }
  }
}

// ---- gradients -----------------------------------------------------------------

// Each combination of norm_first and activation once; two of them through the
// stack convention (masks and memory as extra inputs), two on their own, one
// of those without biases.
struct GradientCase {
  bool norm_first;
  TransformerActivation activation;
  bool in_stack;
  bool bias;
};
const std::vector<GradientCase> gradient_cases{{false, TransformerActivation::relu, true, true},
                                               {true, TransformerActivation::gelu, true, true},
                                               {false, TransformerActivation::gelu, false, false},
                                               {true, TransformerActivation::relu, false, true}};

TEST_CASE("TransformerEncoderLayer passes the gradient check (post-norm and pre-norm, relu and gelu, masks)",
          "[transformer][gradient]") {
  const Masks m;
  const Tensor<double> src = uniform(Shape{B, T, D}, 31);
  for (const GradientCase& c : gradient_cases) {
    INFO("norm_first " << c.norm_first << ", " << momnet::to_string(c.activation) << ", in stack " << c.in_stack
                       << ", bias " << c.bias);
    auto layer = make_layer<TransformerEncoderLayer<double>>(layer_options(c.norm_first, c.activation, 0.0, c.bias), 2);
    require_passed(momnet::check_gradients(
        [&](Tape<double>& tape, const Vars& v) {
          const Var<double> mask = tape.constant(m.src_mask), padding = tape.constant(m.src_padding);
          if (!c.in_stack) return layer.forward(tape, v[0], AttentionMasks<double>{mask, padding});
          const Vars extras{mask, padding};
          return layer.forward(tape, v[0], CallContext<double>(extras.data(), extras.size()));
        },
        {src}, momnet::parameters_of(layer)));
  }
}

TEST_CASE("TransformerDecoderLayer passes the gradient check w.r.t. tgt, the memory (extra 0) and its parameters",
          "[transformer][gradient]") {
  const Masks m;
  const Tensor<double> tgt = uniform(Shape{B, T, D}, 41), mem = uniform(Shape{B, S, D}, 42);
  for (const GradientCase& c : gradient_cases) {
    INFO("norm_first " << c.norm_first << ", " << momnet::to_string(c.activation) << ", in stack " << c.in_stack
                       << ", bias " << c.bias);
    auto layer = make_layer<TransformerDecoderLayer<double>>(layer_options(c.norm_first, c.activation, 0.0, c.bias), 4);
    require_passed(momnet::check_gradients(
        [&](Tape<double>& tape, const Vars& v) {
          const Vars extras = decoder_extras(tape, v[1], m);
          if (!c.in_stack) {
            return layer.forward(tape, v[0], v[1], AttentionMasks<double>{extras[1], extras[3]},
                                 AttentionMasks<double>{extras[2], extras[4]});
          }
          return layer.forward(tape, v[0], CallContext<double>(extras.data(), extras.size()));
        },
        {tgt, mem}, momnet::parameters_of(layer)));
  }
}

TEST_CASE("Transformer layers: missing extras or extras with 0 elements mean no mask", "[transformer][masks]") {
  const Masks m;
  auto enc = make_layer<TransformerEncoderLayer<double>>(layer_options(false, TransformerActivation::relu));
  auto dec = make_layer<TransformerDecoderLayer<double>>(layer_options(false, TransformerActivation::relu));
  Tape<double> tape;
  const Var<double> x = tape.constant(uniform(Shape{B, T, D}, 51)), memory = tape.constant(uniform(Shape{B, S, D}, 52));
  const Var<double> empty = tape.constant(Tensor<double>(Shape{0}));
  const Var<double> padding = tape.constant(m.src_padding), mask = tape.constant(m.memory_mask);
  auto with = [](const Vars& extras) { return CallContext<double>(extras.data(), extras.size()); };
  const Vars no_extras, padding_only{empty, padding};
  CHECK(values(enc.forward(tape, x, with(no_extras))) == values(enc.forward(tape, x)));
  CHECK(values(enc.forward(tape, x, with(padding_only))) ==
        values(enc.forward(tape, x, AttentionMasks<double>{Var<double>(), padding})));
  const Vars memory_only{memory}, memory_mask_only{memory, empty, mask};
  CHECK(values(dec.forward(tape, x, with(memory_only))) == values(dec.forward(tape, x, memory)));
  CHECK(values(dec.forward(tape, x, with(memory_mask_only))) ==
        values(dec.forward(tape, x, memory, {}, AttentionMasks<double>{mask, Var<double>()})));
  // The masks change the result.
  CHECK(values(enc.forward(tape, x, with(padding_only))) != values(enc.forward(tape, x)));
  CHECK(values(dec.forward(tape, x, with(memory_mask_only))) != values(dec.forward(tape, x, memory)));
}

// ---- dropout -------------------------------------------------------------------

TEST_CASE("Transformer layers' dropout replays with the same context and changes with step and layer",
          "[transformer][dropout]") {
  const Masks m;
  const Tensor<double> src = uniform(Shape{B, T, D}, 61), mem = uniform(Shape{B, S, D}, 62);
  const auto options = layer_options(false, TransformerActivation::gelu, 0.3);
  auto enc = make_layer<TransformerEncoderLayer<double>>(options, 7);
  auto dec = make_layer<TransformerDecoderLayer<double>>(options, 8);
  // The same weights without dropout.
  auto enc0 = make_layer<TransformerEncoderLayer<double>>(layer_options(false, TransformerActivation::gelu), 7);
  auto dec0 = make_layer<TransformerDecoderLayer<double>>(layer_options(false, TransformerActivation::gelu), 8);
  // `base` with the layer's extra inputs.
  auto run = [&](auto& layer, const CallContext<double>& base) {
    Tape<double> tape;
    const Var<double> x = tape.constant(src);
    Vars extras = decoder_extras(tape, tape.constant(mem), m);
    if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, TransformerEncoderLayer<double>>) {
      extras = {extras[1], extras[3]};  // src_mask, src_key_padding_mask
    }
    CallContext<double> context(extras.data(), extras.size());
    context.seed = base.seed;
    context.step = base.step;
    context.layer = base.layer;
    context.training = base.training;
    context.replay = base.replay;
    return values(layer.forward(tape, x, context));
  };
  CallContext<double> context;
  context.seed = 3;
  context.step = 5;
  context.layer = 2;
  CallContext<double> replay = context, next_step = context, next_layer = context, eval = context;
  replay.replay = true;
  next_step.step = 6;
  next_layer.layer = 1;
  eval.training = false;
  const std::vector<double> e = run(enc, context), d = run(dec, context);
  CHECK(run(enc, context) == e);
  CHECK(run(dec, context) == d);
  CHECK(run(enc, replay) == e);
  CHECK(run(dec, replay) == d);
  CHECK(run(enc, next_step) != e);
  CHECK(run(dec, next_step) != d);
  CHECK(run(enc, next_layer) != e);
  CHECK(run(dec, next_layer) != d);
  CHECK(run(enc, eval) == run(enc0, context));
  CHECK(run(dec, eval) == run(dec0, context));
  CHECK(run(enc, context) != run(enc0, context));
  CHECK(run(dec, context) != run(dec0, context));

  // On their own: a step of their own, advanced by each call; eval through momnet::eval.
  auto alone = [&](auto& layer) {
    Tape<double> tape;
    const Var<double> x = tape.constant(src);
    if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, TransformerEncoderLayer<double>>) {
      return values(layer.forward(tape, x));
    } else {
      return values(layer.forward(tape, x, tape.constant(mem)));
    }
  };
  const std::vector<double> first = alone(dec);
  CHECK(dec.step() == 1);
  CHECK(alone(dec) != first);
  dec.set_step(0);
  CHECK(alone(dec) == first);
  const std::vector<double> enc_first = alone(enc);
  CHECK(alone(enc) != enc_first);
  momnet::eval(enc);
  momnet::eval(dec);
  CHECK_FALSE(enc.training());
  CHECK_FALSE(enc.self_attn().training());
  CHECK_FALSE(dec.multihead_attn().training());
  CHECK(alone(enc) == alone(enc0));
  CHECK(alone(dec) == alone(dec0));
}

// ---- in stacks -----------------------------------------------------------------

TEST_CASE("TransformerEncoderLayer in Residual and MomentumResidual with masks as extra inputs",
          "[transformer][stack]") {
  const Masks m;
  const Tensor<double> src = uniform(Shape{B, T, D}, 71);
  std::vector<TransformerEncoderLayer<double>> blocks;
  for (std::uint64_t n = 0; n < 3; ++n) {
    blocks.push_back(make_layer<TransformerEncoderLayer<double>>(layer_options(n == 1, TransformerActivation::relu),
                                                                 20 + n));
  }

  SECTION("Residual: the layers applied in turn") {
    momnet::ResidualOptions options;
    options.residual_blocks = false;
    momnet::Residual<TransformerEncoderLayer<double>> stack(blocks, options);
    Tape<double> tape;
    const Var<double> x = tape.variable(src);
    const Vars extras{tape.constant(m.src_mask), tape.constant(m.src_padding)};
    const Var<double> out = stack(tape, x, extras);
    Var<double> expected = x;
    for (auto& layer : blocks) expected = layer.forward(tape, expected, AttentionMasks<double>{extras[0], extras[1]});
    CHECK((out.array() - expected.array()).abs().maxCoeff() < 1e-12);
    tape.backward(momnet::mean(momnet::square(out)));
    CHECK(x.grad().allFinite());
    CHECK(x.grad().cwiseAbs().maxCoeff() > 0.0);
    CHECK(names_of_parameters(momnet::named_parameters(stack))[12] == "1.self_attn.in_proj_weight");
  }

  SECTION("MomentumResidual: the exact backward's gradients equal stored backprop's, dropout included") {
    for (std::uint64_t n = 0; n < 3; ++n) {
      blocks[n] = make_layer<TransformerEncoderLayer<double>>(
          layer_options(n == 1, TransformerActivation::gelu, 0.2), 30 + n);
    }
    auto gradients = [&](momnet::BackwardMode mode) {
      momnet::MomentumOptions options;
      options.gamma = 0.9;
      options.mode = mode;
      options.residual_blocks = false;
      options.seed = 17;
      momnet::MomentumResidual<TransformerEncoderLayer<double>> stack(blocks, options);
      Tape<double> tape;
      const Var<double> x = tape.variable(src);
      const Vars extras{tape.constant(m.src_mask), tape.constant(m.src_padding)};
      tape.backward(momnet::mean(momnet::square(stack(tape, x, extras))));
      std::vector<double> all(x.grad().data(), x.grad().data() + x.size());
      for (Parameter<double>* p : momnet::parameters_of(stack)) {
        all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
      }
      return all;
    };
    const std::vector<double> exact = gradients(momnet::BackwardMode::exact);
    const std::vector<double> stored = gradients(momnet::BackwardMode::stored);
    REQUIRE(exact.size() == stored.size());
    double worst = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < exact.size(); ++i) {
      worst = std::max(worst, std::abs(exact[i] - stored[i]));
      scale = std::max(scale, std::abs(stored[i]));
    }
    CHECK(scale > 0.0);
    CHECK(worst <= 1e-12 * scale);
  }
}

TEST_CASE("TransformerDecoderLayer in MomentumResidual: memory (extra 0) gradients of the exact backward equal "
          "stored backprop's",
          "[transformer][stack]") {
  const Masks m;
  const Tensor<double> tgt = uniform(Shape{B, T, D}, 81), mem = uniform(Shape{B, S, D}, 82);
  std::vector<TransformerDecoderLayer<double>> blocks;
  for (std::uint64_t n = 0; n < 3; ++n) {
    blocks.push_back(make_layer<TransformerDecoderLayer<double>>(
        layer_options(n == 2, n == 0 ? TransformerActivation::relu : TransformerActivation::gelu, 0.1), 40 + n));
  }
  auto gradients = [&](momnet::BackwardMode mode) {
    momnet::MomentumOptions options;
    options.gamma = 0.9;
    options.mode = mode;
    options.residual_blocks = false;
    options.seed = 23;
    momnet::MomentumResidual<TransformerDecoderLayer<double>> stack(blocks, options);
    Tape<double> tape;
    const Var<double> x = tape.variable(tgt);
    const Var<double> memory = tape.variable(mem);
    const Vars extras = decoder_extras(tape, memory, m);
    tape.backward(momnet::mean(momnet::square(stack(tape, x, extras))));
    std::vector<double> all(memory.grad().data(), memory.grad().data() + memory.size());
    all.insert(all.end(), x.grad().data(), x.grad().data() + x.size());
    for (Parameter<double>* p : momnet::parameters_of(stack)) {
      all.insert(all.end(), p->grad_data(), p->grad_data() + p->size());
    }
    return all;
  };
  const std::vector<double> exact = gradients(momnet::BackwardMode::exact);
  const std::vector<double> stored = gradients(momnet::BackwardMode::stored);
  REQUIRE(exact.size() == stored.size());
  double worst = 0.0, memory_scale = 0.0;
  for (std::size_t i = 0; i < exact.size(); ++i) worst = std::max(worst, std::abs(exact[i] - stored[i]));
  for (Index i = 0; i < B * S * D; ++i) {
    memory_scale = std::max(memory_scale, std::abs(stored[static_cast<std::size_t>(i)]));
  }
  CHECK(memory_scale > 1e-3);
  CHECK(worst <= 1e-12);
}

// ---- float ---------------------------------------------------------------------

TEST_CASE("Transformer layers in float agree with double", "[transformer][float]") {
  const Masks m;
  auto to_float = [](const Tensor<double>& t) {
    Tensor<float> f(t.shape());
    for (Index i = 0; i < t.size(); ++i) f.data()[i] = static_cast<float>(t.data()[i]);
    return f;
  };
  const Tensor<double> src = uniform(Shape{B, T, D}, 91), mem = uniform(Shape{B, S, D}, 92);
  momnet::Rng rd(5), rf(5);
  const auto options = layer_options(true, TransformerActivation::gelu);
  TransformerDecoderLayer<double> dd(D, H, rd, options);
  TransformerDecoderLayer<float> df(D, H, rf, options);
  randomize(dd, 6);
  randomize(df, 6);
  TransformerEncoderLayer<double> ed(D, H, rd, layer_options(false, TransformerActivation::relu));
  TransformerEncoderLayer<float> ef(D, H, rf, layer_options(false, TransformerActivation::relu));
  // (Random norm weights too: sum(square(.)) of a plain layer norm's output is nearly constant.)
  randomize(ed, 7);
  randomize(ef, 7);

  Tape<double> td;
  const Var<double> md = td.variable(mem);
  const Var<double> yd = ed.forward(td, dd.forward(td, td.constant(src), md, {td.constant(m.src_mask), Var<double>()},
                                                   {Var<double>(), td.constant(m.memory_padding)}));
  td.backward(momnet::sum(momnet::square(yd)));
  Tape<float> tf;
  const Var<float> mf = tf.variable(to_float(mem));
  const Var<float> yf = ef.forward(tf, df.forward(tf, tf.constant(to_float(src)), mf,
                                                  {tf.constant(to_float(m.src_mask)), Var<float>()},
                                                  {Var<float>(), tf.constant(to_float(m.memory_padding))}));
  tf.backward(momnet::sum(momnet::square(yf)));
  CHECK((yd.array() - yf.array().cast<double>()).abs().maxCoeff() < 1e-5 * yd.array().abs().maxCoeff());
  CHECK((md.grad() - mf.grad().cast<double>()).cwiseAbs().maxCoeff() < 1e-4 * md.grad().cwiseAbs().maxCoeff());
}

// ---- errors --------------------------------------------------------------------

TEST_CASE("Transformer layers refuse bad arguments with the exact exception", "[transformer][errors]") {
  using A = std::invalid_argument;
  constexpr Index D = 8;
  momnet::Rng rng(1);
  auto options = [](auto change) {
    TransformerLayerOptions o;
    o.dim_feedforward = FF;
    change(o);
    return o;
  };
  const std::string enc = "momnet::TransformerEncoderLayer: ", dec = "momnet::TransformerDecoderLayer: ";
  REQUIRE_THROWS_EXACT(TransformerEncoderLayer<double>(0, 2, rng), A, enc + "d_model must be positive, got 0");
  REQUIRE_THROWS_EXACT(TransformerDecoderLayer<double>(8, 0, rng), A, dec + "nhead must be positive, got 0");
  REQUIRE_THROWS_EXACT(TransformerEncoderLayer<double>(8, 3, rng), A, enc + "d_model 8 is not divisible by nhead 3");
  REQUIRE_THROWS_EXACT(TransformerDecoderLayer<double>(8, 2, rng, options([](auto& o) { o.dim_feedforward = 0; })),
                       A, dec + "dim_feedforward must be positive, got 0");
  REQUIRE_THROWS_EXACT(TransformerEncoderLayer<double>(8, 2, rng, options([](auto& o) { o.dropout = 1.0; })), A,
                       enc + "dropout must lie in [0, 1), got 1");
  REQUIRE_THROWS_EXACT(TransformerDecoderLayer<double>(8, 2, rng, options([](auto& o) { o.dropout = -0.5; })), A,
                       dec + "dropout must lie in [0, 1), got -0.5");
  REQUIRE_THROWS_EXACT(TransformerEncoderLayer<double>(8, 2, rng, options([](auto& o) { o.layer_norm_eps = -1; })), A,
                       enc + "layer_norm_eps must be finite and >= 0, got -1");
  REQUIRE_THROWS_EXACT(TransformerEncoderLayer<double>(
                           8, 2, rng, options([](auto& o) { o.activation = static_cast<TransformerActivation>(7); })),
                       A, enc + "unknown activation 7");

  TransformerEncoderLayer<double> encoder(D, H, rng, options([](auto&) {}));
  TransformerDecoderLayer<double> decoder(D, H, rng, options([](auto&) {}));
  Tape<double> tape;
  const Var<double> x = tape.constant(uniform(Shape{B, T, D}, 1));
  const Var<double> memory = tape.constant(uniform(Shape{B, S, D}, 2));
  const Var<double> flat = tape.constant(uniform(Shape{B * T, D}, 3));
  REQUIRE_THROWS_EXACT(encoder.forward(tape, flat), A,
                       "momnet::TransformerEncoderLayer::forward: src must be [batch, sequence, 8], got [6, 8]");
  REQUIRE_THROWS_EXACT(decoder.forward(tape, flat, memory), A,
                       "momnet::TransformerDecoderLayer::forward: tgt must be [batch, target length, 8], got [6, 8]");
  REQUIRE_THROWS_EXACT(decoder.forward(tape, x, tape.constant(uniform(Shape{3, S, D}, 4))), A,
                       "momnet::TransformerDecoderLayer::forward: memory must be [batch 2, source length, 8] for tgt "
                       "[2, 3, 8], got [3, 4, 8]");
  REQUIRE_THROWS_EXACT(decoder.forward(tape, x, tape.constant(uniform(Shape{B, S, 4}, 4))), A,
                       "momnet::TransformerDecoderLayer::forward: memory must be [batch 2, source length, 8] for tgt "
                       "[2, 3, 8], got [2, 4, 4]");
  REQUIRE_THROWS_EXACT(encoder.forward(tape, Var<double>()), A,
                       "momnet::TransformerEncoderLayer::forward: empty Var (default-constructed)");
  // A mask of the wrong shape: MultiheadAttention names it.
  const AttentionMasks<double> wrong{tape.constant(uniform(Shape{T, S}, 5)), Var<double>()};
  REQUIRE_THROWS_EXACT(encoder.forward(tape, x, wrong), A,
                       "momnet::MultiheadAttention::forward: attn_mask must be [T, S] = [3, 3]");

  const Vars none, three{x, x, x}, six{memory, x, x, x, x, x}, empty_memory{Var<double>()};
  REQUIRE_THROWS_EXACT(decoder.forward(tape, x, CallContext<double>(none.data(), 0)), A,
                       "momnet::TransformerDecoderLayer: needs the encoder's output (memory) as extra input 0, got no "
                       "extra input");
  REQUIRE_THROWS_EXACT(decoder.forward(tape, x, CallContext<double>(empty_memory.data(), 1)), A,
                       "momnet::TransformerDecoderLayer: needs the encoder's output (memory) as extra input 0, got an "
                       "empty Var");
  REQUIRE_THROWS_EXACT(decoder.forward(tape, x, CallContext<double>(six.data(), 6)), A,
                       "momnet::TransformerDecoderLayer: takes at most 5 extra inputs (memory, tgt_mask, memory_mask, "
                       "tgt_key_padding_mask, memory_key_padding_mask), got 6");
  REQUIRE_THROWS_EXACT(encoder.forward(tape, x, CallContext<double>(three.data(), 3)), A,
                       "momnet::TransformerEncoderLayer: takes at most 2 extra inputs (src_mask, "
                       "src_key_padding_mask), got 3");
}
