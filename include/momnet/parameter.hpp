// A trainable parameter: a value and the gradient that backward passes
// accumulate into (until zero_grad()). Blocks own their parameters and expose
// them through visit_parameters(visitor), which calls visitor(Parameter&) for
// each; parameters_of() collects them for optimisers and the gradient checker.
//
// The tape refers to a parameter by address while it records, so a model must
// not be moved or copied between a forward pass and its backward pass.
#pragma once

#include <string>
#include <utility>
#include <vector>

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
  std::size_t bytes() const noexcept { return value_.bytes() + grad_.bytes(); }

 private:
  Shape shape_{0};  // a default parameter is empty
  std::string name_;
  Buffer<T> value_;
  Buffer<T> grad_;
};

// Every parameter of `model` (anything with visit_parameters), in visiting order.
template <class Model>
auto parameters_of(Model& model) {
  using T = typename Model::Scalar;
  std::vector<Parameter<T>*> list;
  model.visit_parameters([&list](Parameter<T>& p) { list.push_back(&p); });
  return list;
}

template <class Model>
void zero_grad(Model& model) {
  model.visit_parameters([](auto& p) { p.zero_grad(); });
}

// Number of scalar parameters in `model`.
template <class Model>
Eigen::Index parameter_count(Model& model) {
  Eigen::Index n = 0;
  model.visit_parameters([&n](auto& p) { n += p.size(); });
  return n;
}

}  // namespace momnet
