// What a block may learn about the call it is in: its layer in the stack, the
// training step, train or eval mode, whether the call is a replay (the exact
// backward rebuilding the layer, or any recomputation), the stack's random
// seed and the extra inputs given to the stack (an encoder memory, a mask).
//
// Rules a block must follow to be replayable (block.hpp states the contract):
// draw randomness from random(stream), keyed by (seed, step, layer), never
// from a sequential generator; change state (running statistics) only when
// replay is false, so that a rebuild leaves it alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "momnet/random.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
class CallContext {
 public:
  std::size_t layer = 0;     // the block's index in its stack (0 outside one)
  std::uint64_t step = 0;    // the stack's forward-call count when this pass began
  bool training = true;      // train (true) or eval (false) mode
  bool replay = false;       // a recomputation of a call already made: change no state
  std::uint64_t seed = 0;    // the stack's seed for random draws

  CallContext() = default;
  CallContext(const Var<T>* extras, std::size_t count) noexcept : extras_(extras), count_(count) {}

  std::size_t extra_count() const noexcept { return count_; }
  // Extra input i, as given to the stack.
  const Var<T>& extra(std::size_t i) const {
    if (i >= count_) {
      throw std::out_of_range("momnet::CallContext::extra: input " + std::to_string(i) + " requested, but the " +
                              "stack was given " + std::to_string(count_) + " extra input(s)");
    }
    return extras_[i];
  }

  // A generator for this call, the same on every replay of it.
  CounterRng random(std::uint64_t stream = 0) const noexcept { return CounterRng(seed, step, layer, stream); }

 private:
  const Var<T>* extras_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace momnet
