// An exact momentum state outside any tape: what MomentumResidual::evaluate
// returns and MomentumResidual::inverse undoes. Besides the fixed-point state
// and its bit store it keeps a digest of the input state (X_0, V_0), so that
// an inverse through changed parameters or another context is caught even
// when the store would come back empty (gamma = p / 2^k with p a power of
// two pushes and pops whole bits, and a wrong rebuild can empty it exactly).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "momnet/exact_momentum.hpp"
#include "momnet/memory.hpp"
#include "momnet/random.hpp"
#include "momnet/shape.hpp"
#include "momnet/tensor.hpp"

namespace momnet {

template <class Block>
class MomentumResidual;

template <class T>
class MomentumState {
 public:
  const Shape& shape() const noexcept { return shape_; }
  // The layer the state stands at: depth after evaluate(), 0 after inverse().
  std::size_t layer() const noexcept { return layer_; }
  // layer() of a state whose inverse failed part-way.
  static constexpr std::size_t broken = ~std::size_t{0};
  Tensor<T> x() const { return read(&ExactMomentum<T>::read_x); }
  Tensor<T> v() const { return read(&ExactMomentum<T>::read_v); }
  const ExactMomentum<T>& exact() const noexcept { return engine_; }
  std::size_t bit_store_bytes() const noexcept { return engine_.store_bytes(); }

 private:
  template <class Block>
  friend class MomentumResidual;

  MomentumState(const Shape& shape, const FixedPointFormat& format, const RationalGamma& gamma)
      : counter_(std::make_unique<MemoryCounter>()), engine_(shape.size(), format, gamma, *counter_), shape_(shape) {}

  Tensor<T> read(void (ExactMomentum<T>::*reader)(T*) const) const {
    Tensor<T> out(shape_);
    (engine_.*reader)(out.data());
    return out;
  }

  // A 64-bit hash of the fixed-point words of x and v.
  std::uint64_t digest() const noexcept {
    std::uint64_t h = detail::mix64(static_cast<std::uint64_t>(engine_.elements()));
    for (Eigen::Index i = 0; i < engine_.elements(); ++i) {
      h = detail::mix64(h ^ static_cast<std::uint64_t>(engine_.x()[i]));
      h = detail::mix64(h ^ static_cast<std::uint64_t>(engine_.v()[i]));
    }
    return h;
  }

  std::unique_ptr<MemoryCounter> counter_;
  ExactMomentum<T> engine_;
  Shape shape_;
  std::size_t layer_ = 0;
  std::uint64_t input_digest_ = 0;
  std::uint64_t step_ = 0;  // the call evaluate() made, replayed by inverse()
  bool training_ = true;
};

}  // namespace momnet
