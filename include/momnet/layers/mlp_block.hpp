// Linear -> activation -> Linear: the residual function of the reference
// Momentum ResNet experiments, mapping [..., dim] to [..., dim] (the
// position-wise feed-forward of a Transformer on [batch, tokens, dim]).
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/layers/activation.hpp"
#include "momnet/layers/linear.hpp"
#include "momnet/ops/linear_activation.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class MLPBlock {
 public:
  using Scalar = T;

  MLPBlock(Eigen::Index dim, Eigen::Index hidden, Rng& rng,
           ActivationKind activation = ActivationKind::tanh)
      : first_(dim, hidden, rng, true, "fc1"), second_(hidden, dim, rng, true, "fc2"),
        activation_(activation) {}

  // x is [..., dim] of any rank from 1: [batch, dim], [batch, tokens, dim].
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    const Shape shape = x.shape();
    if (shape.rank() < 1 || shape.dim(-1) != dim()) {
      throw std::invalid_argument("momnet::MLPBlock: expects [..., " + std::to_string(dim()) + "], got " +
                                  shape.to_string());
    }
    // One node for fc1 and the activation: it stores the activated values
    // only (see ops/linear_activation.hpp).
    const Var<T> hidden = linear_activation(x, tape.param(first_.weight()), tape.param(first_.bias()), activation_);
    return second_.forward(tape, hidden);
  }

  // `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias`.
  template <class Visitor>
  void visit_state(Visitor& visit) {
    visit.child("fc1", first_);
    visit.child("fc2", second_);
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    first_.visit_parameters(visit);
    second_.visit_parameters(visit);
  }

  Eigen::Index dim() const noexcept { return first_.in_features(); }
  Eigen::Index hidden() const noexcept { return first_.out_features(); }
  ActivationKind activation() const noexcept { return activation_; }
  Linear<T>& first() noexcept { return first_; }
  Linear<T>& second() noexcept { return second_; }

 private:
  Linear<T> first_;
  Linear<T> second_;
  ActivationKind activation_;
};

}  // namespace momnet
