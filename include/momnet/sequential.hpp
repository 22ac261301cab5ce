// Sequential: modules applied one after the other, like torch.nn.Sequential.
// A member can be any module with forward(tape, x) -> Var (a layer, a
// shape-changing block; or forward(tape, x, CallContext) for one that wants
// the mode, the step and its index), a stack called as stack(tape, x)
// (Residual, MomentumResidual), or another Sequential; a stage of a ResNet is
// a Sequential of its downsampling block and a stack.
//
// Members are named `0`, `1`, ... in order, or by the name given to add():
// `stem.weight`, `1.3.fc1.weight`. A member added under the empty name adds
// no level: its own names appear directly; add() refuses a member whose names
// would repeat. Train/eval mode set on the Sequential (momnet::train / eval)
// reaches every member. Used as a block (inside a stack) it passes the
// stack's context to its members; a stack inside it keeps its own step count.
//
// to_momentum(sequential, gamma) converts every Residual inside it, at any
// depth, into a MomentumResidual with copies of the same parameters, and
// copies everything else as it is: a stage's first, shape-changing block is
// kept (the reference package's keep_first_layer).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "momnet/block.hpp"
#include "momnet/call_context.hpp"
#include "momnet/module.hpp"
#include "momnet/momentum_residual.hpp"
#include "momnet/residual.hpp"
#include "momnet/tape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

template <class T>
class Sequential;

namespace detail {

template <class M, class T, class = void>
struct is_callable_stack : std::false_type {};
template <class M, class T>
struct is_callable_stack<
    M, T, std::enable_if_t<std::is_same_v<decltype(std::declval<M&>()(std::declval<Tape<T>&>(), std::declval<const Var<T>&>())), Var<T>>>>
    : std::true_type {};

template <class M>
struct is_residual : std::false_type {};
template <class B>
struct is_residual<Residual<B>> : std::true_type {};

template <class M, class T>
struct is_sequential : std::is_same<M, Sequential<T>> {};

}  // namespace detail

template <class T>
class Sequential {
 public:
  using Scalar = T;

  Sequential() = default;
  Sequential(const Sequential& other) : training_(other.training_), step_(other.step_) {
    for (const Entry& e : other.members_) members_.push_back(Entry{e.name, e.member->clone()});
  }
  Sequential(Sequential&&) noexcept = default;
  Sequential& operator=(const Sequential& other) {
    if (this != &other) *this = Sequential(other);
    return *this;
  }
  Sequential& operator=(Sequential&&) noexcept = default;

  // Appends `module`, named by its position; returns the stored member.
  template <class Module>
  Module& add(Module module) {
    return add_named(std::to_string(members_.size()), std::move(module), true);
  }
  // Appends `module` under `name` (empty: its names join this module's directly).
  template <class Module>
  Module& add(const std::string& name, Module module) {
    return add_named(name, std::move(module), false);
  }

  // A forward pass of its own: the step is this Sequential's count of passes.
  Var<T> forward(Tape<T>& tape, const Var<T>& x) {
    CallContext<T> context;
    context.step = step_++;
    context.training = training_;
    return forward(tape, x, context);
  }
  // As a block inside a stack (or a member of another Sequential): the
  // caller's context (layer, step, replay, extra inputs) reaches every member,
  // each with a seed of its own, derived from the context's and its index, so
  // two dropout members draw different masks and a replay draws the same.
  Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) {
    Var<T> h = x;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      CallContext<T> member = context;
      member.seed = detail::mix64(context.seed ^ (0x9E3779B97F4A7C15ULL * (i + 1)));
      h = members_[i].member->forward(tape, h, member);
    }
    return h;
  }
  Var<T> operator()(Tape<T>& tape, const Var<T>& x) { return forward(tape, x); }

  // Inference without a tape of yours: runs every member with gradients off,
  // keeping only one member's intermediate values at a time.
  Tensor<T> infer(const Tensor<T>& x) {
    Tape<T> tape;
    typename Tape<T>::NoGradScope no_grad(tape);
    CallContext<T> context;
    context.step = step_++;
    context.training = training_;
    Tensor<T> h = x;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      const TapeScope<T> scope(tape);
      CallContext<T> member = context;
      member.seed = detail::mix64(context.seed ^ (0x9E3779B97F4A7C15ULL * (i + 1)));
      const Var<T> out = members_[i].member->forward(tape, tape.constant(h), member);
      Tensor<T> next(out.shape());
      std::copy(out.data(), out.data() + out.size(), next.data());
      h = std::move(next);
    }
    return h;
  }

  template <class Visitor>
  void visit_state(Visitor& visit) {
    for (Entry& e : members_) e.member->visit(visit, e.name);
  }
  template <class Visitor>
  void visit_parameters(Visitor&& visit) {
    for_each_parameter(*this, visit);
  }
  // Train/eval reaches the members through visit_state; this records the flag.
  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }
  // The number of forward passes so far (given to members in their context).
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

  std::size_t size() const noexcept { return members_.size(); }
  const std::string& name(std::size_t i) const { return entry(i).name; }
  // Member i as a `Module`; throws std::invalid_argument naming both types if it is not one.
  template <class Module>
  Module& get(std::size_t i) {
    Member& m = *entry(i).member;
    if (m.type() != typeid(Module)) {
      throw std::invalid_argument("momnet::Sequential::get: member " + std::to_string(i) + " is a " +
                                  m.type().name() + ", not a " + typeid(Module).name());
    }
    return static_cast<Held<Module>&>(m).module;
  }

  // A copy with every Residual inside converted to a MomentumResidual.
  Sequential converted_to_momentum(double gamma, const MomentumOptions& options) const {
    Sequential out;
    out.training_ = training_;
    out.step_ = step_;
    for (const Entry& e : members_) out.members_.push_back(Entry{e.name, e.member->to_momentum(gamma, options)});
    return out;
  }

 private:
  struct Member {
    virtual ~Member() = default;
    virtual Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) = 0;
    virtual void visit(StateVisitor<T>& visitor, const std::string& name) = 0;
    virtual std::unique_ptr<Member> clone() const = 0;
    virtual std::unique_ptr<Member> to_momentum(double gamma, const MomentumOptions& options) const = 0;
    virtual const std::type_info& type() const noexcept = 0;
  };

  template <class Module>
  struct Held final : Member {
    explicit Held(Module m) : module(std::move(m)) {}
    Var<T> forward(Tape<T>& tape, const Var<T>& x, const CallContext<T>& context) override {
      if constexpr (detail::has_context_forward<Module, T>::value || !detail::is_callable_stack<Module, T>::value) {
        return detail::call_block(module, tape, x, context, "momnet::Sequential");
      } else {
        return module(tape, x);  // a stack: its own step count and mode
      }
    }
    void visit(StateVisitor<T>& visitor, const std::string& name) override { visitor.child(name, module); }
    std::unique_ptr<Member> clone() const override { return std::make_unique<Held>(module); }
    std::unique_ptr<Member> to_momentum(double gamma, const MomentumOptions& options) const override {
      if constexpr (detail::is_residual<Module>::value) {
        return std::make_unique<Held<decltype(momnet::to_momentum(module, gamma, options))>>(
            momnet::to_momentum(module, gamma, options));
      } else if constexpr (detail::is_sequential<Module, T>::value) {
        return std::make_unique<Held<Sequential<T>>>(module.converted_to_momentum(gamma, options));
      } else {
        return clone();
      }
    }
    const std::type_info& type() const noexcept override { return typeid(Module); }
    Module module;
  };

  struct Entry {
    std::string name;
    std::unique_ptr<Member> member;
  };

  template <class Module>
  Module& add_named(const std::string& name, Module module, bool positional) {
    static_assert(std::is_same_v<typename Module::Scalar, T>, "momnet::Sequential: the member's Scalar differs");
    for (const Entry& e : members_) {
      if (!name.empty() && e.name == name) {
        throw std::invalid_argument("momnet::Sequential::add: a member named '" + name + "' exists already" +
                                    (positional ? " (an unnamed member is named by its position, " + name +
                                                      "; give this one a name)"
                                                : ""));
      }
    }
    auto held = std::make_unique<Held<Module>>(std::move(module));
    Module& stored = held->module;
    members_.push_back(Entry{name, std::move(held)});
    // Names must stay unique (a member added under the empty name brings its
    // own names into this level): checkpoints key on them.
    std::vector<std::string> names;
    StateVisitor<T> collect([&names](const std::string& n, Parameter<T>&) { names.push_back(n); },
                            [&names](const std::string& n, BufferRef<T>) { names.push_back(n); });
    collect.enter(*this);
    std::sort(names.begin(), names.end());
    const auto duplicate = std::adjacent_find(names.begin(), names.end());
    if (duplicate != names.end()) {
      const std::string clash = *duplicate;
      members_.pop_back();
      throw std::invalid_argument("momnet::Sequential::add: the member would repeat the name '" + clash +
                                  "'; give it (or the member it clashes with) a name of its own");
    }
    return stored;
  }

  const Entry& entry(std::size_t i) const {
    if (i >= members_.size()) {
      throw std::out_of_range("momnet::Sequential: member " + std::to_string(i) + " of " +
                              std::to_string(members_.size()));
    }
    return members_[i];
  }

  std::vector<Entry> members_;
  bool training_ = true;
  std::uint64_t step_ = 0;
};

// The momentum counterpart of a composition: every Residual stack inside it
// becomes a MomentumResidual (gamma, options), everything else is copied.
template <class T>
Sequential<T> to_momentum(const Sequential<T>& sequential, double gamma, MomentumOptions options = {}) {
  return sequential.converted_to_momentum(gamma, options);
}

}  // namespace momnet
