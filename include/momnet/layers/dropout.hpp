// Dropout layers with PyTorch's names: Dropout (elements) and Dropout2d (whole
// channels of [N, C, H, W] or [C, H, W]), inverted dropout as in
// ops/dropout.hpp. No parameters; eval mode is the identity.
//
// Two ways to call them:
//   forward(tape, x, context)  inside a stack or a Sequential (block.hpp's
//       replay rules): train/eval from context.training, the mask from
//       context.random(stream), keyed by (seed, step, layer), so the exact
//       backward's replay draws the same mask. A Sequential gives each member
//       a seed of its own; `stream` tells apart two dropout layers that one
//       hand-written block calls with the same context.
//   forward(tape, x)  on its own: train/eval from the layer's own flag
//       (set_training, or momnet::train / eval), the mask from
//       CounterRng(seed, step, 0, stream), where seed is given at construction
//       and step counts this layer's plain forward calls (each call, in
//       either mode, advances it; set_step resumes a run).
#pragma once

#include <cstdint>

#include "momnet/call_context.hpp"
#include "momnet/ops/dropout.hpp"
#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {
namespace detail {

template <class T, bool Channels>
class DropoutLayer {
 public:
  using Scalar = T;

  explicit DropoutLayer(double p = 0.5, std::uint64_t seed = 0, std::uint64_t stream = 0)
      : p_(p), seed_(seed), stream_(stream) {
    check_dropout_p(Channels ? "momnet::Dropout2d" : "momnet::Dropout", p);
  }

  Var<T> forward(Tape<T>&, const Var<T>& x, const CallContext<T>& context) {
    return apply(x, context.training, context.random(stream_));
  }
  Var<T> forward(Tape<T>&, const Var<T>& x) {
    const std::uint64_t step = step_++;
    return apply(x, training_, CounterRng(seed_, step, 0, stream_));
  }

  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}

  void set_training(bool training) noexcept { training_ = training; }
  bool training() const noexcept { return training_; }
  double p() const noexcept { return p_; }
  std::uint64_t seed() const noexcept { return seed_; }
  std::uint64_t stream() const noexcept { return stream_; }
  // The step the next plain forward call draws its mask with.
  std::uint64_t step() const noexcept { return step_; }
  void set_step(std::uint64_t step) noexcept { step_ = step; }

 private:
  Var<T> apply(const Var<T>& x, bool training, const CounterRng& rng) const {
    return Channels ? dropout2d(x, p_, training, rng) : dropout(x, p_, training, rng);
  }

  double p_;
  std::uint64_t seed_;
  std::uint64_t stream_;
  std::uint64_t step_ = 0;
  bool training_ = true;
};

}  // namespace detail

// nn.Dropout(p = 0.5): zeroes each element with probability p in training
// and scales the rest by 1 / (1 - p).
template <class T>
class Dropout : public detail::DropoutLayer<T, false> {
 public:
  using detail::DropoutLayer<T, false>::DropoutLayer;
};

// nn.Dropout2d(p = 0.5): zeroes each channel (an H x W plane) with
// probability p in training and scales the rest by 1 / (1 - p).
template <class T>
class Dropout2d : public detail::DropoutLayer<T, true> {
 public:
  using detail::DropoutLayer<T, true>::DropoutLayer;
};

}  // namespace momnet
