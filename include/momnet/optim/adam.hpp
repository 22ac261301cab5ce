// Adam (Kingma and Ba, 2015) and AdamW (Loshchilov and Hutter, 2019), with
// PyTorch's semantics (torch.optim.Adam / AdamW), step t = 1, 2, ...:
//   Adam:  g = grad + weight_decay * p          (L2 penalty in the gradient)
//   AdamW: p = p * (1 - lr * weight_decay)       (decoupled decay), g = grad
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
#pragma once

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/memory.hpp"
#include "momnet/optim/sgd.hpp"
#include "momnet/parameter.hpp"

namespace momnet {

struct AdamOptions {
  double learning_rate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // true: AdamW
};

template <class T>
class Adam {
 public:
  Adam(std::vector<Parameter<T>*> parameters, AdamOptions options)
      : parameters_(std::move(parameters)), options_(options) {
    const char* name = options.decoupled_weight_decay ? "momnet::AdamW" : "momnet::Adam";
    detail::check_parameters(name, parameters_);
    detail::check_non_negative(name, "learning_rate", options.learning_rate);
    detail::check_non_negative(name, "epsilon", options.epsilon);
    detail::check_non_negative(name, "weight_decay", options.weight_decay);
    for (double beta : {options.beta1, options.beta2}) {
      if (!(beta >= 0.0 && beta < 1.0)) {
        throw std::invalid_argument(std::string(name) + ": betas must lie in [0, 1), got " +
                                    std::to_string(beta));
      }
    }
    for (Parameter<T>* p : parameters_) {
      first_.emplace_back(static_cast<std::size_t>(p->size()));
      second_.emplace_back(static_cast<std::size_t>(p->size()));
      array_view(first_.back().data(), p->size()).setZero();
      array_view(second_.back().data(), p->size()).setZero();
    }
  }

  void step() {
    ++steps_;
    const double t = static_cast<double>(steps_);
    const T lr = static_cast<T>(options_.learning_rate);
    const T b1 = static_cast<T>(options_.beta1), b2 = static_cast<T>(options_.beta2);
    // 1 - beta in double: in float, 1 - 0.999f cancels to 0.00099998713 (an
    // error of 1.3e-5, against the double bias correction below).
    const T one_minus_b1 = static_cast<T>(1.0 - options_.beta1);
    const T one_minus_b2 = static_cast<T>(1.0 - options_.beta2);
    const T correction1 = static_cast<T>(1.0 - std::pow(options_.beta1, t));
    const T correction2 = static_cast<T>(1.0 - std::pow(options_.beta2, t));
    const T eps = static_cast<T>(options_.epsilon);
    const T wd = static_cast<T>(options_.weight_decay);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      Parameter<T>& p = *parameters_[i];
      auto value = p.array();
      auto m = array_view(first_[i].data(), p.size());
      auto v = array_view(second_[i].data(), p.size());
      if (options_.decoupled_weight_decay) {
        value *= T(1) - lr * wd;
        m = b1 * m + one_minus_b1 * p.grad_array();
        v = b2 * v + one_minus_b2 * p.grad_array().square();
      } else {
        const auto g = (p.grad_array() + wd * value).eval();
        m = b1 * m + one_minus_b1 * g;
        v = b2 * v + one_minus_b2 * g.square();
      }
      value -= lr * (m / correction1) / ((v / correction2).sqrt() + eps);
      p.mark_modified();
    }
  }

  void zero_grad() {
    for (Parameter<T>* p : parameters_) p->zero_grad();
  }

  // State access for checkpoints (io/checkpoint.hpp), in PyTorch's terms: the
  // per-parameter state tensors are named state_names(), the first and second
  // moments "exp_avg" and "exp_avg_sq". Like PyTorch, which creates them at a
  // parameter's first step, they exist only once steps() > 0 (zeros before).
  const std::vector<Parameter<T>*>& parameters() const noexcept { return parameters_; }
  std::vector<const char*> state_names() const { return {"exp_avg", "exp_avg_sq"}; }
  bool has_state() const noexcept { return steps_ > 0; }
  // State tensor `which` (an index into state_names()) of parameters()[i]:
  // its size() values, or null while the state does not exist.
  const T* state(std::size_t which, std::size_t i) const {
    detail::check_state_index(name(), which, 2, i, parameters_.size());
    if (!has_state()) return nullptr;
    return which == 0 ? first_[i].data() : second_[i].data();
  }
  // Restores a saved state: steps() = steps (the bias correction's t) and
  // state[which][i] copied in (every tensor state() would return; none at
  // step 0, which zeroes the moments). std::invalid_argument, changing
  // nothing, for any other list.
  void load_state(long steps, const std::vector<std::vector<const T*>>& state) {
    detail::check_loaded_state(name(), steps, steps > 0, 2, parameters_.size(), state);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Eigen::Index n = parameters_[i]->size();
      if (state.empty()) {
        array_view(first_[i].data(), n).setZero();
        array_view(second_[i].data(), n).setZero();
      } else {
        std::copy(state[0][i], state[0][i] + n, first_[i].data());
        std::copy(state[1][i], state[1][i] + n, second_[i].data());
      }
    }
    steps_ = steps;
  }

  const AdamOptions& options() const noexcept { return options_; }
  long steps() const noexcept { return steps_; }
  double learning_rate() const noexcept { return options_.learning_rate; }
  // The next step() uses the new rate; the moments and the step count (hence
  // the bias correction) carry on, as when PyTorch changes a group's lr.
  void set_learning_rate(double learning_rate) {
    detail::check_non_negative(options_.decoupled_weight_decay ? "momnet::AdamW" : "momnet::Adam",
                               "learning_rate", learning_rate);
    options_.learning_rate = learning_rate;
  }

 private:
  const char* name() const noexcept { return options_.decoupled_weight_decay ? "momnet::AdamW" : "momnet::Adam"; }

  std::vector<Parameter<T>*> parameters_;
  AdamOptions options_;
  std::vector<Buffer<T>> first_;
  std::vector<Buffer<T>> second_;
  long steps_ = 0;
};

// AdamW: Adam with decoupled weight decay (PyTorch's default decay 1e-2).
template <class T>
class AdamW : public Adam<T> {
 public:
  AdamW(std::vector<Parameter<T>*> parameters, AdamOptions options = with_decay())
      : Adam<T>(std::move(parameters), decoupled(options)) {}

  static AdamOptions with_decay() {
    AdamOptions options;
    options.weight_decay = 1e-2;
    return options;
  }

 private:
  static AdamOptions decoupled(AdamOptions options) {
    options.decoupled_weight_decay = true;
    return options;
  }
};

}  // namespace momnet
