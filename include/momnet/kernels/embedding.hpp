// Embedding lookup as plain kernels: no tape, raw pointers. The table is
// [num_embeddings, dim], row-major; `indices` holds n row numbers, already
// checked to lie in [0, num_embeddings).
//
// Backward kernels ADD into their gradients.
#pragma once

#include <algorithm>
#include <cstdint>

#include <Eigen/Core>

namespace momnet::kernels {

// out[i, :] = weight[indices[i], :] for i < n.
template <class T>
void embedding_forward(const std::int64_t* indices, Eigen::Index n, const T* weight, Eigen::Index dim, T* out) {
  for (Eigen::Index i = 0; i < n; ++i) {
    const T* row = weight + static_cast<Eigen::Index>(indices[i]) * dim;
    std::copy(row, row + dim, out + i * dim);
  }
}

// gweight[indices[i], :] += g[i, :] for i < n, in increasing i (a repeated
// index sums its rows in that fixed order: the same bits on every call).
// Only the rows used are touched. Occurrences of `skip` (the padding row; -1
// for none) add nothing: that row receives no gradient, as in PyTorch.
template <class T>
void embedding_backward(const T* g, const std::int64_t* indices, Eigen::Index n, Eigen::Index dim, T* gweight,
                        std::int64_t skip) {
  for (Eigen::Index i = 0; i < n; ++i) {
    if (indices[i] == skip) continue;
    T* row = gweight + static_cast<Eigen::Index>(indices[i]) * dim;
    const T* gi = g + i * dim;
    for (Eigen::Index j = 0; j < dim; ++j) row[j] += gi[j];
  }
}

}  // namespace momnet::kernels
