// A lookup table with torch.nn.Embedding's semantics and state_dict name:
// `weight` [num_embeddings, embedding_dim], initialised N(0, 1) from the Rng
// (PyTorch's init), and forward(indices) = weight[indices] (ops/embedding.hpp).
//
// With padding_idx (negative counts from the end, stored from the start, as
// PyTorch does), that row is zero at initialisation and never receives a
// gradient, so an optimiser without weight decay leaves it at zero; a value
// loaded or written into it later is used as it is.
//
// Not offered: max_norm, scale_grad_by_freq and sparse (ops/embedding.hpp
// says why).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "momnet/init.hpp"
#include "momnet/ops/embedding.hpp"
#include "momnet/parameter.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

struct EmbeddingOptions {
  std::optional<std::int64_t> padding_idx;  // a row without gradient, zero at initialisation
};

template <class T>
class Embedding {
 public:
  using Scalar = T;

  Embedding(Eigen::Index num_embeddings, Eigen::Index embedding_dim, Rng& rng, EmbeddingOptions options = {})
      : weight_(checked_shape(num_embeddings, embedding_dim), "weight"),
        padding_(detail::embedding_padding("momnet::Embedding", options.padding_idx, num_embeddings)) {
    init::normal(weight_, 0.0, 1.0, rng);
    if (padding_ >= 0) weight_.value().row(static_cast<Eigen::Index>(padding_)).setZero();
  }

  // indices of rank 0 to 3 -> indices.shape + [embedding_dim]. An index
  // outside [0, num_embeddings) throws std::out_of_range before anything is
  // recorded.
  Var<T> forward(Tape<T>& tape, const Tensor<std::int64_t>& indices) {
    // Before tape.param: a bad index leaves the tape as it was.
    detail::check_embedding_indices("momnet::Embedding", indices, num_embeddings());
    return embedding(indices, tape.param(weight_), padding_idx());
  }

  // The name of nn.Embedding's state_dict: `weight`.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.parameter("weight", weight_);
  }

  Eigen::Index num_embeddings() const noexcept { return weight_.shape().dim(0); }
  Eigen::Index embedding_dim() const noexcept { return weight_.shape().dim(1); }
  // In [0, num_embeddings), or none.
  std::optional<std::int64_t> padding_idx() const noexcept {
    return padding_ >= 0 ? std::optional<std::int64_t>(padding_) : std::nullopt;
  }
  Parameter<T>& weight() noexcept { return weight_; }

 private:
  static Shape checked_shape(Eigen::Index num_embeddings, Eigen::Index embedding_dim) {
    if (num_embeddings <= 0 || embedding_dim <= 0) {
      throw std::invalid_argument("momnet::Embedding: num_embeddings and embedding_dim must be positive, got " +
                                  std::to_string(num_embeddings) + " and " + std::to_string(embedding_dim));
    }
    return Shape{num_embeddings, embedding_dim};
  }

  Parameter<T> weight_;
  std::int64_t padding_;  // -1: none
};

}  // namespace momnet
