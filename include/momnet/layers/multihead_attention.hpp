// Multi-head scaled dot-product attention with the semantics, parameters and
// names of PyTorch's nn.MultiheadAttention(batch_first=True):
//
//   q = query Wq^T + bq,  k = key Wk^T + bk,  v = value Wv^T + bv, each split
//   into num_heads heads of head_dim = embed_dim / num_heads;
//   per head: weights = softmax(q k^T / sqrt(head_dim) + masks) over the keys,
//   dropout on the weights (training only), out = weights v;
//   the heads concatenated and projected by out_proj.
//
// Shapes: query [B, T, E], key [B, S, kdim], value [B, S, vdim], result
// [B, T, E]. Masks are additive (attention_mask.hpp): attn_mask [T, S] or
// [B * num_heads, T, S], key_padding_mask [B, S]; both are added when given.
//
// Parameters (PyTorch's names and initialisation): with kdim = vdim =
// embed_dim, q, k and v share in_proj_weight [3E, E] (rows q, k, v);
// otherwise q_proj_weight [E, E], k_proj_weight [E, kdim] and v_proj_weight
// [E, vdim]; each Xavier-uniform. in_proj_bias [3E] and out_proj.bias start at
// zero, out_proj.weight as nn.Linear's. bias = false removes both biases.
//
// Two ways to call it (dropout as layers/dropout.hpp): with a CallContext
// inside a block, where train/eval comes from the context and the dropout
// mask from context.random(stream), so that a replay draws the same mask; or
// on its own, with the module's train/eval flag (set_training, true by
// default as in PyTorch) and a step counter of its own that each call
// advances.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "momnet/call_context.hpp"
#include "momnet/init.hpp"
#include "momnet/layers/attention_mask.hpp"
#include "momnet/layers/linear.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/ops/dropout.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/ops/matmul.hpp"
#include "momnet/ops/reduction.hpp"
#include "momnet/ops/shape_ops.hpp"
#include "momnet/ops/softmax.hpp"
#include "momnet/ops/unary.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

struct MultiheadAttentionOptions {
  double dropout = 0.0;     // on the attention weights, in training
  bool bias = true;         // in_proj_bias and out_proj.bias
  Eigen::Index kdim = 0;    // features of the key; 0: embed_dim
  Eigen::Index vdim = 0;    // features of the value; 0: embed_dim
};

template <class T>
class MultiheadAttention {
 public:
  using Scalar = T;

  // `rng` initialises the weights, then draws the seed of the standalone
  // forward's dropout.
  MultiheadAttention(Eigen::Index embed_dim, Eigen::Index num_heads, Rng& rng,
                     MultiheadAttentionOptions options = {})
      : embed_dim_(checked_embed_dim(embed_dim, num_heads, options)),
        num_heads_(num_heads),
        kdim_(options.kdim == 0 ? embed_dim : options.kdim),
        vdim_(options.vdim == 0 ? embed_dim : options.vdim),
        dropout_(options.dropout),
        has_bias_(options.bias),
        packed_(kdim_ == embed_dim && vdim_ == embed_dim),
        out_proj_(embed_dim, embed_dim, rng, options.bias, "out_proj") {
    const Eigen::Index e = embed_dim;
    if (packed_) {
      in_proj_weight_ = Parameter<T>(Shape{3 * e, e}, "in_proj_weight");
      init::xavier_uniform(in_proj_weight_, e, 3 * e, rng);
    } else {
      q_proj_weight_ = Parameter<T>(Shape{e, e}, "q_proj_weight");
      k_proj_weight_ = Parameter<T>(Shape{e, kdim_}, "k_proj_weight");
      v_proj_weight_ = Parameter<T>(Shape{e, vdim_}, "v_proj_weight");
      init::xavier_uniform(q_proj_weight_, e, e, rng);
      init::xavier_uniform(k_proj_weight_, kdim_, e, rng);
      init::xavier_uniform(v_proj_weight_, vdim_, e, rng);
    }
    if (has_bias_) {
      in_proj_bias_ = Parameter<T>(Shape{3 * e}, "in_proj_bias");  // zeros
      out_proj_.bias().array().setZero();
    }
    seed_ = rng.next();
  }

  // Inside a block: train/eval from context.training, the dropout mask from
  // context.random(stream) (one stream per dropout site of the block).
  Var<T> forward(Tape<T>& tape, const Var<T>& query, const Var<T>& key, const Var<T>& value,
                 const AttentionMasks<T>& masks, const CallContext<T>& context, std::uint64_t stream = 0) {
    return attend(tape, query, key, value, masks, context.training, context.random(stream), false, true).first;
  }
  // Also the attention weights as PyTorch's need_weights=True returns them
  // (after dropout): [B, T, S] averaged over the heads, or [B, num_heads, T, S].
  std::pair<Var<T>, Var<T>> forward_with_weights(Tape<T>& tape, const Var<T>& query, const Var<T>& key,
                                                 const Var<T>& value, const AttentionMasks<T>& masks,
                                                 const CallContext<T>& context, std::uint64_t stream = 0,
                                                 bool average_weights = true) {
    return attend(tape, query, key, value, masks, context.training, context.random(stream), true, average_weights);
  }

  // On its own: the module's train/eval flag; the dropout mask from
  // CounterRng(seed(), step(), 0, 0), the step advancing with every call.
  Var<T> forward(Tape<T>& tape, const Var<T>& query, const Var<T>& key, const Var<T>& value,
                 const AttentionMasks<T>& masks = {}) {
    const std::uint64_t step = step_++;
    return attend(tape, query, key, value, masks, training_, CounterRng(seed_, step, 0, 0), false, true).first;
  }
  std::pair<Var<T>, Var<T>> forward_with_weights(Tape<T>& tape, const Var<T>& query, const Var<T>& key,
                                                 const Var<T>& value, const AttentionMasks<T>& masks = {},
                                                 bool average_weights = true) {
    const std::uint64_t step = step_++;
    return attend(tape, query, key, value, masks, training_, CounterRng(seed_, step, 0, 0), true, average_weights);
  }

  // PyTorch's state_dict order: in_proj_weight (or q_proj_weight,
  // k_proj_weight, v_proj_weight), in_proj_bias, out_proj.weight, out_proj.bias.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    if (packed_) {
      visit.parameter("in_proj_weight", in_proj_weight_);
    } else {
      visit.parameter("q_proj_weight", q_proj_weight_);
      visit.parameter("k_proj_weight", k_proj_weight_);
      visit.parameter("v_proj_weight", v_proj_weight_);
    }
    if (has_bias_) visit.parameter("in_proj_bias", in_proj_bias_);
    visit.child("out_proj", out_proj_);
  }

  Eigen::Index embed_dim() const noexcept { return embed_dim_; }
  Eigen::Index num_heads() const noexcept { return num_heads_; }
  Eigen::Index head_dim() const noexcept { return embed_dim_ / num_heads_; }
  Eigen::Index kdim() const noexcept { return kdim_; }
  Eigen::Index vdim() const noexcept { return vdim_; }
  double dropout() const noexcept { return dropout_; }
  bool has_bias() const noexcept { return has_bias_; }
  // q, k and v share in_proj_weight (kdim = vdim = embed_dim).
  bool packed() const noexcept { return packed_; }

  Parameter<T>& in_proj_weight() { return packed_parameter(true, in_proj_weight_, "in_proj_weight"); }
  Parameter<T>& q_proj_weight() { return packed_parameter(false, q_proj_weight_, "q_proj_weight"); }
  Parameter<T>& k_proj_weight() { return packed_parameter(false, k_proj_weight_, "k_proj_weight"); }
  Parameter<T>& v_proj_weight() { return packed_parameter(false, v_proj_weight_, "v_proj_weight"); }
  Parameter<T>& in_proj_bias() {
    if (!has_bias_) throw std::logic_error("momnet::MultiheadAttention::in_proj_bias: built with bias = false");
    return in_proj_bias_;
  }
  Linear<T>& out_proj() noexcept { return out_proj_; }

  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }
  // The standalone forward's dropout seed and the step its next call uses.
  std::uint64_t seed() const noexcept { return seed_; }
  void set_seed(std::uint64_t seed) noexcept { seed_ = seed; }
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

 private:
  static Eigen::Index checked_embed_dim(Eigen::Index embed_dim, Eigen::Index num_heads,
                                        const MultiheadAttentionOptions& options) {
    const std::string name = "momnet::MultiheadAttention";
    if (embed_dim <= 0) {
      throw std::invalid_argument(name + ": embed_dim must be positive, got " + std::to_string(embed_dim));
    }
    if (num_heads <= 0) {
      throw std::invalid_argument(name + ": num_heads must be positive, got " + std::to_string(num_heads));
    }
    if (embed_dim % num_heads != 0) {
      throw std::invalid_argument(name + ": embed_dim " + std::to_string(embed_dim) +
                                  " is not divisible by num_heads " + std::to_string(num_heads));
    }
    if (is_nan_bits(options.dropout) || !(options.dropout >= 0.0 && options.dropout < 1.0)) {
      throw std::invalid_argument(name + ": dropout must lie in [0, 1), got " + precise_string(options.dropout));
    }
    if (options.kdim < 0 || options.vdim < 0) {
      throw std::invalid_argument(name + ": kdim and vdim must be positive (or 0 for embed_dim), got kdim " +
                                  std::to_string(options.kdim) + ", vdim " + std::to_string(options.vdim));
    }
    return embed_dim;
  }

  Parameter<T>& packed_parameter(bool packed, Parameter<T>& p, const char* what) {
    if (packed != packed_) {
      throw std::logic_error(std::string("momnet::MultiheadAttention::") + what + ": this module has " +
                             (packed_ ? "in_proj_weight (kdim = vdim = embed_dim)"
                                      : "q_proj_weight, k_proj_weight and v_proj_weight (kdim or vdim differ "
                                        "from embed_dim)"));
    }
    return p;
  }

  void check_inputs(const Var<T>& query, const Var<T>& key, const Var<T>& value, const AttentionMasks<T>& masks) const {
    const char* name = "momnet::MultiheadAttention::forward";
    detail::common_tape(name, query, key);
    detail::common_tape(name, query, value);
    const Shape q = query.shape(), k = key.shape(), v = value.shape();
    auto expect = [&](const Shape& s, const char* what, Eigen::Index features, const char* length) {
      if (s.rank() != 3 || s.dim(2) != features) {
        throw std::invalid_argument(std::string(name) + ": " + what + " must be [batch, " + length + ", " +
                                    std::to_string(features) + "], got " + s.to_string());
      }
    };
    expect(q, "query", embed_dim_, "target length");
    expect(k, "key", kdim_, "source length");
    expect(v, "value", vdim_, "source length");
    if (k.dim(0) != q.dim(0) || v.dim(0) != q.dim(0)) {
      throw std::invalid_argument(std::string(name) + ": query, key and value must have the same batch size, got " +
                                  q.to_string() + ", " + k.to_string() + " and " + v.to_string());
    }
    if (k.dim(1) != v.dim(1)) {
      throw std::invalid_argument(std::string(name) + ": key and value must have the same length, got " +
                                  k.to_string() + " and " + v.to_string());
    }
    const Eigen::Index batch = q.dim(0), target = q.dim(1), source = k.dim(1);
    if (detail::mask_given(masks.attn_mask)) {
      detail::common_tape(name, query, masks.attn_mask);
      const Shape m = masks.attn_mask.shape();
      const bool ok = (m.rank() == 2 && m.dim(0) == target && m.dim(1) == source) ||
                      (m.rank() == 3 && m.dim(0) == batch * num_heads_ && m.dim(1) == target && m.dim(2) == source);
      if (!ok) {
        throw std::invalid_argument(std::string(name) + ": attn_mask must be [T, S] = " +
                                    Shape{target, source}.to_string() + " or [B * num_heads, T, S] = " +
                                    Shape{batch * num_heads_, target, source}.to_string() + ", got " + m.to_string());
      }
    }
    if (detail::mask_given(masks.key_padding_mask)) {
      detail::common_tape(name, query, masks.key_padding_mask);
      const Shape m = masks.key_padding_mask.shape();
      if (m.rank() != 2 || m.dim(0) != batch || m.dim(1) != source) {
        throw std::invalid_argument(std::string(name) + ": key_padding_mask must be [B, S] = " +
                                    Shape{batch, source}.to_string() + ", got " + m.to_string());
      }
    }
  }

  // The masks added together, shaped to broadcast against [B, H, T, S]; an
  // empty Var when there are none.
  Var<T> combined_mask(const AttentionMasks<T>& masks, Eigen::Index batch, Eigen::Index target,
                       Eigen::Index source) const {
    Var<T> mask;
    if (detail::mask_given(masks.attn_mask)) {
      mask = masks.attn_mask.shape().rank() == 2
                 ? masks.attn_mask
                 : reshape(masks.attn_mask, Shape{batch, num_heads_, target, source});
    }
    if (detail::mask_given(masks.key_padding_mask)) {
      const Var<T> padding = reshape(masks.key_padding_mask, Shape{batch, 1, 1, source});
      mask = mask.valid() ? add(mask, padding) : padding;
    }
    return mask;
  }

  std::pair<Var<T>, Var<T>> attend(Tape<T>& tape, const Var<T>& query, const Var<T>& key, const Var<T>& value,
                                   const AttentionMasks<T>& masks, bool training, const CounterRng& rng,
                                   bool need_weights, bool average_weights) {
    check_inputs(query, key, value, masks);
    const Eigen::Index e = embed_dim_, h = num_heads_, d = e / h;
    const Eigen::Index batch = query.shape().dim(0), target = query.shape().dim(1), source = key.shape().dim(1);

    Var<T> wq, wk, wv, bq, bk, bv;
    if (packed_) {
      const Var<T> w = tape.param(in_proj_weight_);
      wq = slice(w, 0, e, 0);
      wk = slice(w, e, e, 0);
      wv = slice(w, 2 * e, e, 0);
    } else {
      wq = tape.param(q_proj_weight_);
      wk = tape.param(k_proj_weight_);
      wv = tape.param(v_proj_weight_);
    }
    if (has_bias_) {
      const Var<T> b = tape.param(in_proj_bias_);
      bq = slice(b, 0, e);
      bk = slice(b, e, e);
      bv = slice(b, 2 * e, e);
    }
    // 1/sqrt(head_dim) folded into q's projection: E * (E + 1) multiplications
    // instead of B * T * E, and the same bits as scaling q when head_dim is a
    // power of 4.
    const T scaling = T(1) / std::sqrt(static_cast<T>(d));
    wq = scale(wq, scaling);
    if (has_bias_) bq = scale(bq, scaling);

    // [B, L, E] -> [B, H, L, D]
    auto split_heads = [&](const Var<T>& x, Eigen::Index length) {
      return permute(reshape(x, Shape{batch, length, h, d}), {0, 2, 1, 3});
    };
    const Var<T> q = split_heads(linear(query, wq, bq), target);
    const Var<T> k = split_heads(linear(key, wk, bk), source);
    const Var<T> v = split_heads(linear(value, wv, bv), source);

    Var<T> scores = matmul(q, k, Transpose::no, Transpose::yes);  // [B, H, T, S]
    const Var<T> mask = combined_mask(masks, batch, target, source);
    if (mask.valid()) scores = add(scores, mask);
    const Var<T> weights = momnet::dropout(softmax(scores, -1), dropout_, training, rng);
    const Var<T> heads = matmul(weights, v);  // [B, H, T, D]
    const Var<T> merged = reshape(permute(heads, {0, 2, 1, 3}), Shape{batch, target, e});
    const Var<T> out = out_proj_.forward(tape, merged);
    if (!need_weights) return {out, Var<T>()};
    return {out, average_weights ? mean(weights, 1) : weights};
  }

  Eigen::Index embed_dim_;
  Eigen::Index num_heads_;
  Eigen::Index kdim_;
  Eigen::Index vdim_;
  double dropout_;
  bool has_bias_;
  bool packed_;
  Linear<T> out_proj_;
  Parameter<T> in_proj_weight_;
  Parameter<T> q_proj_weight_;
  Parameter<T> k_proj_weight_;
  Parameter<T> v_proj_weight_;
  Parameter<T> in_proj_bias_;
  bool training_ = true;
  std::uint64_t seed_ = 0;
  std::uint64_t step_ = 0;
};

}  // namespace momnet
