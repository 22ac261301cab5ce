// A trainable parameter: a value and the gradient that backward passes
// accumulate into (until zero_grad()). Modules own their parameters and name
// them through visit_state (module.hpp); parameters_of() and
// named_parameters() collect them for optimisers, checkpoints and users.
//
// The tape refers to a parameter by address while it records, so a model must
// not be moved or copied between a forward pass and its backward pass.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "momnet/memory.hpp"
#include "momnet/shape.hpp"
#include "momnet/views.hpp"

namespace momnet {

template <class T>
class Parameter {
 public:
  using Scalar = T;

  Parameter() = default;
  explicit Parameter(const Shape& shape, std::string name = {}, MemoryCounter* counter = nullptr)
      : shape_(shape),
        name_(std::move(name)),
        value_(static_cast<std::size_t>(shape.size()), counter),
        grad_(static_cast<std::size_t>(shape.size()), counter) {
    array().setZero();
    zero_grad();
  }

  const Shape& shape() const noexcept { return shape_; }
  const std::string& name() const noexcept { return name_; }
  Eigen::Index size() const noexcept { return shape_.size(); }

  MatrixView<T> value() noexcept { return matrix_view(value_.data(), shape_); }
  ConstMatrixView<T> value() const noexcept { return matrix_view(value_.data(), shape_); }
  MatrixView<T> grad() noexcept { return matrix_view(grad_.data(), shape_); }
  ConstMatrixView<T> grad() const noexcept { return matrix_view(grad_.data(), shape_); }
  ArrayView<T> array() noexcept { return array_view(value_.data(), size()); }
  ConstArrayView<T> array() const noexcept { return array_view(value_.data(), size()); }
  ArrayView<T> grad_array() noexcept { return array_view(grad_.data(), size()); }
  ConstArrayView<T> grad_array() const noexcept { return array_view(grad_.data(), size()); }

  T* value_data() noexcept { return value_.data(); }
  const T* value_data() const noexcept { return value_.data(); }
  T* grad_data() noexcept { return grad_.data(); }

  void zero_grad() noexcept { grad_array().setZero(); }

  // The version counts in-place changes made through momnet (optimiser steps,
  // loading); a tape refuses a backward pass through a parameter whose version
  // moved since it was recorded. Call mark_modified() after changing value()
  // yourself between a forward and a backward pass if you want the check.
  std::uint64_t version() const noexcept { return version_; }
  const std::uint64_t* version_source() const noexcept { return &version_; }
  void mark_modified() noexcept { ++version_; }
  std::size_t bytes() const noexcept { return value_.bytes() + grad_.bytes(); }

 private:
  Shape shape_{0};  // a default parameter is empty
  std::string name_;
  Buffer<T> value_;
  Buffer<T> grad_;
  std::uint64_t version_ = 0;
};

}  // namespace momnet
