// A trainable parameter: a value and the gradient that backward passes
// accumulate into (until zero_grad()). Modules own their parameters and name
// them through visit_state (module.hpp); parameters_of() and
// named_parameters() collect them for optimisers, checkpoints and users.
//
// The tape refers to a parameter's buffers while it records. Moving a
// parameter keeps them (and the tape's view of it); destroying it, assigning
// over it or changing it through an optimiser between a forward pass and its
// backward pass makes that backward pass throw (ParameterStatus).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "momnet/memory.hpp"
#include "momnet/shape.hpp"
#include "momnet/views.hpp"

namespace momnet {

// What a tape keeps of a parameter it recorded: the parameter's version and
// whether it still exists, shared with the parameter, so that a backward pass
// can refuse one modified or destroyed since the forward pass instead of
// reading freed memory.
struct ParameterStatus {
  std::uint64_t version = 0;
  bool alive = true;
};

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
  // A copy is a new parameter (new buffers, version 0).
  Parameter(const Parameter& other)
      : shape_(other.shape_), name_(other.name_), value_(other.value_), grad_(other.grad_) {}
  // A move carries the buffers, and with them the status tapes hold.
  Parameter(Parameter&& other) noexcept
      : shape_(other.shape_), name_(std::move(other.name_)), value_(std::move(other.value_)),
        grad_(std::move(other.grad_)), status_(std::move(other.status_)) {}
  // The buffers this parameter held are released: tapes that recorded it see
  // it as destroyed.
  Parameter& operator=(Parameter other) noexcept {
    retire();
    std::swap(shape_, other.shape_);
    std::swap(name_, other.name_);
    value_.swap(other.value_);
    grad_.swap(other.grad_);
    std::swap(status_, other.status_);
    return *this;
  }
  ~Parameter() { retire(); }

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
  std::uint64_t version() const noexcept { return status_ ? status_->version : 0; }
  void mark_modified() noexcept {
    if (status_) ++status_->version;
  }
  // The shared status a tape keeps (null only in a moved-from parameter).
  std::shared_ptr<const ParameterStatus> status() const noexcept { return status_; }
  std::size_t bytes() const noexcept { return value_.bytes() + grad_.bytes(); }

 private:
  Shape shape_{0};  // a default parameter is empty
  std::string name_;
  Buffer<T> value_;
  Buffer<T> grad_;
  std::shared_ptr<ParameterStatus> status_ = std::make_shared<ParameterStatus>();

  void retire() noexcept {
    if (status_) status_->alive = false;
  }
};

}  // namespace momnet
