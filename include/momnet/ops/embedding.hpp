// Embedding lookup, as torch.nn.functional.embedding(indices, weight,
// padding_idx): out[i..., :] = weight[indices[i...], :], of shape
// indices.shape + [embedding_dim]. The reverse rule adds each output row's
// gradient into the weight row it was read from (scatter-add, in index
// order), touching only the rows used; the padding row, when given, receives
// none. Indices are integers and get no gradient.
//
// Not offered (PyTorch's other arguments): max_norm (renormalising rows in
// place during the forward pass would change a parameter inside a pass the
// exact backward replays), scale_grad_by_freq and sparse gradients.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/kernels/embedding.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {
namespace detail {

// padding_idx in [0, num_embeddings): a negative one counts from the end, as
// PyTorch's; -1 for none. Throws naming `operation` when outside
// [-num_embeddings, num_embeddings).
inline std::int64_t embedding_padding(const char* operation, std::optional<std::int64_t> padding_idx,
                                      Eigen::Index num_embeddings) {
  if (!padding_idx) return -1;
  const std::int64_t p = *padding_idx;
  const std::int64_t n = static_cast<std::int64_t>(num_embeddings);
  if (p < -n || p >= n) {
    throw std::invalid_argument(std::string(operation) + ": padding_idx " + std::to_string(p) + " must lie in [" +
                                std::to_string(-n) + ", " + std::to_string(n) + ") for num_embeddings " +
                                std::to_string(n));
  }
  return p < 0 ? p + n : p;
}

// "[i, j, k]": the multi-index of flat position `flat` in `shape`.
inline std::string position_in(const Shape& shape, Eigen::Index flat) {
  std::vector<Eigen::Index> index(static_cast<std::size_t>(shape.rank()));
  for (int k = shape.rank(); k-- > 0;) {
    index[static_cast<std::size_t>(k)] = flat % shape.dim(k);
    flat /= shape.dim(k);
  }
  return Shape(index).to_string();
}

// Throws naming `operation`: std::invalid_argument for indices of rank 4
// (the output adds an axis, and values have at most 4); std::out_of_range for
// the first index outside [0, num_embeddings), with its position in
// `indices` and num_embeddings.
inline void check_embedding_indices(const char* operation, const Tensor<std::int64_t>& indices,
                                    Eigen::Index num_embeddings) {
  if (indices.shape().rank() > Shape::max_rank - 1) {
    throw_shape(operation, indices.shape(), "indices of rank 0 to 3 expected (the output adds an axis)");
  }
  const std::int64_t* index = indices.data();
  for (Eigen::Index i = 0; i < indices.size(); ++i) {
    if (index[i] < 0 || index[i] >= static_cast<std::int64_t>(num_embeddings)) {
      throw std::out_of_range(std::string(operation) + ": index " + std::to_string(index[i]) + " at position " +
                              position_in(indices.shape(), i) + " is out of range for num_embeddings " +
                              std::to_string(num_embeddings) + " (valid: 0 to " +
                              std::to_string(num_embeddings - 1) + ")");
    }
  }
}

}  // namespace detail

// F.embedding(indices, weight, padding_idx). weight is [num_embeddings,
// embedding_dim] (a parameter through tape.param(), or any Var); indices has
// rank 0 to 3 (the output adds one axis; values have at most 4). padding_idx
// may be negative (counted from the end); that row gets no gradient.
//
// Throws, before recording anything: std::out_of_range for an index outside
// [0, num_embeddings) (negative indices included), naming the index, its
// position in `indices` and num_embeddings; std::invalid_argument naming
// momnet::embedding for a weight not of rank 2, indices of rank 4, or a
// padding_idx outside [-num_embeddings, num_embeddings).
template <class T>
Var<T> embedding(const Tensor<std::int64_t>& indices, const Var<T>& weight,
                 std::optional<std::int64_t> padding_idx = std::nullopt) {
  const char* operation = "momnet::embedding";
  Tape<T>& tape = detail::common_tape(operation, weight);
  const Shape table = weight.shape();
  if (table.rank() != 2) {
    detail::throw_shape(operation, table, "the weight must be [num_embeddings, embedding_dim]");
  }
  const Shape where = indices.shape();
  const Eigen::Index num = table.dim(0), dim = table.dim(1), n = where.size();
  const std::int64_t skip = detail::embedding_padding(operation, padding_idx, num);
  detail::check_embedding_indices(operation, indices, num);
  const std::int64_t* index = indices.data();
  std::vector<Eigen::Index> dims = where.dims();
  dims.push_back(dim);
  const Shape shape(dims);

  T* out = tape.allocate(shape.size());
  kernels::embedding_forward(index, n, weight.data(), dim, out);
  // The rule reads the indices after the caller's tensor may have changed:
  // keep a copy on the tape, only when a gradient will be taken.
  std::int64_t* kept = nullptr;
  if (tape.grad_enabled() && weight.requires_grad()) {
    kept = tape.template allocate_as<std::int64_t>(n);
    std::copy(index, index + n, kept);
  }
  return tape.record_op({weight}, shape, out, [=](Gradients<T>& g) {
    if (T* gw = g.input(0)) kernels::embedding_backward(g.output(0), kept, n, dim, gw, skip);
  });
}

}  // namespace momnet
