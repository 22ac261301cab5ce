// The exactly invertible momentum update on fixed-point state (docs/design.md §2):
//
//   forward  V <- gamma V + round((1 - gamma) f 2^F);  X <- X + V
//   inverse  X <- X - V;  V <- (V - round((1 - gamma) f 2^F)) / gamma
//
// with gamma = p / 2^k. Multiplying V by p / 2^k drops information; the
// dropped bits go to a per-element "bit store" S, after Maclaurin, Duvenaud
// and Adams (ICML 2015), so that the product can be undone exactly. We order
// the two digit moves so that the product stays within one unit of gamma V
// (the textbook order, push then pop, is off by up to p units, which would
// cost k bits of resolution):
//
//   forward:  d = S mod p, S = floor(S / p)            (pop a digit of radix p)
//             W = V p + d                              (exactly invertible)
//             V = floor(W / 2^k), push W mod 2^k:  S = S 2^k + (W mod 2^k)
//   inverse:  pop r = S mod 2^k, S = floor(S / 2^k);  W = V 2^k + r
//             V = floor(W / p), push d = W mod p:      S = S p + d
//
// with floor division and non-negative remainders throughout, so V is gamma V
// rounded down after adding d / 2^k < gamma: within one unit of 2^-F.
// S grows by log2(2^k / p) = log2(1 / gamma) bits per layer. It is a 64-bit
// hot word per element; before a layer whose push could overflow some element
// (any S >= p 2^(64-k)), the whole hot array is spilled to a stack and
// cleared. The decision is made once per layer for the whole tensor in the
// forward pass and recorded; the inverse replays the record and never
// re-decides from values.
//
// Memory: the store holds at most 1 + floor((N - 1) / L) words per element
// after N layers, where g = 2^k / p and L = ceil(log_g(1 + (2^k - p)
// 2^(64-k) / (2^k - 1))) is the fewest layers between two spills
// (bit_store_words_per_element()). For gamma = 0.9 and k = 16, L = 294: about
// 0.027 bytes per element per layer, against 4 (float) or 8 (double) for
// storing the activation.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "momnet/fixed_point.hpp"
#include "momnet/memory.hpp"

namespace momnet {

// The fewest layers between two spills of the bit store (0: never spills).
// After j layers from an empty store, S < (2^k - 1)(g^j - 1) / (g - 1); a spill
// is needed only once S reaches p 2^(64-k).
inline std::size_t bit_store_layers_per_spill(const RationalGamma& gamma) {
  if (gamma.numerator() >= gamma.denominator()) return 0;  // gamma = 1: S never grows
  if (gamma.numerator() == 0) return 1;
  const double p = static_cast<double>(gamma.numerator());
  const double two_k = static_cast<double>(gamma.denominator());
  // log2(2^k / p) = -log2(1 - (2^k - p) / 2^k), without cancellation near gamma = 1.
  const double log2_g = -std::log1p(-(two_k - p) / two_k) / std::log(2.0);
  // log2(1 + A) with A = (2^k - p) 2^(64-k) / (2^k - 1), as log2(A) + log2(1 + 1/A).
  const double log2_a = std::log2(two_k - p) + (64 - gamma.bits()) - std::log2(two_k - 1.0);
  const double layers = (log2_a + std::log2(1.0 + std::exp2(-log2_a))) / log2_g;
  // L = ceil(layers): the largest j with g^j < 1 + A is ceil(layers) - 1, and
  // the layer after a spill counts too. Shaved by a relative 1e-12 so that
  // rounding in the logarithms can only make the bound more conservative.
  const double shaved = std::ceil(layers * (1.0 - 1e-12));
  return shaved < 1.0 ? 1 : static_cast<std::size_t>(shaved);
}

// Upper bound on the bit store's 64-bit words per element after `depth` layers.
inline std::size_t bit_store_words_per_element(std::size_t depth, const RationalGamma& gamma) {
  const std::size_t layers = bit_store_layers_per_spill(gamma);
  if (layers == 0 || depth == 0) return 1;
  return 1 + (depth - 1) / layers;
}

// Upper bound on the bit store's bytes for `elements` values over `depth` layers.
inline std::size_t bit_store_bytes_bound(std::size_t elements, std::size_t depth,
                                         const RationalGamma& gamma) {
  return bit_store_words_per_element(depth, gamma) * round_up_to_alignment(elements * 8);
}

// Thrown when a backward pass does not rebuild the forward's state bit for bit.
class ReconstructionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Fixed-point momentum state (X, V) of `elements` values with its bit store.
// Values of the block's scalar type T go in (f) and come out (x, v).
template <class T>
class ExactMomentum {
 public:
  struct Spill {
    std::size_t layer;
    Buffer<std::uint64_t> words;
  };
  using SpillStack = std::vector<Spill, CountingAllocator<Spill>>;

  // Storage for the three word arrays (X, V and the hot store), each of
  // elements() 64-bit words, that the caller provides and keeps alive: a
  // tape's arena, whose memory serves the next training step again instead of
  // being mapped and page-faulted in anew (tens of megabytes per step for
  // image batches).
  struct Words {
    std::int64_t* x;
    std::int64_t* v;
    std::uint64_t* store;
  };

  // A state owning its words (counted by `counter`, as are the spills).
  ExactMomentum(Eigen::Index elements, const FixedPointFormat& format, const RationalGamma& gamma,
                MemoryCounter& counter)
      : ExactMomentum(elements, format, gamma, counter, nullptr) {}
  // A state in `storage`; the spills still come from `counter`.
  ExactMomentum(Eigen::Index elements, const FixedPointFormat& format, const RationalGamma& gamma,
                MemoryCounter& counter, const Words& storage)
      : ExactMomentum(elements, format, gamma, counter, &storage) {}
  // Moves keep the words where they are; a copy would need storage of its own
  // (rewinding_copy).
  ExactMomentum(ExactMomentum&&) noexcept = default;
  ExactMomentum& operator=(ExactMomentum&&) noexcept = default;
  ExactMomentum(const ExactMomentum&) = delete;
  ExactMomentum& operator=(const ExactMomentum&) = delete;

  // A copy of the state to run backwards, reading (never consuming) this
  // state's spills, which must outlive the copy; in `storage` when given.
  ExactMomentum rewinding_copy() const { return rewinding_copy_into(ExactMomentum(elements_, format_, gamma_, *counter_)); }
  ExactMomentum rewinding_copy(const Words& storage) const {
    return rewinding_copy_into(ExactMomentum(elements_, format_, gamma_, *counter_, storage));
  }

  Eigen::Index elements() const noexcept { return elements_; }
  const std::int64_t* x() const noexcept { return x_; }
  const std::int64_t* v() const noexcept { return v_; }
  std::size_t spill_count() const noexcept { return spills_.size(); }
  // Bytes held by the bit store: the hot words and every spilled array.
  std::size_t store_bytes() const noexcept {
    std::size_t total = elements_ == 0 ? 0 : round_up_to_alignment(bytes());
    for (const Spill& spill : spills_) total += spill.words.bytes();
    return total;
  }

  // X = round(x 2^F) and V = round(v 2^F) (or 0); an empty store.
  void load(const T* x, const T* v) {
    to_fixed(x, x_, "the input x");
    if (v != nullptr) {
      to_fixed(v, v_, "the initial velocity");
    } else {
      zero_words(v_);
    }
    zero_words(store_);
    spills_.clear();
    spill_source_ = nullptr;
    spill_cursor_ = 0;
    spill_pending_ = false;
  }

  void read_x(T* out) const { to_real(x_, out); }
  void read_v(T* out) const { to_real(v_, out); }

  // One forward layer given f = f_n(x_n); with `x_out`, also writes x_{n+1}
  // as read_x() would, in the same pass over the words (one pass fewer over
  // three arrays the size of the activation, per layer).
  void step(const T* f, std::size_t layer, T* x_out = nullptr) {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    if (gamma_.numerator() != 0 && spill_pending_) spill(layer);
    const int k = gamma_.bits();
    const std::uint64_t mask = gamma_.denominator() - 1;
    const std::uint64_t p = gamma_.numerator();
    const std::int64_t signed_p = static_cast<std::int64_t>(p);
    const std::uint64_t spill_limit = spill_threshold();
    const double c = increment_scale();
    const T resolution = static_cast<T>(format_.resolution());
    std::int64_t* X = x_;
    std::int64_t* V = v_;
    std::uint64_t* S = store_;
    // Branch-free loop bodies with | instead of || so that they vectorise.
    // Flags are 64-bit words, not bools: GCC vectorises no bool reductions.
    std::uint64_t bad = 0, spill_next = 0;
    const auto add_increment = [&](Eigen::Index i, std::uint64_t scaled, auto write_x) {
      const double y = static_cast<double>(f[i]) * c;
      const bool representable = below_fixed_point_limit(y);  // false for NaN and Inf, even under -ffast-math
      const std::uint64_t v = scaled + static_cast<std::uint64_t>(round_to_int(representable ? y : 0.0));
      const std::uint64_t x = static_cast<std::uint64_t>(X[i]) + v;
      bad |= std::uint64_t{!representable} | std::uint64_t{!fixed_in_range(v)} | std::uint64_t{!fixed_in_range(x)};
      V[i] = static_cast<std::int64_t>(v);
      X[i] = static_cast<std::int64_t>(x);
      if constexpr (decltype(write_x)::value) x_out[i] = static_cast<T>(static_cast<std::int64_t>(x)) * resolution;
    };
    const auto run = [&](auto write_x) {
      if (p == 0) {  // gamma = 0 (stored mode only): v = (1 - gamma) f
        for (Eigen::Index i = 0; i < n; ++i) add_increment(i, 0, write_x);
        return;
      }
      for (Eigen::Index i = 0; i < n; ++i) {
        const std::uint64_t s = S[i];
        const std::uint64_t popped = divider_.quotient(s);
        const std::uint64_t digit = s - popped * p;
        // W = V p + d computed in two halves so that nothing exceeds 64 bits:
        // V = high 2^k + low, W = high p 2^k + (low p + d).
        const std::int64_t value = V[i];
        const std::uint64_t low = (static_cast<std::uint64_t>(value) & mask) * p + digit;
        const std::uint64_t pushed = (popped << k) | (low & mask);
        S[i] = pushed;
        spill_next |= std::uint64_t{pushed >= spill_limit};
        add_increment(i, static_cast<std::uint64_t>((value >> k) * signed_p) + (low >> k), write_x);
      }
    };
    with_optional_output(x_out, run);
    spill_pending_ = spill_next != 0;
    if (bad != 0) report_forward_failure(f, layer);
  }

  // First half of inverting layer n: X_n = X_{n+1} - V_{n+1}; with `x_out`,
  // also writes x_n as read_x() would, in the same pass.
  void unstep_position(std::size_t layer, T* x_out = nullptr) {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    const T resolution = static_cast<T>(format_.resolution());
    std::int64_t* X = x_;
    const std::int64_t* V = v_;
    std::uint64_t bad = 0;
    const auto run = [&](auto write_x) {
      for (Eigen::Index i = 0; i < n; ++i) {
        const std::uint64_t x = static_cast<std::uint64_t>(X[i]) - static_cast<std::uint64_t>(V[i]);
        bad |= std::uint64_t{!fixed_in_range(x)};
        X[i] = static_cast<std::int64_t>(x);
        if constexpr (decltype(write_x)::value) x_out[i] = static_cast<T>(static_cast<std::int64_t>(x)) * resolution;
      }
    };
    with_optional_output(x_out, run);
    if (bad != 0) throw_mismatch("x_" + std::to_string(layer) + " (it left the exact range)");
  }

  // Second half, given f = f_n(x_n) rebuilt bit for bit: V_n.
  void unstep_velocity(const T* f, std::size_t layer) {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    if (gamma_.numerator() == 0) {
      throw std::logic_error("momnet::ExactMomentum: gamma = 0 has no inverse");
    }
    const int k = gamma_.bits();
    const std::uint64_t mask = gamma_.denominator() - 1;
    const std::uint64_t p = gamma_.numerator();
    // V + bias is non-negative for |V| < 2^62, so floor division of the signed V
    // by p is an unsigned division followed by subtracting bias / p.
    const std::uint64_t bias_quotient = ((std::uint64_t{1} << 62) + p - 1) / p;
    const std::uint64_t bias = bias_quotient * p;
    const double c = increment_scale();
    std::int64_t* V = v_;
    std::uint64_t* S = store_;
    std::uint64_t bad = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      const double y = static_cast<double>(f[i]) * c;
      const bool representable = below_fixed_point_limit(y);  // false for NaN and Inf, even under -ffast-math
      bad |= std::uint64_t{!representable};
      // gamma V_n as the forward left it
      const std::uint64_t scaled =
          static_cast<std::uint64_t>(V[i]) - static_cast<std::uint64_t>(round_to_int(representable ? y : 0.0));
      const std::uint64_t s = S[i];
      const std::uint64_t r = s & mask;  // pop the digit of radix 2^k
      // W = scaled 2^k + r; V_n = floor(W / p), d = W mod p, in two halves:
      // scaled = a p + b, so W / p = a 2^k + (b 2^k + r) / p.
      const std::uint64_t shifted = scaled + bias;
      const std::uint64_t a = divider_.quotient(shifted);
      const std::uint64_t b = shifted - a * p;
      const std::uint64_t t = (b << k) | r;
      const std::uint64_t c_quotient = divider_.small_quotient(t);  // t < p 2^k <= 2^52
      const std::uint64_t digit = t - c_quotient * p;
      const std::uint64_t v = ((a - bias_quotient) << k) + c_quotient;
      // A rebuilt state out of range means an earlier layer was not rebuilt exactly.
      bad |= std::uint64_t{!fixed_in_range(v)} | std::uint64_t{!fixed_in_range(scaled)};
      V[i] = static_cast<std::int64_t>(v);
      S[i] = (s >> k) * p + digit;  // push d, radix p
    }
    if (bad != 0) report_rebuild_failure(f, layer);
    const SpillStack& source = spill_source_ != nullptr ? *spill_source_ : spills_;
    if (spill_cursor_ > 0 && source[spill_cursor_ - 1].layer == layer) {
      if (!all_zero(S)) throw_mismatch("the bit store before the spill of layer " + std::to_string(layer));
      --spill_cursor_;
      copy_words(S, source[spill_cursor_].words.data());
    }
  }

  // Throws ReconstructionError unless this state is exactly (x, v) with an
  // empty store: the check that a backward pass rebuilt every layer exactly.
  void verify_rebuilt(const T* x, const T* v) const {
    if (!matches_fixed(x, x_)) throw_mismatch("x_0");
    if (v != nullptr ? !matches_fixed(v, v_) : !all_zero(reinterpret_cast<const std::uint64_t*>(v_))) {
      throw_mismatch("v_0");
    }
    verify_store_empty();
  }

  // Frees the spills an in-place inverse has taken back (the store's memory
  // then reflects the layer the state stands at).
  void release_spent_spills() {
    if (spill_source_ == nullptr) spills_.erase(spills_.begin() + static_cast<std::ptrdiff_t>(spill_cursor_), spills_.end());
  }

  // Throws ReconstructionError unless every stored bit has been given back:
  // an inverse ran through every layer the forward ran, exactly.
  void verify_store_empty() const {
    if (!all_zero(store_) || spill_cursor_ != 0) throw_mismatch("the bit store");
  }

  double increment_scale() const noexcept { return gamma_.complement() * format_.scale(); }

 private:
  static std::int64_t round_to_int(double y) noexcept {
    return static_cast<std::int64_t>(std::nearbyint(y));
  }

  // Runs `loop` compiled with the write of x_out or without it (a
  // compile-time flag), chosen once outside the loop so that neither version
  // tests the pointer per element.
  template <class Loop>
  static void with_optional_output(const T* x_out, const Loop& loop) {
    if (x_out != nullptr) {
      loop(std::true_type{});
    } else {
      loop(std::false_type{});
    }
  }

  static Eigen::Index checked_elements(Eigen::Index elements) {
    if (elements < 0) {
      throw std::invalid_argument("momnet::ExactMomentum: negative element count " + std::to_string(elements));
    }
    return elements;
  }

  std::size_t bytes() const noexcept { return static_cast<std::size_t>(elements_) * 8; }

  ExactMomentum(Eigen::Index elements, const FixedPointFormat& format, const RationalGamma& gamma,
                MemoryCounter& counter, const Words* storage)
      : elements_(checked_elements(elements)),
        format_(format),
        gamma_(gamma),
        divider_(gamma.numerator() == 0 ? 1 : gamma.numerator()),
        counter_(&counter),
        owned_x_(storage != nullptr ? 0 : static_cast<std::size_t>(elements_), &counter),
        owned_v_(storage != nullptr ? 0 : static_cast<std::size_t>(elements_), &counter),
        owned_store_(storage != nullptr ? 0 : static_cast<std::size_t>(elements_), &counter),
        x_(storage != nullptr ? storage->x : owned_x_.data()),
        v_(storage != nullptr ? storage->v : owned_v_.data()),
        store_(storage != nullptr ? storage->store : owned_store_.data()),
        spills_(CountingAllocator<Spill>(counter)) {}

  ExactMomentum rewinding_copy_into(ExactMomentum copy) const {
    copy_words(copy.x_, x_);
    copy_words(copy.v_, v_);
    copy_words(copy.store_, store_);
    copy.spill_source_ = &spills_;
    copy.spill_cursor_ = spills_.size();
    return copy;
  }

  // Whether `real` converts to exactly the words `fixed` (as to_fixed would
  // convert it), without storage of its own; a value to_fixed would refuse
  // does not match.
  bool matches_fixed(const T* real, const std::int64_t* fixed) const noexcept {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    const double scale = format_.scale();
    std::uint64_t bad = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      const double y = static_cast<double>(real[i]) * scale;
      const bool representable = below_fixed_point_limit(y);  // false for NaN and Inf, even under -ffast-math
      bad |= std::uint64_t{!representable} | std::uint64_t{round_to_int(representable ? y : 0.0) != fixed[i]};
    }
    return bad == 0;
  }

  // memcpy and memset of the state's words. A state of 0 elements has
  // null buffers, which the C functions may not receive even for 0 bytes.
  template <class W>
  void copy_words(W* to, const W* from) const noexcept {
    if (elements_ != 0) std::memcpy(to, from, bytes());
  }
  template <class W>
  void zero_words(W* to) const noexcept {
    if (elements_ != 0) std::memset(to, 0, bytes());
  }

  // A hot word at or above this could overflow the next layer's push: p 2^(64-k).
  std::uint64_t spill_threshold() const noexcept {
    if (gamma_.numerator() >= gamma_.denominator()) return ~std::uint64_t{0};
    return gamma_.numerator() << (64 - gamma_.bits());
  }

  bool all_zero(const std::uint64_t* words) const noexcept {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    std::uint64_t any = 0;
    for (Eigen::Index i = 0; i < n; ++i) any |= words[i];
    return any == 0;
  }

  void spill(std::size_t layer) {
    Spill entry{layer, Buffer<std::uint64_t>(static_cast<std::size_t>(elements_), counter_)};
    copy_words(entry.words.data(), store_);
    spills_.push_back(std::move(entry));  // before clearing: a throw leaves the store intact
    zero_words(store_);
    spill_cursor_ = spills_.size();
  }

  void to_fixed(const T* real, std::int64_t* out, const char* what) const {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    const double scale = format_.scale();
    for (Eigen::Index i = 0; i < n; ++i) {
      const double y = static_cast<double>(real[i]) * scale;
      if (!below_fixed_point_limit(y)) {  // NaN and Inf too, even under -ffast-math
        std::ostringstream message;
        message << "momnet::MomentumResidual: " << what << " holds " << name_of(real[i]) << " at element " << i;
        if (!is_finite_bits(real[i])) throw std::domain_error(message.str());
        message << ", outside the exact range +-" << format_.range() << " (fraction_bits "
                << format_.fraction_bits() << ")";
        throw std::range_error(message.str());
      }
      out[i] = round_to_int(y);
    }
  }

  void to_real(const std::int64_t* fixed, T* out) const noexcept {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    const T resolution = static_cast<T>(format_.resolution());
    for (Eigen::Index i = 0; i < n; ++i) out[i] = static_cast<T>(fixed[i]) * resolution;
  }

  [[noreturn]] void report_forward_failure(const T* f, std::size_t layer) const {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    std::ostringstream message;
    message << "momnet::MomentumResidual: layer " << layer << ": ";
    const double c = increment_scale();
    for (Eigen::Index i = 0; i < n; ++i) {
      if (!is_finite_bits(f[i])) {
        message << "the block returned " << name_of(f[i]) << " at element " << i;
        throw std::domain_error(message.str());
      }
      if (!below_fixed_point_limit(static_cast<double>(f[i]) * c)) {
        message << "the block returned " << f[i] << " at element " << i
                << ", outside the exact range +-" << format_.range() / gamma_.complement()
                << " (fraction_bits " << format_.fraction_bits() << ")";
        throw std::range_error(message.str());
      }
    }
    const double resolution = format_.resolution();
    for (Eigen::Index i = 0; i < n; ++i) {
      const bool v_bad = !fixed_in_range(static_cast<std::uint64_t>(v_[i]));
      if (v_bad || !fixed_in_range(static_cast<std::uint64_t>(x_[i]))) {
        message << (v_bad ? "the velocity" : "the activation") << " at element " << i
                << " left the exact range +-" << format_.range() << " (fraction_bits "
                << format_.fraction_bits() << ", value about "
                << static_cast<double>(v_bad ? v_[i] : x_[i]) * resolution
                << "); use fewer fraction bits or keep activations smaller";
        throw std::range_error(message.str());
      }
    }
    throw std::logic_error(message.str() + "unexplained failure");
  }

  // A value as the stream prints it, with NaN and Inf recognised by their bits
  // (the stream's own test may be compiled away under -ffast-math).
  static std::string name_of(T value) {
    if (is_nan_bits(value)) return "nan";
    if (!is_finite_bits(value)) return std::signbit(value) ? "-inf" : "inf";
    std::ostringstream text;
    text << value;
    return text.str();
  }

  // The rebuild of `layer` failed: a block that returned NaN or Inf only now
  // (the forward pass would have refused it) is named as such; anything else
  // means an earlier layer was not rebuilt exactly.
  [[noreturn]] void report_rebuild_failure(const T* f, std::size_t layer) const {
    const Eigen::Index n = elements_;  // a local: stores through pointers cannot change it
    for (Eigen::Index i = 0; i < n; ++i) {
      if (!is_finite_bits(f[i])) {
        throw ReconstructionError("momnet::MomentumResidual: layer " + std::to_string(layer) +
                                  ": the block returned " + name_of(f[i]) + " at element " + std::to_string(i) +
                                  " while the backward pass rebuilt it (the forward pass had a finite value "
                                  "there): the block is not deterministic, or its parameters or inputs changed "
                                  "between forward and backward. Gradients accumulated by this backward pass "
                                  "are invalid");
      }
    }
    throw_mismatch("layer " + std::to_string(layer) + " (its state left the exact range)");
  }

  [[noreturn]] void throw_mismatch(const std::string& what) const {
    throw ReconstructionError(
        "momnet::MomentumResidual: the exact backward did not rebuild " + what +
        " bit for bit: a block is not deterministic (randomness without replay, parameters or "
        "state changed between forward and backward, a different thread count), or the input's "
        "storage changed. Gradients accumulated by this backward pass are invalid");
  }

  Eigen::Index elements_;
  FixedPointFormat format_;
  RationalGamma gamma_;
  ConstantDivider divider_;
  MemoryCounter* counter_;
  Buffer<std::int64_t> owned_x_;  // empty when the caller provided the words
  Buffer<std::int64_t> owned_v_;
  Buffer<std::uint64_t> owned_store_;
  std::int64_t* x_;
  std::int64_t* v_;
  std::uint64_t* store_;
  SpillStack spills_;
  const SpillStack* spill_source_ = nullptr;
  std::size_t spill_cursor_ = 0;
  bool spill_pending_ = false;
};

}  // namespace momnet
