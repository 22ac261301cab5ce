// One layer of a Transformer encoder, PyTorch's
// nn.TransformerEncoderLayer(batch_first=True): self-attention and a
// position-wise feed-forward, each with a residual connection and a layer norm.
//
//   post-norm (norm_first = false, PyTorch's default):
//     x = norm1(x + dropout1(self_attn(x, x, x)))
//     x = norm2(x + dropout2(linear2(dropout(activation(linear1(x))))))
//   pre-norm (norm_first = true):
//     x = x + dropout1(self_attn(norm1(x)))
//     x = x + dropout2(linear2(dropout(activation(linear1(norm2(x))))))
//
// src is [B, T, d_model]; the result has its shape. The layer returns its
// whole output, so in a stack it is a non-residual block
// (residual_blocks = false: f(x) = layer(x) - x).
//
// Two ways to call it:
//   forward(tape, src, context)  in a stack (block.hpp's replay rules):
//       context.extra(0) = src_mask ([T, S] or [B * nhead, T, S]),
//       context.extra(1) = src_key_padding_mask ([B, S]); a missing extra or
//       one with 0 elements means no mask. Train/eval from context.training;
//       each dropout site draws its mask from context.random(stream) with a
//       stream of its own (the *_stream constants), so a replay draws the same
//       masks and the layer changes no state.
//   forward(tape, src, masks)  on its own: the layer's train/eval flag
//       (set_training; true by default, as in PyTorch) and a context of its
//       own, seed() with a step that each call advances.
//
// Names as PyTorch's state_dict: self_attn.in_proj_weight,
// self_attn.in_proj_bias, self_attn.out_proj.weight, self_attn.out_proj.bias,
// linear1.weight, linear1.bias, linear2.weight, linear2.bias, norm1.weight,
// norm1.bias, norm2.weight, norm2.bias (no biases with bias = false).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "momnet/call_context.hpp"
#include "momnet/layers/attention_mask.hpp"
#include "momnet/layers/layer_norm.hpp"
#include "momnet/layers/linear.hpp"
#include "momnet/layers/multihead_attention.hpp"
#include "momnet/models/transformer_layer_options.hpp"
#include "momnet/ops/elementwise.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class TransformerEncoderLayer {
 public:
  using Scalar = T;

  // The CallContext::random streams of the layer's dropout sites.
  static constexpr std::uint64_t attention_stream = 0;    // self_attn's attention weights
  static constexpr std::uint64_t feedforward_stream = 1;  // between linear1 and linear2
  static constexpr std::uint64_t dropout1_stream = 2;     // after self-attention
  static constexpr std::uint64_t dropout2_stream = 3;     // after the feed-forward

  // Parameters initialised from `rng` (self_attn, linear1, linear2), which
  // then draws the standalone forward's seed.
  TransformerEncoderLayer(Eigen::Index d_model, Eigen::Index nhead, Rng& rng, TransformerLayerOptions options = {})
      : options_(checked(d_model, nhead, options)),
        self_attn_(d_model, nhead, rng, MultiheadAttentionOptions{options.dropout, options.bias, 0, 0}),
        linear1_(d_model, options.dim_feedforward, rng, options.bias, "linear1"),
        linear2_(options.dim_feedforward, d_model, rng, options.bias, "linear2"),
        norm1_(d_model, LayerNormOptions{options.layer_norm_eps, true, options.bias}),
        norm2_(d_model, LayerNormOptions{options.layer_norm_eps, true, options.bias}),
        seed_(rng.next()) {}

  // In a stack: masks from context.extra(0) and extra(1) (see the header).
  Var<T> forward(Tape<T>& tape, const Var<T>& src, const CallContext<T>& context) {
    detail::check_extra_count(name, context, 2, "src_mask, src_key_padding_mask");
    return run(tape, src, AttentionMasks<T>{detail::optional_extra(context, 0), detail::optional_extra(context, 1)},
               context);
  }
  // On its own, with masks.attn_mask = src_mask and masks.key_padding_mask =
  // src_key_padding_mask.
  Var<T> forward(Tape<T>& tape, const Var<T>& src, const AttentionMasks<T>& masks = {}) {
    return run(tape, src, masks, detail::standalone_context<T>(seed_, step_++, training_));
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("self_attn", self_attn_);
    visit.child("linear1", linear1_);
    visit.child("linear2", linear2_);
    visit.child("norm1", norm1_);
    visit.child("norm2", norm2_);
  }

  void set_training(bool training) noexcept {
    training_ = training;
    self_attn_.set_training(training);
  }
  bool training() const noexcept { return training_; }
  // The standalone forward's seed, and the step its next call uses.
  std::uint64_t seed() const noexcept { return seed_; }
  void set_seed(std::uint64_t seed) noexcept { seed_ = seed; }
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

  Eigen::Index d_model() const noexcept { return self_attn_.embed_dim(); }
  Eigen::Index nhead() const noexcept { return self_attn_.num_heads(); }
  Eigen::Index dim_feedforward() const noexcept { return options_.dim_feedforward; }
  const TransformerLayerOptions& options() const noexcept { return options_; }
  MultiheadAttention<T>& self_attn() noexcept { return self_attn_; }
  Linear<T>& linear1() noexcept { return linear1_; }
  Linear<T>& linear2() noexcept { return linear2_; }
  LayerNorm<T>& norm1() noexcept { return norm1_; }
  LayerNorm<T>& norm2() noexcept { return norm2_; }

 private:
  static constexpr const char* name = "momnet::TransformerEncoderLayer";

  static TransformerLayerOptions checked(Eigen::Index d_model, Eigen::Index nhead,
                                         const TransformerLayerOptions& options) {
    detail::check_transformer_layer(name, d_model, nhead, options);
    return options;
  }

  Var<T> run(Tape<T>& tape, const Var<T>& src, const AttentionMasks<T>& masks, const CallContext<T>& context) {
    detail::common_tape("momnet::TransformerEncoderLayer::forward", src);
    const Shape shape = src.shape();
    if (shape.rank() != 3 || shape.dim(2) != d_model()) {
      throw std::invalid_argument("momnet::TransformerEncoderLayer::forward: src must be [batch, sequence, " +
                                  std::to_string(d_model()) + "], got " + shape.to_string());
    }
    const double p = options_.dropout;
    auto self_attention = [&](const Var<T>& x) {
      return detail::dropout_at(self_attn_.forward(tape, x, x, x, masks, context, attention_stream), p, context,
                                dropout1_stream);
    };
    auto feed_forward = [&](const Var<T>& x) {
      return detail::dropout_at(detail::feed_forward(tape, x, linear1_, linear2_, options_.activation, p, context,
                                                     feedforward_stream),
                                p, context, dropout2_stream);
    };
    Var<T> x = src;
    if (options_.norm_first) {
      x = add(x, self_attention(norm1_.forward(tape, x)));
      return add(x, feed_forward(norm2_.forward(tape, x)));
    }
    x = norm1_.forward(tape, add(x, self_attention(x)));
    return norm2_.forward(tape, add(x, feed_forward(x)));
  }

  TransformerLayerOptions options_;
  MultiheadAttention<T> self_attn_;
  Linear<T> linear1_;
  Linear<T> linear2_;
  LayerNorm<T> norm1_;
  LayerNorm<T> norm2_;
  bool training_ = true;
  std::uint64_t seed_;
  std::uint64_t step_ = 0;
};

}  // namespace momnet
