// Stochastic gradient descent with PyTorch's semantics (torch.optim.SGD):
//   g = grad + weight_decay * p
//   b = momentum * b + (1 - dampening) * g      (b = g on the first step)
//   g = nesterov ? g + momentum * b : b          (when momentum != 0)
//   p = p - lr * g
//
// Optimisers refuse a parameter listed twice (it would be stepped twice per
// step): std::invalid_argument naming both positions. PyTorch raises for a
// parameter in two groups and warns, "in future, this will cause an error",
// within one group; momnet has one group and raises. parameters_of() lists
// each parameter once. Every step calls mark_modified() on each parameter it
// changes, so a tape recorded before the step refuses a backward through it.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "momnet/memory.hpp"
#include "momnet/parameter.hpp"

namespace momnet {

struct SGDOptions {
  double learning_rate = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

namespace detail {
template <class T>
void check_parameters(const char* name, const std::vector<Parameter<T>*>& parameters) {
  std::unordered_map<const Parameter<T>*, std::size_t> first_position;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    const Parameter<T>* p = parameters[i];
    if (p == nullptr) {
      throw std::invalid_argument(std::string(name) + ": null parameter at position " + std::to_string(i));
    }
    const auto [seen, inserted] = first_position.emplace(p, i);
    if (!inserted) {
      const std::string label = p->name().empty() ? std::string("a parameter") : "parameter '" + p->name() + "'";
      throw std::invalid_argument(std::string(name) + ": " + label + " appears twice, at positions " +
                                  std::to_string(seen->second) + " and " + std::to_string(i) +
                                  "; it would be stepped twice per step (parameters_of() lists each once)");
    }
  }
}
inline void check_non_negative(const char* name, const char* what, double value) {
  if (!(value >= 0.0)) {
    throw std::invalid_argument(std::string(name) + ": " + what + " must be >= 0, got " +
                                std::to_string(value));
  }
}
}  // namespace detail

template <class T>
class SGD {
 public:
  SGD(std::vector<Parameter<T>*> parameters, SGDOptions options)
      : parameters_(std::move(parameters)), options_(options) {
    const char* name = "momnet::SGD";
    detail::check_parameters(name, parameters_);
    detail::check_non_negative(name, "learning_rate", options.learning_rate);
    detail::check_non_negative(name, "momentum", options.momentum);
    detail::check_non_negative(name, "dampening", options.dampening);
    detail::check_non_negative(name, "weight_decay", options.weight_decay);
    if (options.nesterov && (options.momentum <= 0.0 || options.dampening != 0.0)) {
      throw std::invalid_argument("momnet::SGD: Nesterov momentum needs momentum > 0 and dampening 0");
    }
    if (options.momentum != 0.0) {
      for (Parameter<T>* p : parameters_) buffers_.emplace_back(static_cast<std::size_t>(p->size()));
    }
  }

  void step() {
    const T lr = static_cast<T>(options_.learning_rate);
    const T mu = static_cast<T>(options_.momentum);
    const T damp = static_cast<T>(1.0 - options_.dampening);
    const T wd = static_cast<T>(options_.weight_decay);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      Parameter<T>& p = *parameters_[i];
      auto value = p.array();
      auto g = (p.grad_array() + wd * value).eval();
      if (options_.momentum != 0.0) {
        auto b = array_view(buffers_[i].data(), p.size());
        if (steps_ == 0) {
          b = g;
        } else {
          b = mu * b + damp * g;
        }
        if (options_.nesterov) {
          g += mu * b;
        } else {
          g = b;
        }
      }
      value -= lr * g;
      p.mark_modified();
    }
    ++steps_;
  }

  void zero_grad() {
    for (Parameter<T>* p : parameters_) p->zero_grad();
  }

  const SGDOptions& options() const noexcept { return options_; }
  double learning_rate() const noexcept { return options_.learning_rate; }
  // The next step() uses the new rate (what a learning-rate schedule calls).
  void set_learning_rate(double learning_rate) {
    detail::check_non_negative("momnet::SGD", "learning_rate", learning_rate);
    options_.learning_rate = learning_rate;
  }

 private:
  std::vector<Parameter<T>*> parameters_;
  SGDOptions options_;
  std::vector<Buffer<T>> buffers_;
  long steps_ = 0;
};

}  // namespace momnet
