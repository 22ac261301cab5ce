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

}  // namespace momnet
