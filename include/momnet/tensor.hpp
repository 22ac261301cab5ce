// An owning value with a shape: inputs and targets outside any tape.
#pragma once

#include <stdexcept>

#include "momnet/memory.hpp"
#include "momnet/shape.hpp"
#include "momnet/views.hpp"

namespace momnet {

template <class T>
class Tensor {
 public:
  using Scalar = T;

  Tensor() = default;
  // Zeros of `shape`.
  explicit Tensor(const Shape& shape, MemoryCounter* counter = nullptr)
      : shape_(shape), data_(static_cast<std::size_t>(shape.size()), counter) {
    array().setZero();
  }
  // A copy of a matrix, as [rows, cols].
  template <class Derived>
  explicit Tensor(const Eigen::DenseBase<Derived>& values)
      : Tensor(Shape{values.rows(), values.cols()}) {
    copy_row_major(values, data());
  }

  const Shape& shape() const noexcept { return shape_; }
  Eigen::Index size() const noexcept { return shape_.size(); }
  T* data() noexcept { return data_.data(); }
  const T* data() const noexcept { return data_.data(); }
  MatrixView<T> matrix() noexcept { return matrix_view(data(), shape_); }
  ConstMatrixView<T> matrix() const noexcept { return matrix_view(data(), shape_); }
  ArrayView<T> array() noexcept { return array_view(data(), size()); }
  ConstArrayView<T> array() const noexcept { return array_view(data(), size()); }

  // The same elements under another shape of the same size.
  void reshape(const Shape& shape) {
    if (shape.size() != shape_.size()) {
      throw std::invalid_argument("momnet::Tensor::reshape: sizes differ: " + shape_.to_string() +
                                  " and " + shape.to_string());
    }
    shape_ = shape;
  }

 private:
  Shape shape_;
  Buffer<T> data_;
};

}  // namespace momnet
