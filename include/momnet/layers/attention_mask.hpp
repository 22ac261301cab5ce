// Attention masks in PyTorch's float form: values ADDED to the attention
// scores before the softmax, 0 to allow a position and -infinity to forbid
// it. A forbidden position's weight becomes 0, or a denormal (5.6e-309 in
// double) where Eigen's vectorised exp rounds exp(-inf) up; a row with every
// position forbidden has no softmax and gives NaN, as in PyTorch. Builders
// for the usual masks, and AttentionMasks, the pair MultiheadAttention takes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/shape.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// [size, size]: 0 on and below the diagonal, -inf above, so that position t
// attends to positions 0..t only (nn.Transformer.generate_square_subsequent_mask).
template <class T>
Tensor<T> causal_mask(Eigen::Index size) {
  if (size < 0) {
    throw std::invalid_argument("momnet::causal_mask: size must be non-negative, got " + std::to_string(size));
  }
  Tensor<T> mask(Shape{size, size});
  const T forbidden = -std::numeric_limits<T>::infinity();
  for (Eigen::Index t = 0; t < size; ++t) {
    for (Eigen::Index s = t + 1; s < size; ++s) mask.data()[t * size + s] = forbidden;
  }
  return mask;
}

// [lengths.size(), max_len]: row b is 0 at positions below lengths[b] and -inf
// from there on, a key_padding_mask for sequences padded to max_len.
template <class T>
Tensor<T> key_padding_mask(const std::vector<Eigen::Index>& lengths, Eigen::Index max_len) {
  const char* name = "momnet::key_padding_mask";
  if (max_len < 0) {
    throw std::invalid_argument(std::string(name) + ": max_len must be non-negative, got " + std::to_string(max_len));
  }
  const auto batch = static_cast<Eigen::Index>(lengths.size());
  for (Eigen::Index b = 0; b < batch; ++b) {
    const Eigen::Index length = lengths[static_cast<std::size_t>(b)];
    if (length < 0 || length > max_len) {
      throw std::invalid_argument(std::string(name) + ": length " + std::to_string(length) + " of sequence " +
                                  std::to_string(b) + " is outside [0, " + std::to_string(max_len) + "]");
    }
  }
  Tensor<T> mask(Shape{batch, max_len});
  const T forbidden = -std::numeric_limits<T>::infinity();
  for (Eigen::Index b = 0; b < batch; ++b) {
    for (Eigen::Index s = lengths[static_cast<std::size_t>(b)]; s < max_len; ++s) {
      mask.data()[b * max_len + s] = forbidden;
    }
  }
  return mask;
}

// PyTorch's boolean masks ("true forbids") as float masks: -inf where
// `forbidden` is nonzero, 0 elsewhere, in the same shape.
template <class T>
Tensor<T> additive_mask(const Tensor<std::int64_t>& forbidden) {
  Tensor<T> mask(forbidden.shape());
  const T value = -std::numeric_limits<T>::infinity();
  for (Eigen::Index i = 0; i < mask.size(); ++i) {
    if (forbidden.data()[i] != 0) mask.data()[i] = value;
  }
  return mask;
}

// The masks of one attention call, usually tape.constant()s. Either may be
// absent: an empty Var or one with 0 elements.
//   attn_mask         [T, S] (the same for every batch and head) or
//                     [B * num_heads, T, S] (row b * num_heads + h)
//   key_padding_mask  [B, S] (the same for every head and query)
// Both are added to the scores when both are given.
template <class T>
struct AttentionMasks {
  Var<T> attn_mask;
  Var<T> key_padding_mask;
};

namespace detail {

// A mask is given: a valid Var with elements.
template <class T>
bool mask_given(const Var<T>& mask) {
  return mask.valid() && mask.size() > 0;
}

}  // namespace detail
}  // namespace momnet
