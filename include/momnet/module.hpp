// Modules: anything that owns parameters, buffers or other modules (a layer,
// a block, a stack, a Sequential). A module names its state for the visitor
//
//   template <class Visitor> void visit_state(Visitor& visit) {
//     visit.parameter("weight", weight_);          // a Parameter<Scalar>
//     visit.buffer("running_mean", running_mean_); // a Tensor<Scalar> or Tensor<std::int64_t>
//     visit.child("fc1", fc1_);                    // a member module: "fc1.weight", ...
//   }
//
// and from that one function come its hierarchical names in PyTorch's
// state_dict style (`blocks.3.fc1.weight`, `bn1.running_mean`), its parameter
// list for optimisers, and train/eval mode reaching every member. A module
// with its own mode (dropout, batch norm) also has `void set_training(bool)`.
//
// Blocks written for the older concept, with only visit_parameters(f), still
// work: their parameters are named by Parameter::name(), or `param<i>`.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "momnet/parameter.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

// A buffer: non-trainable state, real (running statistics) or integer
// (num_batches_tracked). Exactly one pointer is set.
template <class T>
struct BufferRef {
  Tensor<T>* real = nullptr;
  Tensor<std::int64_t>* integer = nullptr;
  const Shape& shape() const { return real != nullptr ? real->shape() : integer->shape(); }
};

template <class T>
class StateVisitor;

namespace detail {

template <class M, class T, class = void>
struct has_visit_state : std::false_type {};
template <class M, class T>
struct has_visit_state<M, T, std::void_t<decltype(std::declval<M&>().visit_state(std::declval<StateVisitor<T>&>()))>>
    : std::true_type {};

// A module with a step count of its own (a stack, a Sequential, a dropout
// layer): the count keys its random draws, so a resumed run must restore it.
template <class M, class = void>
struct has_step_counter : std::false_type {};
template <class M>
struct has_step_counter<M, std::void_t<decltype(std::declval<M&>().set_step(std::declval<const M&>().step()))>>
    : std::true_type {};

template <class M, class = void>
struct has_set_training : std::false_type {};
template <class M>
struct has_set_training<M, std::void_t<decltype(std::declval<M&>().set_training(true))>> : std::true_type {};

}  // namespace detail

// Walks a module tree, calling back with the full name of each parameter and
// buffer; optionally sets train/eval mode on every module it enters.
template <class T>
class StateVisitor {
 public:
  using ParameterFunction = std::function<void(const std::string&, Parameter<T>&)>;
  using BufferFunction = std::function<void(const std::string&, BufferRef<T>)>;

  StateVisitor(ParameterFunction on_parameter, BufferFunction on_buffer)
      : on_parameter_(std::move(on_parameter)), on_buffer_(std::move(on_buffer)) {}

  // Called with the path ("" for the root, "encoder.layers", ...) and a
  // getter and setter of each step count the walk meets (see has_step_counter).
  using CounterFunction = std::function<void(const std::string&, std::function<std::uint64_t()>,
                                             std::function<void(std::uint64_t)>)>;

  // Also sets every module's mode as the walk enters it.
  void set_training_on_visit(bool training) noexcept {
    set_mode_ = true;
    training_ = training;
  }
  // Also reports every module's step count.
  void set_counter_function(CounterFunction on_counter) { on_counter_ = std::move(on_counter); }

  void parameter(const std::string& name, Parameter<T>& p) {
    if (on_parameter_) on_parameter_(prefix_ + name, p);
  }
  void buffer(const std::string& name, Tensor<T>& b) {
    if (on_buffer_) on_buffer_(prefix_ + name, BufferRef<T>{&b, nullptr});
  }
  void buffer(const std::string& name, Tensor<std::int64_t>& b) {
    if (on_buffer_) on_buffer_(prefix_ + name, BufferRef<T>{nullptr, &b});
  }

  // Visits `module` under `name`; an empty name adds no level (the member's
  // names appear directly in this module's).
  template <class Module>
  void child(const std::string& name, Module& module) {
    const std::size_t saved = prefix_.size();
    if (!name.empty()) prefix_ += name + ".";
    try {
      enter(module);
    } catch (...) {
      prefix_.resize(saved);
      throw;
    }
    prefix_.resize(saved);
  }

  // Visits `module` itself (the root of a walk).
  template <class Module>
  void enter(Module& module) {
    if constexpr (detail::has_set_training<Module>::value) {
      if (set_mode_) module.set_training(training_);
    }
    if constexpr (detail::has_step_counter<Module>::value) {
      if (on_counter_) {
        const std::string path = prefix_.empty() ? prefix_ : prefix_.substr(0, prefix_.size() - 1);
        on_counter_(path, [&module] { return static_cast<std::uint64_t>(module.step()); },
                    [&module](std::uint64_t step) { module.set_step(step); });
      }
    }
    if constexpr (detail::has_visit_state<Module, T>::value) {
      module.visit_state(*this);
    } else {
      // The older concept: visit_parameters(f) with Parameter::name().
      std::size_t index = 0;
      module.visit_parameters([this, &index](Parameter<T>& p) {
        parameter(p.name().empty() ? "param" + std::to_string(index) : p.name(), p);
        ++index;
      });
    }
  }

 private:
  ParameterFunction on_parameter_;
  BufferFunction on_buffer_;
  CounterFunction on_counter_;
  std::string prefix_;
  bool set_mode_ = false;
  bool training_ = true;
};

// Calls f(Parameter&) for every parameter of `model`, in visiting order.
template <class Model, class Function>
void for_each_parameter(Model& model, Function&& f) {
  using T = typename Model::Scalar;
  StateVisitor<T> visitor([&f](const std::string&, Parameter<T>& p) { f(p); }, nullptr);
  visitor.enter(model);
}

// (name, parameter) for every parameter of `model`, in visiting order, named
// as PyTorch's state_dict would (`0.fc1.weight`).
template <class Model>
auto named_parameters(Model& model) {
  using T = typename Model::Scalar;
  std::vector<std::pair<std::string, Parameter<T>*>> list;
  StateVisitor<T> visitor([&list](const std::string& name, Parameter<T>& p) { list.emplace_back(name, &p); },
                          nullptr);
  visitor.enter(model);
  return list;
}

// (name, buffer) for every buffer of `model` (running statistics and the like).
template <class Model>
auto named_buffers(Model& model) {
  using T = typename Model::Scalar;
  std::vector<std::pair<std::string, BufferRef<T>>> list;
  StateVisitor<T> visitor(nullptr, [&list](const std::string& name, BufferRef<T> b) { list.emplace_back(name, b); });
  visitor.enter(model);
  return list;
}

// Every parameter of `model`, each once (a weight-tied block is visited once).
template <class Model>
auto parameters_of(Model& model) {
  using T = typename Model::Scalar;
  std::vector<Parameter<T>*> list;
  for_each_parameter(model, [&list](Parameter<T>& p) { list.push_back(&p); });
  return list;
}

template <class Model>
void zero_grad(Model& model) {
  for_each_parameter(model, [](auto& p) { p.zero_grad(); });
}

// Number of scalar parameters in `model`.
template <class Model>
Eigen::Index parameter_count(Model& model) {
  Eigen::Index n = 0;
  for_each_parameter(model, [&n](auto& p) { n += p.size(); });
  return n;
}

// Train or eval mode for `model` and every module inside it (PyTorch's
// model.train() and model.eval()).
template <class Model>
void set_training(Model& model, bool training) {
  using T = typename Model::Scalar;
  StateVisitor<T> visitor(nullptr, nullptr);
  visitor.set_training_on_visit(training);
  visitor.enter(model);
}
template <class Model>
void train(Model& model) {
  set_training(model, true);
}
template <class Model>
void eval(Model& model) {
  set_training(model, false);
}

}  // namespace momnet
