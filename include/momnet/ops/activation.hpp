// Activation functions as a run-time choice: ActivationKind and activate().
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/ops/unary.hpp"
#include "momnet/tape.hpp"

namespace momnet {

enum class ActivationKind { identity, tanh, relu, sigmoid, gelu, softplus };

inline const char* to_string(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::identity: return "identity";
    case ActivationKind::tanh: return "tanh";
    case ActivationKind::relu: return "relu";
    case ActivationKind::sigmoid: return "sigmoid";
    case ActivationKind::gelu: return "gelu";
    case ActivationKind::softplus: return "softplus";
  }
  return "unknown";
}

template <class T>
Var<T> activate(const Var<T>& x, ActivationKind kind) {
  switch (kind) {
    case ActivationKind::identity: return x;
    case ActivationKind::tanh: return tanh(x);
    case ActivationKind::relu: return relu(x);
    case ActivationKind::sigmoid: return sigmoid(x);
    case ActivationKind::gelu: return gelu(x);
    case ActivationKind::softplus: return softplus(x);
  }
  throw std::invalid_argument("momnet::activate: unknown activation kind " + std::to_string(static_cast<int>(kind)));
}

}  // namespace momnet
