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

#include <algorithm>
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
// The checks of an optimiser's load_state(): `steps` >= 0, and state[which][i]
// given for every state name and parameter when the state exists, nothing
// when it does not. Throws std::invalid_argument before anything changes.
template <class T>
void check_loaded_state(const char* name, long steps, bool exists, std::size_t names, std::size_t parameters,
                        const std::vector<std::vector<const T*>>& state) {
  const std::string who = std::string(name) + "::load_state";
  if (steps < 0) throw std::invalid_argument(who + ": steps must be >= 0, got " + std::to_string(steps));
  const std::size_t expected = exists ? names : 0;
  if (state.size() != expected) {
    throw std::invalid_argument(who + ": expected " + std::to_string(expected) + " state tensor list(s) at step " +
                                std::to_string(steps) + ", got " + std::to_string(state.size()));
  }
  for (std::size_t which = 0; which < state.size(); ++which) {
    if (state[which].size() != parameters) {
      throw std::invalid_argument(who + ": state list " + std::to_string(which) + " has " +
                                  std::to_string(state[which].size()) + " tensors for " + std::to_string(parameters) +
                                  " parameters");
    }
    for (std::size_t i = 0; i < parameters; ++i) {
      if (state[which][i] == nullptr) {
        throw std::invalid_argument(who + ": state list " + std::to_string(which) + " has a null tensor for parameter " +
                                    std::to_string(i));
      }
    }
  }
}
inline void check_state_index(const char* name, std::size_t which, std::size_t names, std::size_t i,
                              std::size_t parameters) {
  if (which >= names || i >= parameters) {
    throw std::out_of_range(std::string(name) + "::state: state " + std::to_string(which) + " of parameter " +
                            std::to_string(i) + " requested; there are " + std::to_string(names) + " state name(s) and " +
                            std::to_string(parameters) + " parameter(s)");
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

  // State access for checkpoints (io/checkpoint.hpp), in PyTorch's terms: the
  // per-parameter state tensors are named state_names(), "momentum_buffer"
  // when momentum != 0. Like PyTorch, which creates a buffer at a parameter's
  // first step, they exist only once steps() > 0: the first step copies the
  // gradient into the buffer instead of decaying it.
  const std::vector<Parameter<T>*>& parameters() const noexcept { return parameters_; }
  // The number of step() calls so far.
  long steps() const noexcept { return steps_; }
  std::vector<const char*> state_names() const {
    return options_.momentum != 0.0 ? std::vector<const char*>{"momentum_buffer"} : std::vector<const char*>{};
  }
  bool has_state() const noexcept { return steps_ > 0 && options_.momentum != 0.0; }
  // State tensor `which` (an index into state_names()) of parameters()[i]:
  // its size() values, or null while the state does not exist.
  const T* state(std::size_t which, std::size_t i) const {
    detail::check_state_index("momnet::SGD", which, state_names().size(), i, parameters_.size());
    return has_state() ? buffers_[i].data() : nullptr;
  }
  // Restores a saved state: steps() = steps and state[which][i] copied in
  // (every tensor state() would return, none when it would return null).
  // std::invalid_argument, changing nothing, for any other list.
  void load_state(long steps, const std::vector<std::vector<const T*>>& state) {
    detail::check_loaded_state("momnet::SGD", steps, steps > 0 && options_.momentum != 0.0, state_names().size(),
                               parameters_.size(), state);
    for (std::size_t which = 0; which < state.size(); ++which) {
      for (std::size_t i = 0; i < parameters_.size(); ++i) {
        std::copy(state[which][i], state[which][i] + parameters_[i]->size(), buffers_[i].data());
      }
    }
    steps_ = steps;
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
