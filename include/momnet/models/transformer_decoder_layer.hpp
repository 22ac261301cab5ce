// One layer of a Transformer decoder, PyTorch's
// nn.TransformerDecoderLayer(batch_first=True): self-attention, attention to
// the encoder's output (the memory) and a position-wise feed-forward, each
// with a residual connection and a layer norm.
//
//   post-norm (norm_first = false, PyTorch's default):
//     x = norm1(x + dropout1(self_attn(x, x, x)))
//     x = norm2(x + dropout2(multihead_attn(x, memory, memory)))
//     x = norm3(x + dropout3(linear2(dropout(activation(linear1(x))))))
//   pre-norm (norm_first = true):
//     x = x + dropout1(self_attn(norm1(x)))
//     x = x + dropout2(multihead_attn(norm2(x), memory, memory))
//     x = x + dropout3(linear2(dropout(activation(linear1(norm3(x))))))
//
// tgt is [B, T, d_model], memory [B, S, d_model]; the result has tgt's shape.
// The layer returns its whole output, so in a stack it is a non-residual
// block (residual_blocks = false: f(x) = layer(x) - x).
//
// Two ways to call it:
//   forward(tape, tgt, context)  in a stack (block.hpp's replay rules), the
//       extra inputs being
//         extra(0) = memory [B, S, d_model] (required; receives gradients)
//         extra(1) = tgt_mask                ([T, T] or [B * nhead, T, T])
//         extra(2) = memory_mask             ([T, S] or [B * nhead, T, S])
//         extra(3) = tgt_key_padding_mask    ([B, T])
//         extra(4) = memory_key_padding_mask ([B, S])
//       (a missing mask or one with 0 elements means none). Train/eval from
//       context.training; each dropout site draws its mask from
//       context.random(stream) with a stream of its own (the *_stream
//       constants), so a replay draws the same masks and the layer changes no
//       state.
//   forward(tape, tgt, memory, self_masks, memory_masks)  on its own:
//       self_masks = {tgt_mask, tgt_key_padding_mask}, memory_masks =
//       {memory_mask, memory_key_padding_mask}; the layer's train/eval flag
//       (set_training; true by default, as in PyTorch) and a context of its
//       own, seed() with a step that each call advances.
//
// Names as PyTorch's state_dict: self_attn.*, multihead_attn.*
// (in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias), linear1.*,
// linear2.*, norm1.*, norm2.*, norm3.* (weight, bias; no biases with
// bias = false).
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
class TransformerDecoderLayer {
 public:
  using Scalar = T;

  // The CallContext::random streams of the layer's dropout sites.
  static constexpr std::uint64_t self_attention_stream = 0;    // self_attn's attention weights
  static constexpr std::uint64_t memory_attention_stream = 1;  // multihead_attn's attention weights
  static constexpr std::uint64_t feedforward_stream = 2;       // between linear1 and linear2
  static constexpr std::uint64_t dropout1_stream = 3;          // after self-attention
  static constexpr std::uint64_t dropout2_stream = 4;          // after attention to the memory
  static constexpr std::uint64_t dropout3_stream = 5;          // after the feed-forward

  // Parameters initialised from `rng` (self_attn, multihead_attn, linear1,
  // linear2), which then draws the standalone forward's seed.
  TransformerDecoderLayer(Eigen::Index d_model, Eigen::Index nhead, Rng& rng, TransformerLayerOptions options = {})
      : options_(checked(d_model, nhead, options)),
        self_attn_(d_model, nhead, rng, MultiheadAttentionOptions{options.dropout, options.bias, 0, 0}),
        multihead_attn_(d_model, nhead, rng, MultiheadAttentionOptions{options.dropout, options.bias, 0, 0}),
        linear1_(d_model, options.dim_feedforward, rng, options.bias, "linear1"),
        linear2_(options.dim_feedforward, d_model, rng, options.bias, "linear2"),
        norm1_(d_model, LayerNormOptions{options.layer_norm_eps, true, options.bias}),
        norm2_(d_model, LayerNormOptions{options.layer_norm_eps, true, options.bias}),
        norm3_(d_model, LayerNormOptions{options.layer_norm_eps, true, options.bias}),
        seed_(rng.next()) {}

  // In a stack: the memory and the masks from the context's extra inputs
  // (see the header).
  Var<T> forward(Tape<T>& tape, const Var<T>& tgt, const CallContext<T>& context) {
    detail::check_extra_count(name, context, 5,
                              "memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask");
    if (context.extra_count() == 0 || !context.extra(0).valid()) {
      throw std::invalid_argument(std::string(name) +
                                  ": needs the encoder's output (memory) as extra input 0, got " +
                                  (context.extra_count() == 0 ? "no extra input" : "an empty Var"));
    }
    return run(tape, tgt, context.extra(0),
               AttentionMasks<T>{detail::optional_extra(context, 1), detail::optional_extra(context, 3)},
               AttentionMasks<T>{detail::optional_extra(context, 2), detail::optional_extra(context, 4)}, context);
  }
  // On its own: self_masks = {tgt_mask, tgt_key_padding_mask}, memory_masks =
  // {memory_mask, memory_key_padding_mask}.
  Var<T> forward(Tape<T>& tape, const Var<T>& tgt, const Var<T>& memory, const AttentionMasks<T>& self_masks = {},
                 const AttentionMasks<T>& memory_masks = {}) {
    return run(tape, tgt, memory, self_masks, memory_masks,
               detail::standalone_context<T>(seed_, step_++, training_));
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("self_attn", self_attn_);
    visit.child("multihead_attn", multihead_attn_);
    visit.child("linear1", linear1_);
    visit.child("linear2", linear2_);
    visit.child("norm1", norm1_);
    visit.child("norm2", norm2_);
    visit.child("norm3", norm3_);
  }

  void set_training(bool training) noexcept {
    training_ = training;
    self_attn_.set_training(training);
    multihead_attn_.set_training(training);
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
  MultiheadAttention<T>& multihead_attn() noexcept { return multihead_attn_; }
  Linear<T>& linear1() noexcept { return linear1_; }
  Linear<T>& linear2() noexcept { return linear2_; }
  LayerNorm<T>& norm1() noexcept { return norm1_; }
  LayerNorm<T>& norm2() noexcept { return norm2_; }
  LayerNorm<T>& norm3() noexcept { return norm3_; }

 private:
  static constexpr const char* name = "momnet::TransformerDecoderLayer";

  static TransformerLayerOptions checked(Eigen::Index d_model, Eigen::Index nhead,
                                         const TransformerLayerOptions& options) {
    detail::check_transformer_layer(name, d_model, nhead, options);
    return options;
  }

  Var<T> run(Tape<T>& tape, const Var<T>& tgt, const Var<T>& memory, const AttentionMasks<T>& self_masks,
             const AttentionMasks<T>& memory_masks, const CallContext<T>& context) {
    const char* where = "momnet::TransformerDecoderLayer::forward";
    detail::common_tape(where, tgt, memory);
    const Shape t = tgt.shape(), m = memory.shape();
    if (t.rank() != 3 || t.dim(2) != d_model()) {
      throw std::invalid_argument(std::string(where) + ": tgt must be [batch, target length, " +
                                  std::to_string(d_model()) + "], got " + t.to_string());
    }
    if (m.rank() != 3 || m.dim(2) != d_model() || m.dim(0) != t.dim(0)) {
      throw std::invalid_argument(std::string(where) + ": memory must be [batch " + std::to_string(t.dim(0)) +
                                  ", source length, " + std::to_string(d_model()) + "] for tgt " + t.to_string() +
                                  ", got " + m.to_string());
    }
    const double p = options_.dropout;
    auto self_attention = [&](const Var<T>& x) {
      return detail::dropout_at(self_attn_.forward(tape, x, x, x, self_masks, context, self_attention_stream), p,
                                context, dropout1_stream);
    };
    auto memory_attention = [&](const Var<T>& x) {
      return detail::dropout_at(
          multihead_attn_.forward(tape, x, memory, memory, memory_masks, context, memory_attention_stream), p,
          context, dropout2_stream);
    };
    auto feed_forward = [&](const Var<T>& x) {
      return detail::dropout_at(detail::feed_forward(tape, x, linear1_, linear2_, options_.activation, p, context,
                                                     feedforward_stream),
                                p, context, dropout3_stream);
    };
    Var<T> x = tgt;
    if (options_.norm_first) {
      x = add(x, self_attention(norm1_.forward(tape, x)));
      x = add(x, memory_attention(norm2_.forward(tape, x)));
      return add(x, feed_forward(norm3_.forward(tape, x)));
    }
    x = norm1_.forward(tape, add(x, self_attention(x)));
    x = norm2_.forward(tape, add(x, memory_attention(x)));
    return norm3_.forward(tape, add(x, feed_forward(x)));
  }

  TransformerLayerOptions options_;
  MultiheadAttention<T> self_attn_;
  MultiheadAttention<T> multihead_attn_;
  Linear<T> linear1_;
  Linear<T> linear2_;
  LayerNorm<T> norm1_;
  LayerNorm<T> norm2_;
  LayerNorm<T> norm3_;
  bool training_ = true;
  std::uint64_t seed_;
  std::uint64_t step_ = 0;
};

}  // namespace momnet
