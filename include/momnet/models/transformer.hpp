// PyTorch's nn.TransformerEncoder, nn.TransformerDecoder and nn.Transformer
// (batch-first: [batch, sequence, d_model]), with their layers stacked in a
// Residual (the plain Transformer) or a MomentumResidual (the Momentum
// Transformer), and to_momentum between the two: the reference package's
// transform_to_momentumnet(transformer, ["encoder.layers", "decoder.layers"]).
//
// A Transformer layer returns its whole output, norm(x + sublayer(x)) in the
// post-norm variant, so the stacks treat each layer as a "non-residual" block
// (residual_blocks = false). A plain stack then passes each layer's output on,
// as PyTorch's does; a momentum stack
// computes v <- gamma v + (1 - gamma)(layer(x) - x), x <- x + v, which is
// invertible whatever the layer is, so both norm_first variants are exact.
//
// The masks are additive, as PyTorch's float masks (layers/attention_mask.hpp
// builds them: causal_mask, key_padding_mask, additive_mask). They reach the
// layers as the stack's extra inputs, with the decoder's memory, which gets
// its gradient through the exact backward like any extra input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "momnet/init.hpp"
#include "momnet/layers/attention_mask.hpp"
#include "momnet/layers/layer_norm.hpp"
#include "momnet/models/transformer_decoder_layer.hpp"
#include "momnet/models/transformer_encoder_layer.hpp"
#include "momnet/models/transformer_layer_options.hpp"
#include "momnet/module.hpp"
#include "momnet/momentum_options.hpp"
#include "momnet/momentum_residual.hpp"
#include "momnet/random.hpp"
#include "momnet/residual.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// The masks of nn.Transformer.forward; an empty Var means no mask.
template <class T>
struct TransformerMasks {
  Var<T> src_mask;                 // [S, S] or [batch * nhead, S, S]
  Var<T> tgt_mask;                 // [T, T] or [batch * nhead, T, T]; causal_mask<T>(T) for a decoder
  Var<T> memory_mask;              // [T, S] or [batch * nhead, T, S]
  Var<T> src_key_padding_mask;     // [batch, S]
  Var<T> tgt_key_padding_mask;     // [batch, T]
  Var<T> memory_key_padding_mask;  // [batch, S]
};

namespace detail {

template <class Stack>
struct stack_options;
template <class Block>
struct stack_options<Residual<Block>> {
  using type = ResidualOptions;
};
template <class Block>
struct stack_options<MomentumResidual<Block>> {
  using type = MomentumOptions;
};

// The layers return their whole output: the stack subtracts x.
template <class Options>
Options layer_stack_options(Options options) {
  options.residual_blocks = false;
  return options;
}

// The stack's extra inputs for the layers' fixed order: an absent mask in
// the middle becomes a constant with no elements (which the layers read as
// "no mask"), absent ones at the end are left out.
template <class T>
std::vector<Var<T>> layer_extras(Tape<T>& tape, std::initializer_list<Var<T>> given) {
  std::vector<Var<T>> extras(given);
  while (!extras.empty() && !extras.back().valid()) extras.pop_back();
  for (Var<T>& extra : extras) {
    if (!extra.valid()) extra = tape.constant(Tensor<T>(Shape{0}));
  }
  return extras;
}

template <class Layer>
std::vector<Layer> copies_of(const Layer& layer, std::size_t count) {
  return std::vector<Layer>(count, layer);
}

template <class Stack>
void require_layer_stack(const Stack& layers, const char* who) {
  if (layers.options().residual_blocks) {
    throw std::invalid_argument(std::string(who) +
                                ": the layers return their whole output; the stack needs residual_blocks = false");
  }
}

}  // namespace detail

// nn.TransformerEncoder: the layers, then an optional final norm. Its layers
// are a Stack<TransformerEncoderLayer<T>>: Residual (plain) or
// MomentumResidual (momentum). Names: layers.0.self_attn.in_proj_weight, ...,
// norm.weight.
template <class T, template <class> class Stack = Residual>
class TransformerEncoder {
 public:
  using Scalar = T;
  using Layer = TransformerEncoderLayer<T>;
  using Layers = Stack<Layer>;
  using StackOptions = typename detail::stack_options<Layers>::type;

  // One layer per entry of `layers`. The stack's residual_blocks is set to
  // false (see the top of this file); the other options are kept.
  explicit TransformerEncoder(std::vector<Layer> layers, std::optional<LayerNorm<T>> norm = std::nullopt,
                              StackOptions options = {})
      : layers_(std::move(layers), detail::layer_stack_options(options)), norm_(std::move(norm)) {}
  // `num_layers` copies of `layer` (the same initial weights, trained
  // separately), as nn.TransformerEncoder(layer, num_layers, norm).
  TransformerEncoder(const Layer& layer, std::size_t num_layers, std::optional<LayerNorm<T>> norm = std::nullopt,
                     StackOptions options = {})
      : TransformerEncoder(detail::copies_of(layer, num_layers), std::move(norm), options) {}
  // From a stack made elsewhere (to_momentum); it must have residual_blocks = false.
  TransformerEncoder(Layers layers, std::optional<LayerNorm<T>> norm)
      : layers_(std::move(layers)), norm_(std::move(norm)) {
    detail::require_layer_stack(layers_, "momnet::TransformerEncoder");
  }

  // src [batch, S, d_model]; src_mask [S, S] (or [batch * nhead, S, S]) and
  // src_key_padding_mask [batch, S], additive, optional.
  Var<T> forward(Tape<T>& tape, const Var<T>& src, const Var<T>& src_mask = Var<T>(),
                 const Var<T>& src_key_padding_mask = Var<T>()) {
    const Var<T> out = layers_(tape, src, detail::layer_extras(tape, {src_mask, src_key_padding_mask}));
    return norm_ ? norm_->forward(tape, out) : out;
  }
  Var<T> operator()(Tape<T>& tape, const Var<T>& src, const Var<T>& src_mask = Var<T>(),
                    const Var<T>& src_key_padding_mask = Var<T>()) {
    return forward(tape, src, src_mask, src_key_padding_mask);
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("layers", layers_);
    if (norm_) visit.child("norm", *norm_);
  }

  Layers& layers() noexcept { return layers_; }
  const Layers& layers() const noexcept { return layers_; }
  std::optional<LayerNorm<T>>& norm() noexcept { return norm_; }
  const std::optional<LayerNorm<T>>& norm() const noexcept { return norm_; }
  std::size_t num_layers() const noexcept { return layers_.depth(); }

 private:
  Layers layers_;
  std::optional<LayerNorm<T>> norm_;
};

// nn.TransformerDecoder: the layers, each reading the encoder's output (the
// memory), then an optional final norm. Names: layers.0.multihead_attn..., norm.weight.
template <class T, template <class> class Stack = Residual>
class TransformerDecoder {
 public:
  using Scalar = T;
  using Layer = TransformerDecoderLayer<T>;
  using Layers = Stack<Layer>;
  using StackOptions = typename detail::stack_options<Layers>::type;

  explicit TransformerDecoder(std::vector<Layer> layers, std::optional<LayerNorm<T>> norm = std::nullopt,
                              StackOptions options = {})
      : layers_(std::move(layers), detail::layer_stack_options(options)), norm_(std::move(norm)) {}
  TransformerDecoder(const Layer& layer, std::size_t num_layers, std::optional<LayerNorm<T>> norm = std::nullopt,
                     StackOptions options = {})
      : TransformerDecoder(detail::copies_of(layer, num_layers), std::move(norm), options) {}
  TransformerDecoder(Layers layers, std::optional<LayerNorm<T>> norm)
      : layers_(std::move(layers)), norm_(std::move(norm)) {
    detail::require_layer_stack(layers_, "momnet::TransformerDecoder");
  }

  // tgt [batch, T, d_model], memory [batch, S, d_model]; the masks additive
  // and optional: tgt_mask [T, T], memory_mask [T, S], tgt_key_padding_mask
  // [batch, T], memory_key_padding_mask [batch, S].
  Var<T> forward(Tape<T>& tape, const Var<T>& tgt, const Var<T>& memory, const Var<T>& tgt_mask = Var<T>(),
                 const Var<T>& memory_mask = Var<T>(), const Var<T>& tgt_key_padding_mask = Var<T>(),
                 const Var<T>& memory_key_padding_mask = Var<T>()) {
    if (!memory.valid()) {
      throw std::invalid_argument("momnet::TransformerDecoder::forward: the memory (the encoder's output) is empty");
    }
    const Var<T> out = layers_(tape, tgt,
                               detail::layer_extras(tape, {memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                                           memory_key_padding_mask}));
    return norm_ ? norm_->forward(tape, out) : out;
  }
  Var<T> operator()(Tape<T>& tape, const Var<T>& tgt, const Var<T>& memory, const Var<T>& tgt_mask = Var<T>(),
                    const Var<T>& memory_mask = Var<T>(), const Var<T>& tgt_key_padding_mask = Var<T>(),
                    const Var<T>& memory_key_padding_mask = Var<T>()) {
    return forward(tape, tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask);
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("layers", layers_);
    if (norm_) visit.child("norm", *norm_);
  }

  Layers& layers() noexcept { return layers_; }
  const Layers& layers() const noexcept { return layers_; }
  std::optional<LayerNorm<T>>& norm() noexcept { return norm_; }
  const std::optional<LayerNorm<T>>& norm() const noexcept { return norm_; }
  std::size_t num_layers() const noexcept { return layers_.depth(); }

 private:
  Layers layers_;
  std::optional<LayerNorm<T>> norm_;
};

// nn.Transformer's constructor arguments (batch_first is always true here).
struct TransformerOptions {
  Eigen::Index d_model = 512;
  Eigen::Index nhead = 8;
  std::size_t num_encoder_layers = 6;
  std::size_t num_decoder_layers = 6;
  Eigen::Index dim_feedforward = 2048;
  double dropout = 0.1;
  TransformerActivation activation = TransformerActivation::relu;
  double layer_norm_eps = 1e-5;
  bool norm_first = false;
  bool bias = true;

  TransformerLayerOptions layer_options() const {
    TransformerLayerOptions o;
    o.dim_feedforward = dim_feedforward;
    o.dropout = dropout;
    o.activation = activation;
    o.layer_norm_eps = layer_norm_eps;
    o.norm_first = norm_first;
    o.bias = bias;
    return o;
  }
  LayerNormOptions norm_options() const {
    LayerNormOptions o;
    o.eps = layer_norm_eps;
    o.bias = bias;
    return o;
  }
};

// nn.Transformer: encoder (with its final norm) and decoder (with its final
// norm). Transformer<float> is the plain one; Transformer<float,
// MomentumResidual> the Momentum Transformer, usually made by to_momentum.
// Names: encoder.layers.0.self_attn.in_proj_weight, ..., encoder.norm.weight,
// decoder.layers.5.multihead_attn.out_proj.bias, ..., decoder.norm.bias.
template <class T, template <class> class Stack = Residual>
class Transformer {
 public:
  using Scalar = T;
  using Encoder = TransformerEncoder<T, Stack>;
  using Decoder = TransformerDecoder<T, Stack>;
  using StackOptions = typename Encoder::StackOptions;

  // As nn.Transformer(...): every layer a copy of one, then every weight
  // matrix (rank > 1) redrawn with xavier_uniform, as its _reset_parameters.
  // `stack_options` go to both stacks; the decoder's seed is derived from
  // the encoder's so that their dropout masks differ.
  explicit Transformer(const TransformerOptions& options, Rng& rng, StackOptions stack_options = {})
      : encoder_(make_encoder(options, rng, stack_options)), decoder_(make_decoder(options, rng, stack_options)) {
    for_each_parameter(*this, [&rng](Parameter<T>& p) {
      if (p.shape().rank() > 1) init::xavier_uniform(p, p.shape().dim(1), p.shape().dim(0), rng);
    });
  }
  Transformer(Encoder encoder, Decoder decoder) : encoder_(std::move(encoder)), decoder_(std::move(decoder)) {}

  // src [batch, S, d_model] (embedded), tgt [batch, T, d_model]; returns the
  // decoder's output [batch, T, d_model].
  Var<T> forward(Tape<T>& tape, const Var<T>& src, const Var<T>& tgt,
                 const TransformerMasks<T>& masks = TransformerMasks<T>()) {
    const Var<T> memory = encoder_.forward(tape, src, masks.src_mask, masks.src_key_padding_mask);
    return decoder_.forward(tape, tgt, memory, masks.tgt_mask, masks.memory_mask, masks.tgt_key_padding_mask,
                            masks.memory_key_padding_mask);
  }
  Var<T> operator()(Tape<T>& tape, const Var<T>& src, const Var<T>& tgt,
                    const TransformerMasks<T>& masks = TransformerMasks<T>()) {
    return forward(tape, src, tgt, masks);
  }

  // nn.Transformer.generate_square_subsequent_mask: 0 on and below the
  // diagonal, -infinity above.
  static Tensor<T> generate_square_subsequent_mask(Eigen::Index size) { return causal_mask<T>(size); }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("encoder", encoder_);
    visit.child("decoder", decoder_);
  }

  Encoder& encoder() noexcept { return encoder_; }
  const Encoder& encoder() const noexcept { return encoder_; }
  Decoder& decoder() noexcept { return decoder_; }
  const Decoder& decoder() const noexcept { return decoder_; }

 private:
  static Encoder make_encoder(const TransformerOptions& options, Rng& rng, StackOptions stack_options) {
    TransformerEncoderLayer<T> layer(options.d_model, options.nhead, rng, options.layer_options());
    return Encoder(layer, options.num_encoder_layers, LayerNorm<T>(options.d_model, options.norm_options()),
                   stack_options);
  }
  static Decoder make_decoder(const TransformerOptions& options, Rng& rng, StackOptions stack_options) {
    stack_options.seed = detail::mix64(stack_options.seed ^ 0xD1B54A32D192ED03ULL);
    TransformerDecoderLayer<T> layer(options.d_model, options.nhead, rng, options.layer_options());
    return Decoder(layer, options.num_decoder_layers, LayerNorm<T>(options.d_model, options.norm_options()),
                   stack_options);
  }

  Encoder encoder_;
  Decoder decoder_;
};

// The Momentum Transformer of a plain one, with copies of its parameters
// (the plain model stays usable): each layer stack becomes a MomentumResidual
// (gamma, options; residual_blocks stays false), the final norms are kept.
template <class T>
TransformerEncoder<T, MomentumResidual> to_momentum(const TransformerEncoder<T, Residual>& encoder, double gamma,
                                                    MomentumOptions options = {}) {
  return TransformerEncoder<T, MomentumResidual>(momnet::to_momentum(encoder.layers(), gamma, options), encoder.norm());
}
template <class T>
TransformerDecoder<T, MomentumResidual> to_momentum(const TransformerDecoder<T, Residual>& decoder, double gamma,
                                                    MomentumOptions options = {}) {
  return TransformerDecoder<T, MomentumResidual>(momnet::to_momentum(decoder.layers(), gamma, options), decoder.norm());
}
template <class T>
Transformer<T, MomentumResidual> to_momentum(const Transformer<T, Residual>& transformer, double gamma,
                                             MomentumOptions options = {}) {
  return Transformer<T, MomentumResidual>(to_momentum(transformer.encoder(), gamma, options),
                                          to_momentum(transformer.decoder(), gamma, options));
}

}  // namespace momnet
