// The options of a MomentumResidual stack and what its forward pass returns.
#pragma once

#include <cstddef>
#include <cstdint>

#include <Eigen/Core>

#include "momnet/tape.hpp"

namespace momnet {

enum class BackwardMode { exact, stored, float_inverse };

inline const char* to_string(BackwardMode mode) {
  switch (mode) {
    case BackwardMode::exact: return "exact";
    case BackwardMode::stored: return "stored";
    case BackwardMode::float_inverse: return "float_inverse";
  }
  return "unknown";
}

struct MomentumOptions {
  double gamma = 0.9;
  BackwardMode mode = BackwardMode::exact;
  // false: each block computes x + h(x) itself and f(x) = block(x) - x.
  bool residual_blocks = true;
  // Fixed-point fraction bits F; 0 picks the scalar's default (float 32,
  // double 44; see fixed_point.hpp for range and resolution).
  int fraction_bits = 0;
  // k in gamma = p / 2^k.
  int gamma_bits = 16;
  // float_inverse only: the largest difference allowed between the rebuilt
  // and the real input, max |x_rebuilt - x| / max(1, max |x|), before the
  // backward pass throws ReconstructionError. The gradients it accumulated
  // before throwing are invalid: zero them before the next step.
  double float_drift_tolerance = 1e-3;
  // The seed of the blocks' random draws (CallContext::random).
  std::uint64_t seed = 0;
  // The name of the first block in visit_state (named_parameters): 1 for a
  // stage whose block 0 sits outside the stack, as torchvision's layer1.1.
  std::size_t first_block_name = 0;
};

template <class T>
struct MomentumOutput {
  Var<T> x;  // x_N
  Var<T> v;  // v_N
  std::size_t bit_store_bytes = 0;  // exact mode: bytes held by the bit store
  std::size_t spills = 0;           // exact mode: layers that spilled the store
};

// What an observer sees: the state (x_n, v_n) entering layer n, in the forward
// pass before the layer and in the backward pass once rebuilt. Fixed-point
// words in the exact and stored modes, reals in float_inverse.
template <class T>
struct LayerEvent {
  enum class Phase { forward, backward };
  Phase phase;
  std::size_t layer;
  Eigen::Index elements;
  const std::int64_t* x_fixed = nullptr;
  const std::int64_t* v_fixed = nullptr;
  const T* x = nullptr;
  const T* v = nullptr;
};

}  // namespace momnet
