// An activation function as a parameterless layer (ActivationKind and
// activate() are in ops/activation.hpp).
#pragma once

#include "momnet/ops/activation.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class Activation {
 public:
  using Scalar = T;
  explicit Activation(ActivationKind kind) noexcept : kind_(kind) {}
  Var<T> forward(Tape<T>&, const Var<T>& x) { return activate(x, kind_); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
  ActivationKind kind() const noexcept { return kind_; }

 private:
  ActivationKind kind_;
};

}  // namespace momnet
