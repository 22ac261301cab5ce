// Eigen views over momnet's contiguous, row-major, 64-byte aligned storage.
// Values are read as a matrix (rows = first dimension, columns = the rest) or
// as a flat array. The aligned flag lets Eigen skip its unaligned-head peeling,
// so the same computation takes the same (SIMD) path every time.
#pragma once

#include <Eigen/Core>

#include "momnet/shape.hpp"

namespace momnet {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixView = Eigen::Map<RowMatrix<T>, Eigen::Aligned64>;
template <class T>
using ConstMatrixView = Eigen::Map<const RowMatrix<T>, Eigen::Aligned64>;
template <class T>
using ArrayView = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;
template <class T>
using ConstArrayView = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;

template <class T>
MatrixView<T> matrix_view(T* data, const Shape& shape) {
  return MatrixView<T>(data, shape.rows(), shape.cols());
}
template <class T>
ConstMatrixView<T> matrix_view(const T* data, const Shape& shape) {
  return ConstMatrixView<T>(data, shape.rows(), shape.cols());
}
template <class T>
ArrayView<T> array_view(T* data, Eigen::Index size) {
  return ArrayView<T>(data, size);
}
template <class T>
ConstArrayView<T> array_view(const T* data, Eigen::Index size) {
  return ConstArrayView<T>(data, size);
}

// Copies any Eigen expression into row-major storage, element by element:
// a plain loop, because GCC 12 flags Eigen's vectorised copy of a tiny source
// (three floats, say) as reading out of bounds, in users' builds too.
template <class T, class Derived>
void copy_row_major(const Eigen::DenseBase<Derived>& values, T* out) {
  const Eigen::Index rows = values.rows(), cols = values.cols();
  for (Eigen::Index r = 0; r < rows; ++r) {
    for (Eigen::Index c = 0; c < cols; ++c) out[r * cols + c] = static_cast<T>(values(r, c));
  }
}

}  // namespace momnet
