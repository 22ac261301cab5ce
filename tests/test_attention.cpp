// Attention masks and MultiheadAttention: values against attention computed
// by explicit loops, gradients against finite differences (w.r.t. query, key,
// value and every parameter, with each mask kind, kdim/vdim != embed_dim,
// bias = false), what masks mean (causality, padded keys), the attention
// weights, replayable dropout, PyTorch's names and initialisation, float
// runs, and the exact exception for each bad argument.
#include <catch2/catch.hpp>

#include <momnet/layers/attention_mask.hpp>
#include <momnet/layers/multihead_attention.hpp>
#include <momnet/momnet.hpp>

#include "support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace {

using momnet::AttentionMasks;
using momnet::CallContext;
using momnet::MultiheadAttention;
using momnet::MultiheadAttentionOptions;
using momnet::Parameter;
using momnet::Shape;
using momnet::Tape;
using momnet::Tensor;
using momnet::Var;
using momnet_test::uniform;
using Index = Eigen::Index;
using Vars = std::vector<Var<double>>;

// Small sizes keep the finite-difference checks fast (also under the sanitizers).
constexpr Index B = 2, T = 3, S = 4, E = 4, H = 2;
const double inf = std::numeric_limits<double>::infinity();

// Random values in every parameter (the biases start at zero).
template <class Module>
void randomize(Module& module, std::uint64_t seed) {
  momnet::Rng rng(seed);
  for (Parameter<double>* p : momnet::parameters_of(module)) {
    for (Index i = 0; i < p->size(); ++i) p->value_data()[i] = rng.uniform(-0.5, 0.5);
  }
}

MultiheadAttention<double> make_attention(MultiheadAttentionOptions options = {}, std::uint64_t seed = 1,
                                          Index heads = H) {
  momnet::Rng rng(seed);
  MultiheadAttention<double> mha(E, heads, rng, options);
  randomize(mha, seed + 100);
  return mha;
}

// [T, S]: random finite values, -inf where s > t + 1 (no row all -inf).
Tensor<double> sparse_attn_mask() {
  Tensor<double> m = uniform(Shape{T, S}, 21, -1.0, 1.0);
  for (Index t = 0; t < T; ++t) {
    for (Index s = t + 2; s < S; ++s) m.data()[t * S + s] = -inf;
  }
  return m;
}

// [B * heads, T, S]: random finite values, a different -inf pattern per batch and head.
Tensor<double> per_head_attn_mask(Index heads = H) {
  Tensor<double> m = uniform(Shape{B * heads, T, S}, 22, -1.0, 1.0);
  for (Index n = 0; n < B * heads; ++n) {
    for (Index t = 0; t < T; ++t) m.data()[(n * T + t) * S + (n + t) % S] = -inf;
  }
  return m;
}

// [B, S]: batch 1 padded after 2 keys, plus finite values.
Tensor<double> padding_mask() {
  Tensor<double> m = momnet::key_padding_mask<double>({S, 2}, S);
  const Tensor<double> noise = uniform(Shape{B, S}, 23, -0.5, 0.5);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] += noise.data()[i];
  return m;
}

// ---- attention by explicit loops (the reference) ---------------------------

double at(const Tensor<double>& x, Index i, Index j, Index k) {
  return x.data()[(i * x.shape().dim(1) + j) * x.shape().dim(2) + k];
}

struct Reference {
  std::vector<double> out;      // [B, T, E]
  std::vector<double> weights;  // [B, H, T, S]
};

// nn.MultiheadAttention's definition, loop by loop, from the module's parameters.
Reference reference_attention(MultiheadAttention<double>& mha, const Tensor<double>& query, const Tensor<double>& key,
                              const Tensor<double>& value, const Tensor<double>* attn_mask,
                              const Tensor<double>* padding) {
  const Index e = mha.embed_dim(), h = mha.num_heads(), d = e / h;
  const Index batch = query.shape().dim(0), target = query.shape().dim(1), source = key.shape().dim(1);
  // Row r of the q, k or v projection weight and its bias.
  auto weight = [&](int which, Index r, Index c) {
    if (mha.packed()) return mha.in_proj_weight().value_data()[(which * e + r) * e + c];
    Parameter<double>& w = which == 0 ? mha.q_proj_weight() : which == 1 ? mha.k_proj_weight() : mha.v_proj_weight();
    return w.value_data()[r * w.shape().dim(1) + c];
  };
  auto bias = [&](int which, Index r) { return mha.has_bias() ? mha.in_proj_bias().value_data()[which * e + r] : 0.0; };
  auto project = [&](int which, const Tensor<double>& x, Index b, Index l, Index r) {
    double acc = bias(which, r);
    for (Index c = 0; c < x.shape().dim(2); ++c) acc += weight(which, r, c) * at(x, b, l, c);
    return acc;
  };
  Reference ref;
  ref.weights.assign(static_cast<std::size_t>(batch * h * target * source), 0.0);
  std::vector<double> heads(static_cast<std::size_t>(batch * target * e), 0.0);
  for (Index b = 0; b < batch; ++b) {
    for (Index hh = 0; hh < h; ++hh) {
      for (Index t = 0; t < target; ++t) {
        std::vector<double> score(static_cast<std::size_t>(source));
        for (Index s = 0; s < source; ++s) {
          double dot = 0.0;
          for (Index j = 0; j < d; ++j) dot += project(0, query, b, t, hh * d + j) * project(1, key, b, s, hh * d + j);
          double mask = 0.0;
          if (attn_mask != nullptr) {
            mask += attn_mask->shape().rank() == 2 ? attn_mask->data()[t * source + s]
                                                   : at(*attn_mask, b * h + hh, t, s);
          }
          if (padding != nullptr) mask += padding->data()[b * source + s];
          score[static_cast<std::size_t>(s)] = dot / std::sqrt(static_cast<double>(d)) + mask;
        }
        double top = -inf;
        for (double v : score) top = std::max(top, v);
        double total = 0.0;
        for (double& v : score) total += (v = std::exp(v - top));
        for (Index s = 0; s < source; ++s) {
          const double w = score[static_cast<std::size_t>(s)] / total;
          ref.weights[static_cast<std::size_t>(((b * h + hh) * target + t) * source + s)] = w;
          for (Index j = 0; j < d; ++j) {
            heads[static_cast<std::size_t>((b * target + t) * e + hh * d + j)] +=
                w * project(2, value, b, s, hh * d + j);
          }
        }
      }
    }
  }
  Parameter<double>& wo = mha.out_proj().weight();
  ref.out.assign(heads.size(), 0.0);
  for (Index row = 0; row < batch * target; ++row) {
    for (Index r = 0; r < e; ++r) {
      double acc = mha.has_bias() ? mha.out_proj().bias().value_data()[r] : 0.0;
      for (Index c = 0; c < e; ++c) acc += wo.value_data()[r * e + c] * heads[static_cast<std::size_t>(row * e + c)];
      ref.out[static_cast<std::size_t>(row * e + r)] = acc;
    }
  }
  return ref;
}

double max_difference(const Var<double>& a, const std::vector<double>& b) {
  REQUIRE(static_cast<std::size_t>(a.size()) == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b[i]));
  return worst;
}

std::vector<double> values(const Var<double>& v) { return std::vector<double>(v.data(), v.data() + v.size()); }

AttentionMasks<double> masks_on(Tape<double>& tape, const Tensor<double>* attn_mask, const Tensor<double>* padding) {
  AttentionMasks<double> masks;
  if (attn_mask != nullptr) masks.attn_mask = tape.constant(*attn_mask);
  if (padding != nullptr) masks.key_padding_mask = tape.constant(*padding);
  return masks;
}

void check_attention_gradients(MultiheadAttention<double>& mha, const Tensor<double>* attn_mask,
                               const Tensor<double>* padding) {
  const Tensor<double> query = uniform(Shape{B, T, E}, 31);
  const Tensor<double> key = uniform(Shape{B, S, mha.kdim()}, 32);
  const Tensor<double> value = uniform(Shape{B, S, mha.vdim()}, 33);
  const momnet::GradientCheckResult result = momnet::check_gradients(
      [&](Tape<double>& tape, const Vars& v) {
        return mha.forward(tape, v[0], v[1], v[2], masks_on(tape, attn_mask, padding), CallContext<double>());
      },
      {query, key, value}, momnet::parameters_of(mha));
  INFO(result.worst << " (error " << result.max_error << ")");
  CHECK(result.passed);
}

}  // namespace

// ---- masks ---------------------------------------------------------------------

TEST_CASE("causal_mask, key_padding_mask and additive_mask build PyTorch's float masks", "[attention][mask]") {
  const Tensor<double> causal = momnet::causal_mask<double>(3);
  REQUIRE(causal.shape() == Shape{3, 3});
  for (Index t = 0; t < 3; ++t) {
    for (Index s = 0; s < 3; ++s) CHECK(causal.data()[t * 3 + s] == (s > t ? -inf : 0.0));
  }
  CHECK(momnet::causal_mask<float>(0).shape() == Shape{0, 0});

  const Tensor<float> padding = momnet::key_padding_mask<float>({3, 0, 1}, 3);
  REQUIRE(padding.shape() == Shape{3, 3});
  const std::vector<Index> lengths{3, 0, 1};
  for (Index b = 0; b < 3; ++b) {
    for (Index s = 0; s < 3; ++s) {
      CHECK(padding.data()[b * 3 + s] == (s >= lengths[static_cast<std::size_t>(b)]
                                              ? -std::numeric_limits<float>::infinity() : 0.0f));
    }
  }

  Tensor<std::int64_t> forbidden(Shape{2, 3});
  forbidden.data()[1] = 1;
  forbidden.data()[5] = -7;
  const Tensor<double> additive = momnet::additive_mask<double>(forbidden);
  REQUIRE(additive.shape() == Shape{2, 3});
  const std::vector<double> expected{0, -inf, 0, 0, 0, -inf};
  for (Index i = 0; i < 6; ++i) CHECK(additive.data()[i] == expected[static_cast<std::size_t>(i)]);

  REQUIRE_THROWS_EXACT(momnet::causal_mask<double>(-1), std::invalid_argument,
                       "momnet::causal_mask: size must be non-negative, got -1");
  REQUIRE_THROWS_EXACT(momnet::key_padding_mask<double>({2}, -1), std::invalid_argument,
                       "momnet::key_padding_mask: max_len must be non-negative, got -1");
  REQUIRE_THROWS_EXACT(momnet::key_padding_mask<double>({2, 5}, 4), std::invalid_argument,
                       "momnet::key_padding_mask: length 5 of sequence 1 is outside [0, 4]");
  REQUIRE_THROWS_EXACT(momnet::key_padding_mask<double>({-1}, 4), std::invalid_argument,
                       "momnet::key_padding_mask: length -1 of sequence 0 is outside [0, 4]");
}

// ---- parameters ----------------------------------------------------------------

TEST_CASE("MultiheadAttention has PyTorch's parameter names, shapes and initialisation", "[attention][names]") {
  auto names_of = [](MultiheadAttention<double>& mha) {
    std::vector<std::string> names;
    for (const auto& entry : momnet::named_parameters(mha)) {
      names.push_back(entry.first + " " + entry.second->shape().to_string());
    }
    return names;
  };
  constexpr Index E = 8;
  momnet::Rng rng(5);
  MultiheadAttention<double> packed(E, H, rng);
  CHECK(names_of(packed) == std::vector<std::string>{"in_proj_weight [24, 8]", "in_proj_bias [24]",
                                                     "out_proj.weight [8, 8]", "out_proj.bias [8]"});
  MultiheadAttention<double> separate(E, H, rng, MultiheadAttentionOptions{0.0, true, 5, 6});
  CHECK(names_of(separate) == std::vector<std::string>{"q_proj_weight [8, 8]", "k_proj_weight [8, 5]",
                                                       "v_proj_weight [8, 6]", "in_proj_bias [24]",
                                                       "out_proj.weight [8, 8]", "out_proj.bias [8]"});
  MultiheadAttention<double> no_bias(E, H, rng, MultiheadAttentionOptions{0.0, false});
  CHECK(names_of(no_bias) == std::vector<std::string>{"in_proj_weight [24, 8]", "out_proj.weight [8, 8]"});
  MultiheadAttention<double> separate_no_bias(E, H, rng, MultiheadAttentionOptions{0.0, false, 5, 6});
  CHECK(names_of(separate_no_bias) == std::vector<std::string>{"q_proj_weight [8, 8]", "k_proj_weight [8, 5]",
                                                               "v_proj_weight [8, 6]", "out_proj.weight [8, 8]"});
  // kdim = vdim = embed_dim given explicitly is the packed layout, as in PyTorch.
  CHECK(MultiheadAttention<double>(E, H, rng, MultiheadAttentionOptions{0.0, true, E, E}).packed());

  // Xavier-uniform bounds sqrt(6 / (fan_in + fan_out)), zero biases,
  // out_proj.weight within nn.Linear's 1/sqrt(E).
  auto within = [](Parameter<double>& p, double bound) {
    const double largest = p.array().abs().maxCoeff();
    return largest <= bound && largest > 0.7 * bound;
  };
  MultiheadAttention<double> big(64, 4, rng, MultiheadAttentionOptions{0.0, true, 32, 48});
  CHECK(within(big.q_proj_weight(), std::sqrt(6.0 / 128)));
  CHECK(within(big.k_proj_weight(), std::sqrt(6.0 / 96)));
  CHECK(within(big.v_proj_weight(), std::sqrt(6.0 / 112)));
  CHECK(within(big.out_proj().weight(), 1.0 / 8));
  CHECK(big.in_proj_bias().array().abs().maxCoeff() == 0.0);
  CHECK(big.out_proj().bias().array().abs().maxCoeff() == 0.0);
  MultiheadAttention<double> big_packed(64, 4, rng);
  CHECK(within(big_packed.in_proj_weight(), std::sqrt(6.0 / 256)));
  CHECK(big_packed.head_dim() == 16);

  REQUIRE_THROWS_EXACT(packed.q_proj_weight(), std::logic_error, "momnet::MultiheadAttention::q_proj_weight",
                       "in_proj_weight (kdim = vdim = embed_dim)");
  REQUIRE_THROWS_EXACT(separate.in_proj_weight(), std::logic_error, "momnet::MultiheadAttention::in_proj_weight",
                       "q_proj_weight, k_proj_weight and v_proj_weight");
  REQUIRE_THROWS_EXACT(no_bias.in_proj_bias(), std::logic_error,
                       "momnet::MultiheadAttention::in_proj_bias: built with bias = false");
}

// ---- values ----------------------------------------------------------------------

TEST_CASE("MultiheadAttention equals attention computed by explicit loops", "[attention][values]") {
  const Tensor<double> attn_2d = sparse_attn_mask();
  const Tensor<double> attn_3d = per_head_attn_mask();
  const Tensor<double> attn_3d_4 = per_head_attn_mask(4);
  const Tensor<double> padding = padding_mask();
  struct Case {
    const char* what;
    MultiheadAttentionOptions options;
    Index heads;
    const Tensor<double>* attn_mask;
    const Tensor<double>* padding;
  };
  const std::vector<Case> cases{
      {"packed, no mask", {}, H, nullptr, nullptr},
      {"packed, [T, S] mask and key padding", {}, H, &attn_2d, &padding},
      {"kdim 5, vdim 6, [B*H, T, S] mask", {0.0, true, 5, 6}, H, &attn_3d, nullptr},
      {"4 heads, [B*H, T, S] mask and key padding", {}, 4, &attn_3d_4, &padding},
      {"no bias, key padding only", {0.0, false}, H, nullptr, &padding},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    MultiheadAttention<double> mha = make_attention(c.options, 1, c.heads);
    const Tensor<double> query = uniform(Shape{B, T, E}, 41);
    const Tensor<double> key = uniform(Shape{B, S, mha.kdim()}, 42);
    const Tensor<double> value = uniform(Shape{B, S, mha.vdim()}, 43);
    const Reference ref = reference_attention(mha, query, key, value, c.attn_mask, c.padding);
    Tape<double> tape;
    const auto [out, weights] =
        mha.forward_with_weights(tape, tape.constant(query), tape.constant(key), tape.constant(value),
                                 masks_on(tape, c.attn_mask, c.padding), CallContext<double>(), 0, false);
    REQUIRE(out.shape() == Shape{B, T, E});
    REQUIRE(weights.shape() == Shape{B, c.heads, T, S});
    CHECK(max_difference(out, ref.out) < 1e-14);
    CHECK(max_difference(weights, ref.weights) < 1e-15);
  }
}

TEST_CASE("MultiheadAttention's attention weights sum to 1 over the keys; averaging takes the mean over heads",
          "[attention][weights]") {
  MultiheadAttention<double> mha = make_attention();
  const Tensor<double> attn = sparse_attn_mask();
  const Tensor<double> padding = padding_mask();
  Tape<double> tape;
  const Var<double> q = tape.constant(uniform(Shape{B, T, E}, 51));
  const Var<double> kv = tape.constant(uniform(Shape{B, S, E}, 52));
  const AttentionMasks<double> masks = masks_on(tape, &attn, &padding);
  const auto per_head = mha.forward_with_weights(tape, q, kv, kv, masks, CallContext<double>(), 0, false);
  const auto averaged = mha.forward_with_weights(tape, q, kv, kv, masks, CallContext<double>());
  REQUIRE(averaged.second.shape() == Shape{B, T, S});
  CHECK(values(per_head.first) == values(averaged.first));
  // The plain forward returns the same output.
  CHECK(values(mha.forward(tape, q, kv, kv, masks, CallContext<double>())) == values(averaged.first));
  const double* w = per_head.second.data();
  const double* a = averaged.second.data();
  for (Index b = 0; b < B; ++b) {
    for (Index t = 0; t < T; ++t) {
      double total = 0.0;
      for (Index s = 0; s < S; ++s) {
        double mean = 0.0;
        for (Index h = 0; h < H; ++h) {
          const double x = w[((b * H + h) * T + t) * S + s];
          mean += x / H;
          // Forbidden keys get exactly no weight, as in PyTorch.
          if (attn.data()[t * S + s] == -inf || padding.data()[b * S + s] == -inf) CHECK(x == 0.0);
        }
        CHECK(a[(b * T + t) * S + s] == Approx(mean).margin(1e-16));
        total += a[(b * T + t) * S + s];
      }
      CHECK(total == Approx(1.0).margin(1e-15));
    }
  }
}

TEST_CASE("MultiheadAttention with a causal mask: position t does not depend on inputs after t",
          "[attention][causal]") {
  MultiheadAttention<double> mha = make_attention();
  const Index L = 4;
  const Tensor<double> causal = momnet::causal_mask<double>(L);
  const Tensor<double> x = uniform(Shape{B, L, E}, 61);
  auto run = [&](const Tensor<double>& input) {
    Tape<double> tape;
    const Var<double> v = tape.constant(input);
    return values(mha.forward(tape, v, v, v, masks_on(tape, &causal, nullptr), CallContext<double>()));
  };
  const std::vector<double> base = run(x);
  for (Index later = 1; later < L; ++later) {
    Tensor<double> changed = x;
    for (Index b = 0; b < B; ++b) {
      for (Index e = 0; e < E; ++e) changed.data()[(b * L + later) * E + e] += 0.75;
    }
    const std::vector<double> out = run(changed);
    for (Index b = 0; b < B; ++b) {
      for (Index t = 0; t < L; ++t) {
        bool same = true;
        for (Index e = 0; e < E; ++e) {
          const auto i = static_cast<std::size_t>((b * L + t) * E + e);
          same = same && out[i] == base[i];
        }
        INFO("changed position " << later << ", batch " << b << ", position " << t);
        CHECK(same == (t < later));
      }
    }
  }
}

TEST_CASE("MultiheadAttention with a key padding mask ignores the padded keys and values",
          "[attention][padding]") {
  MultiheadAttention<double> mha = make_attention();
  const Tensor<double> padding = momnet::key_padding_mask<double>({S, 2}, S);
  const Tensor<double> query = uniform(Shape{B, T, E}, 71);
  const Tensor<double> key = uniform(Shape{B, S, E}, 72);
  const Tensor<double> value = uniform(Shape{B, S, E}, 73);
  Tape<double> tape;
  const Var<double> q = tape.constant(query);
  const Var<double> k = tape.variable(key);
  const Var<double> v = tape.variable(value);
  const Var<double> out = mha.forward(tape, q, k, v, masks_on(tape, nullptr, &padding), CallContext<double>());
  tape.backward(momnet::sum(momnet::square(out)));

  // Padded keys and values of batch 1 changed: the same output, bit for bit.
  Tensor<double> key2 = key, value2 = value;
  for (Index s = 2; s < S; ++s) {
    for (Index e = 0; e < E; ++e) {
      key2.data()[(S + s) * E + e] += 3.0;
      value2.data()[(S + s) * E + e] -= 2.0;
      // ... and no gradient reaches them.
      CHECK(k.grad().data()[(S + s) * E + e] == 0.0);
      CHECK(v.grad().data()[(S + s) * E + e] == 0.0);
    }
  }
  Tape<double> tape2;
  const Var<double> out2 = mha.forward(tape2, tape2.constant(query), tape2.constant(key2), tape2.constant(value2),
                                       masks_on(tape2, nullptr, &padding), CallContext<double>());
  CHECK(values(out2) == values(out));

  // Batch 1 alone with its two real keys gives the same rows.
  Tensor<double> q1(Shape{1, T, E}), k1(Shape{1, 2, E}), v1(Shape{1, 2, E});
  for (Index i = 0; i < T * E; ++i) q1.data()[i] = query.data()[T * E + i];
  for (Index i = 0; i < 2 * E; ++i) {
    k1.data()[i] = key.data()[S * E + i];
    v1.data()[i] = value.data()[S * E + i];
  }
  Tape<double> tape3;
  const Var<double> out3 = mha.forward(tape3, tape3.constant(q1), tape3.constant(k1), tape3.constant(v1),
                                       AttentionMasks<double>{}, CallContext<double>());
  double worst = 0.0;
  for (Index i = 0; i < T * E; ++i) worst = std::max(worst, std::abs(out3.data()[i] - out.data()[T * E + i]));
  CHECK(worst < 1e-15);
}

// ---- gradients ---------------------------------------------------------------------

TEST_CASE("MultiheadAttention passes the gradient check w.r.t. query, key, value and every parameter",
          "[attention][gradient]") {
  const Tensor<double> attn_2d = sparse_attn_mask();
  const Tensor<double> attn_3d = per_head_attn_mask();
  const Tensor<double> padding = padding_mask();
  SECTION("packed, no mask") {
    MultiheadAttention<double> mha = make_attention();
    check_attention_gradients(mha, nullptr, nullptr);
  }
  SECTION("[T, S] attn_mask") {
    MultiheadAttention<double> mha = make_attention();
    check_attention_gradients(mha, &attn_2d, nullptr);
  }
  SECTION("[B * H, T, S] attn_mask") {
    MultiheadAttention<double> mha = make_attention();
    check_attention_gradients(mha, &attn_3d, nullptr);
  }
  SECTION("key_padding_mask") {
    MultiheadAttention<double> mha = make_attention();
    check_attention_gradients(mha, nullptr, &padding);
  }
  SECTION("both masks") {
    MultiheadAttention<double> mha = make_attention();
    check_attention_gradients(mha, &attn_3d, &padding);
  }
  SECTION("kdim 5, vdim 6 with both masks") {
    MultiheadAttention<double> mha = make_attention(MultiheadAttentionOptions{0.0, true, 5, 6});
    check_attention_gradients(mha, &attn_2d, &padding);
  }
  SECTION("bias = false") {
    MultiheadAttention<double> mha = make_attention(MultiheadAttentionOptions{0.0, false});
    check_attention_gradients(mha, &attn_2d, nullptr);
  }
  SECTION("bias = false, kdim 5 = vdim 5") {
    MultiheadAttention<double> mha = make_attention(MultiheadAttentionOptions{0.0, false, 5, 5});
    check_attention_gradients(mha, nullptr, &padding);
  }
  SECTION("self-attention: query, key and value the same Var; four heads") {
    momnet::Rng rng(3);
    MultiheadAttention<double> mha(E, 4, rng);
    randomize(mha, 33);
    const Tensor<double> causal = momnet::causal_mask<double>(T);
    const momnet::GradientCheckResult result = momnet::check_gradients(
        [&](Tape<double>& tape, const Vars& v) {
          return mha.forward(tape, v[0], v[0], v[0], masks_on(tape, &causal, nullptr), CallContext<double>());
        },
        {uniform(Shape{B, T, E}, 34)}, momnet::parameters_of(mha));
    INFO(result.worst << " (error " << result.max_error << ")");
    CHECK(result.passed);
  }
  SECTION("the averaged attention weights") {
    MultiheadAttention<double> mha = make_attention();
    // Weights have small gradients: a larger step keeps rounding noise (1e-16 |loss| / step)
    // well below them; a wrong rule errs by far more than the tolerance.
    momnet::GradientCheckOptions options;
    options.step = 1e-5;
    const momnet::GradientCheckResult result = momnet::check_gradients(
        [&](Tape<double>& tape, const Vars& v) {
          return mha.forward_with_weights(tape, v[0], v[1], v[1], masks_on(tape, &attn_2d, &padding),
                                          CallContext<double>()).second;
        },
        {uniform(Shape{B, T, E}, 35), uniform(Shape{B, S, E}, 36)}, momnet::parameters_of(mha), options);
    INFO(result.worst << " (error " << result.max_error << ")");
    CHECK(result.passed);
  }
}

// ---- dropout -------------------------------------------------------------------------

TEST_CASE("MultiheadAttention's dropout replays with the same context and changes with step, layer and stream",
          "[attention][dropout]") {
  momnet::Rng rng(9), rng_same(9);
  MultiheadAttention<double> mha(E, H, rng, MultiheadAttentionOptions{0.5});
  MultiheadAttention<double> plain(E, H, rng_same);  // the same weights, no dropout
  const Tensor<double> query = uniform(Shape{B, T, E}, 81);
  const Tensor<double> kv = uniform(Shape{B, S, E}, 82);
  auto run = [&](MultiheadAttention<double>& m, const CallContext<double>& context, std::uint64_t stream) {
    Tape<double> tape;
    const Var<double> k = tape.constant(kv);
    const auto r = m.forward_with_weights(tape, tape.constant(query), k, k, AttentionMasks<double>{}, context, stream,
                                          false);
    return std::make_pair(values(r.first), values(r.second));
  };
  CallContext<double> context;
  context.seed = 7;
  context.step = 3;
  context.layer = 1;
  const auto first = run(mha, context, 0);
  CHECK(run(mha, context, 0) == first);  // a replay draws the same mask
  CallContext<double> replay = context;
  replay.replay = true;
  CHECK(run(mha, replay, 0) == first);
  CallContext<double> next_step = context, next_layer = context;
  next_step.step = 4;
  next_layer.layer = 2;
  CHECK(run(mha, next_step, 0).first != first.first);
  CHECK(run(mha, next_layer, 0).first != first.first);
  CHECK(run(mha, context, 1).first != first.first);

  // Eval mode: no dropout, whatever the step.
  CallContext<double> eval = context;
  eval.training = false;
  const auto reference = run(plain, context, 0);
  CHECK(run(mha, eval, 0) == reference);
  eval.step = 11;
  CHECK(run(mha, eval, 0) == reference);

  // In training each attention weight is dropped (0) or scaled by 1 / (1 - p) = 2.
  std::size_t dropped = 0;
  for (std::size_t i = 0; i < first.second.size(); ++i) {
    const double w = first.second[i], w0 = reference.second[i];
    if (w == 0.0) {
      ++dropped;
    } else {
      CHECK(w == 2.0 * w0);
    }
  }
  CHECK(dropped > first.second.size() / 4);
  CHECK(dropped < 3 * first.second.size() / 4);
}

TEST_CASE("MultiheadAttention on its own: its train/eval flag and a step that each call advances",
          "[attention][dropout]") {
  momnet::Rng rng(10), rng_same(10);
  MultiheadAttention<double> mha(E, H, rng, MultiheadAttentionOptions{0.5});
  MultiheadAttention<double> plain(E, H, rng_same);
  const Tensor<double> x = uniform(Shape{B, T, E}, 91);
  auto run = [&](MultiheadAttention<double>& m) {
    Tape<double> tape;
    const Var<double> v = tape.constant(x);
    return values(m.forward(tape, v, v, v));
  };
  CHECK(mha.training());
  CHECK(mha.step() == 0);
  const std::vector<double> first = run(mha);
  CHECK(mha.step() == 1);
  CHECK(run(mha) != first);
  mha.set_step(0);
  CHECK(run(mha) == first);
  momnet::eval(mha);
  CHECK_FALSE(mha.training());
  CHECK(run(mha) == run(plain));
  CHECK(run(mha) == run(mha));
}

// ---- float -----------------------------------------------------------------------

TEST_CASE("MultiheadAttention in float agrees with double", "[attention][float]") {
  momnet::Rng rng_d(12), rng_f(12);
  MultiheadAttention<double> md(E, H, rng_d, MultiheadAttentionOptions{0.0, true, 5, 6});
  MultiheadAttention<float> mf(E, H, rng_f, MultiheadAttentionOptions{0.0, true, 5, 6});
  const Tensor<double> qd = uniform(Shape{B, T, E}, 101), kd = uniform(Shape{B, S, 5}, 102),
                       vd = uniform(Shape{B, S, 6}, 103), padding = momnet::key_padding_mask<double>({S, 3}, S);
  auto to_float = [](const Tensor<double>& t) {
    Tensor<float> f(t.shape());
    for (Index i = 0; i < t.size(); ++i) f.data()[i] = static_cast<float>(t.data()[i]);
    return f;
  };
  Tape<double> td;
  const Var<double> yd = md.forward(td, td.variable(qd), td.constant(kd), td.constant(vd),
                                    AttentionMasks<double>{Var<double>(), td.constant(padding)}, CallContext<double>());
  td.backward(momnet::sum(momnet::square(yd)));
  Tape<float> tf;
  const Var<float> qf = tf.variable(to_float(qd));
  const Var<float> yf = mf.forward(tf, qf, tf.constant(to_float(kd)), tf.constant(to_float(vd)),
                                   AttentionMasks<float>{Var<float>(), tf.constant(to_float(padding))},
                                   CallContext<float>());
  tf.backward(momnet::sum(momnet::square(yf)));
  double worst = 0.0, scale = 0.0;
  for (Index i = 0; i < yd.size(); ++i) {
    worst = std::max(worst, std::abs(yd.data()[i] - static_cast<double>(yf.data()[i])));
    scale = std::max(scale, std::abs(yd.data()[i]));
  }
  CHECK(worst < 1e-5 * scale);
  const auto& gd = md.k_proj_weight().grad();
  const auto& gf = mf.k_proj_weight().grad();
  CHECK((gd - gf.cast<double>()).cwiseAbs().maxCoeff() < 1e-4 * gd.cwiseAbs().maxCoeff());
}

// ---- errors ------------------------------------------------------------------------

TEST_CASE("MultiheadAttention refuses bad arguments with the exact exception", "[attention][errors]") {
  constexpr Index E = 8;
  momnet::Rng rng(13);
  using A = std::invalid_argument;
  const char* ctor = "momnet::MultiheadAttention: ";
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(0, 2, rng), A,
                       std::string(ctor) + "embed_dim must be positive, got 0");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 0, rng), A,
                       std::string(ctor) + "num_heads must be positive, got 0");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, -2, rng), A,
                       std::string(ctor) + "num_heads must be positive, got -2");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 3, rng), A,
                       std::string(ctor) + "embed_dim 8 is not divisible by num_heads 3");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 2, rng, MultiheadAttentionOptions{-0.25}), A,
                       std::string(ctor) + "dropout must lie in [0, 1), got -0.25");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 2, rng, MultiheadAttentionOptions{1.0}), A,
                       std::string(ctor) + "dropout must lie in [0, 1), got 1");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 2, rng, MultiheadAttentionOptions{std::nan("")}), A,
                       std::string(ctor) + "dropout must lie in [0, 1), got nan");
  REQUIRE_THROWS_EXACT(MultiheadAttention<double>(8, 2, rng, MultiheadAttentionOptions{0.0, true, -1, 0}), A,
                       std::string(ctor) + "kdim and vdim must be positive (or 0 for embed_dim), got kdim -1, vdim 0");

  MultiheadAttention<double> mha(E, H, rng, MultiheadAttentionOptions{0.0, true, 5, 6});
  Tape<double> tape;
  const Var<double> q = tape.constant(uniform(Shape{B, T, E}, 1));
  const Var<double> k = tape.constant(uniform(Shape{B, S, 5}, 2));
  const Var<double> v = tape.constant(uniform(Shape{B, S, 6}, 3));
  const CallContext<double> c;
  const std::string fwd = "momnet::MultiheadAttention::forward: ";
  auto call = [&](const Var<double>& qq, const Var<double>& kk, const Var<double>& vv,
                  const AttentionMasks<double>& m = {}) { return mha.forward(tape, qq, kk, vv, m, c); };
  REQUIRE_NOTHROW(call(q, k, v));
  REQUIRE_THROWS_EXACT(call(tape.constant(uniform(Shape{B * T, E}, 4)), k, v), A,
                       fwd + "query must be [batch, target length, 8], got [6, 8]");
  REQUIRE_THROWS_EXACT(call(tape.constant(uniform(Shape{B, T, 7}, 4)), k, v), A,
                       fwd + "query must be [batch, target length, 8], got [2, 3, 7]");
  REQUIRE_THROWS_EXACT(call(q, tape.constant(uniform(Shape{B, S, 8}, 4)), v), A,
                       fwd + "key must be [batch, source length, 5], got [2, 4, 8]");
  REQUIRE_THROWS_EXACT(call(q, k, tape.constant(uniform(Shape{B, S, 5}, 4))), A,
                       fwd + "value must be [batch, source length, 6], got [2, 4, 5]");
  REQUIRE_THROWS_EXACT(call(q, k, tape.constant(uniform(Shape{1, 2, S, 6}, 4))), A,
                       fwd + "value must be [batch, source length, 6], got [1, 2, 4, 6]");
  REQUIRE_THROWS_EXACT(call(q, tape.constant(uniform(Shape{3, S, 5}, 4)), tape.constant(uniform(Shape{3, S, 6}, 5))),
                       A,
                       fwd + "query, key and value must have the same batch size, got [2, 3, 8], [3, 4, 5] and "
                             "[3, 4, 6]");
  REQUIRE_THROWS_EXACT(call(q, k, tape.constant(uniform(Shape{B, 5, 6}, 4))), A,
                       fwd + "key and value must have the same length, got [2, 4, 5] and [2, 5, 6]");
  REQUIRE_THROWS_EXACT(call(q, k, v, {tape.constant(uniform(Shape{S, T}, 4)), Var<double>()}), A,
                       fwd + "attn_mask must be [T, S] = [3, 4] or [B * num_heads, T, S] = [4, 3, 4], got [4, 3]");
  REQUIRE_THROWS_EXACT(call(q, k, v, {tape.constant(uniform(Shape{B, T, S}, 4)), Var<double>()}), A,
                       fwd + "attn_mask must be [T, S] = [3, 4] or [B * num_heads, T, S] = [4, 3, 4], got [2, 3, 4]");
  REQUIRE_THROWS_EXACT(call(q, k, v, {tape.constant(uniform(Shape{1, T, S}, 4)), Var<double>()}), A,
                       fwd + "attn_mask must be [T, S] = [3, 4] or [B * num_heads, T, S] = [4, 3, 4], got [1, 3, 4]");
  REQUIRE_THROWS_EXACT(call(q, k, v, {Var<double>(), tape.constant(uniform(Shape{B, T}, 4))}), A,
                       fwd + "key_padding_mask must be [B, S] = [2, 4], got [2, 3]");
  REQUIRE_THROWS_EXACT(call(q, k, v, {Var<double>(), tape.constant(uniform(Shape{B, 1, S}, 4))}), A,
                       fwd + "key_padding_mask must be [B, S] = [2, 4], got [2, 1, 4]");
  REQUIRE_THROWS_EXACT(call(Var<double>(), k, v), A, fwd + "empty Var (default-constructed)");
  Tape<double> other;
  REQUIRE_THROWS_EXACT(call(q, k, v, {other.constant(uniform(Shape{T, S}, 4)), Var<double>()}), A,
                       fwd + "the operands belong to different tapes");
  // A mask with 0 elements is no mask.
  const Var<double> none =
      call(q, k, v, {tape.constant(Tensor<double>(Shape{0})), tape.constant(Tensor<double>(Shape{0, 4}))});
  CHECK(values(none) == values(call(q, k, v)));
}
