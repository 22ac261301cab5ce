// The options shared by TransformerEncoderLayer and TransformerDecoderLayer,
// with PyTorch's defaults (nn.TransformerEncoderLayer's keyword arguments),
// and the helpers both layers use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "momnet/call_context.hpp"
#include "momnet/fixed_point.hpp"
#include "momnet/layers/attention_mask.hpp"
#include "momnet/layers/linear.hpp"
#include "momnet/ops/activation.hpp"
#include "momnet/ops/dropout.hpp"
#include "momnet/ops/linear_activation.hpp"
#include "momnet/tape.hpp"

namespace momnet {

// The feed-forward's activation; gelu is the exact (erf) form.
enum class TransformerActivation { relu, gelu };

inline const char* to_string(TransformerActivation activation) {
  switch (activation) {
    case TransformerActivation::relu: return "relu";
    case TransformerActivation::gelu: return "gelu";
  }
  return "unknown";
}

struct TransformerLayerOptions {
  Eigen::Index dim_feedforward = 2048;
  double dropout = 0.1;  // every dropout of the layer, attention weights included
  TransformerActivation activation = TransformerActivation::relu;
  double layer_norm_eps = 1e-5;
  bool norm_first = false;  // true: pre-norm, x + f(norm(x)); false: post-norm, norm(x + f(x))
  bool bias = true;         // false: no bias in any linear layer or layer norm
};

namespace detail {

// Throws, naming `layer`, unless the layer's arguments are usable.
inline void check_transformer_layer(const char* layer, Eigen::Index d_model, Eigen::Index nhead,
                                    const TransformerLayerOptions& options) {
  const std::string name = layer;
  if (d_model <= 0) throw std::invalid_argument(name + ": d_model must be positive, got " + std::to_string(d_model));
  if (nhead <= 0) throw std::invalid_argument(name + ": nhead must be positive, got " + std::to_string(nhead));
  if (d_model % nhead != 0) {
    throw std::invalid_argument(name + ": d_model " + std::to_string(d_model) + " is not divisible by nhead " +
                                std::to_string(nhead));
  }
  if (options.dim_feedforward <= 0) {
    throw std::invalid_argument(name + ": dim_feedforward must be positive, got " +
                                std::to_string(options.dim_feedforward));
  }
  if (is_nan_bits(options.dropout) || !(options.dropout >= 0.0 && options.dropout < 1.0)) {
    throw std::invalid_argument(name + ": dropout must lie in [0, 1), got " + precise_string(options.dropout));
  }
  if (!(is_finite_bits(options.layer_norm_eps) && options.layer_norm_eps >= 0.0)) {
    throw std::invalid_argument(name + ": layer_norm_eps must be finite and >= 0, got " +
                                precise_string(options.layer_norm_eps));
  }
  if (options.activation != TransformerActivation::relu && options.activation != TransformerActivation::gelu) {
    throw std::invalid_argument(name + ": unknown activation " +
                                std::to_string(static_cast<int>(options.activation)));
  }
}

inline ActivationKind activation_kind(TransformerActivation activation) {
  return activation == TransformerActivation::gelu ? ActivationKind::gelu : ActivationKind::relu;
}

// Extra input i of the context, or an empty Var when the stack was given fewer.
template <class T>
Var<T> optional_extra(const CallContext<T>& context, std::size_t i) {
  return i < context.extra_count() ? context.extra(i) : Var<T>();
}

// Throws, naming `layer`, when the stack passed more extra inputs than the
// layer reads: they would be silently ignored (a decoder's extras given to an
// encoder, say).
template <class T>
void check_extra_count(const char* layer, const CallContext<T>& context, std::size_t most, const char* meaning) {
  if (context.extra_count() > most) {
    throw std::invalid_argument(std::string(layer) + ": takes at most " + std::to_string(most) +
                                " extra inputs (" + meaning + "), got " + std::to_string(context.extra_count()));
  }
}

// A layer's own context for its standalone forward: its seed and step, its
// train/eval flag, layer 0, no extra inputs.
template <class T>
CallContext<T> standalone_context(std::uint64_t seed, std::uint64_t step, bool training) {
  CallContext<T> context;
  context.seed = seed;
  context.step = step;
  context.training = training;
  return context;
}

// Dropout at one site of a layer: train/eval from the context, the mask from
// context.random(stream).
template <class T>
Var<T> dropout_at(const Var<T>& x, double p, const CallContext<T>& context, std::uint64_t stream) {
  return dropout(x, p, context.training, context.random(stream));
}

// The position-wise feed-forward linear2(dropout(activation(linear1(x)))),
// linear1 and its activation as one node (ops/linear_activation.hpp), which
// keeps the activated values only for relu.
template <class T>
Var<T> feed_forward(Tape<T>& tape, const Var<T>& x, Linear<T>& linear1, Linear<T>& linear2,
                    TransformerActivation activation, double p, const CallContext<T>& context,
                    std::uint64_t stream) {
  const Var<T> hidden = linear_activation(x, tape.param(linear1.weight()),
                                          linear1.has_bias() ? tape.param(linear1.bias()) : Var<T>(),
                                          activation_kind(activation));
  return linear2.forward(tape, dropout_at(hidden, p, context, stream));
}

}  // namespace detail
}  // namespace momnet
