// Data augmentation for images [C, H, W], with torchvision's semantics:
//
//   RandomCrop(size, padding = 0, fill = 0)   pads every side by `padding`
//       with the constant `fill`, then crops a size x size (or height x width)
//       window at a uniformly drawn position (torchvision's
//       RandomCrop(size, padding, fill=0, padding_mode="constant")).
//   RandomHorizontalFlip(p = 0.5)             mirrors the columns with
//       probability p.
//
// torchvision pads before ToTensor/Normalize, so its zero fill is a black
// pixel; momnet augments images already scaled (and perhaps normalised), so
// after normalise(mean, std) a black fill is -mean / std, not 0.
//
// Randomness is keyed, never sequential: the draws for a sample come from a
// CounterRng keyed by (seed, epoch, the sample's index in its data set, the
// transform's position in the composition), so a run is reproducible whatever
// the batch order, shuffling or sharding, and two transforms never share
// draws.
//
// A transform is any class with
//   Shape output_shape(const Shape& input) const;   // [C, H, W] -> [C', H', W']; throws when it does not fit
//   template <class T>
//   void operator()(const T* input, const Shape& input_shape, T* output, const CounterRng& random) const;
// and Augmentation<T> composes any number of them, in order.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "momnet/random.hpp"
#include "momnet/shape.hpp"

namespace momnet {

// What a sample's random draws are keyed by.
struct AugmentKey {
  std::uint64_t seed = 0;
  std::uint64_t epoch = 0;
  std::uint64_t index = 0;  // the sample's index in its data set
};

namespace detail {

// Streams of CounterRng used by the data pipeline, apart from those blocks use.
inline constexpr std::uint64_t augment_stream = 0x6175676D656E7400ULL;  // "augment"

inline void check_image_shape(const char* function, const Shape& shape) {
  if (shape.rank() != 3) {
    throw std::invalid_argument(std::string(function) + ": an image must be [C, H, W], got shape " +
                                shape.to_string());
  }
}

// An integer uniform in [0, n), n >= 1, from draw i. The modulo's bias is
// below n / 2^64: nothing for image sizes.
inline Eigen::Index uniform_below(const CounterRng& random, std::uint64_t i, Eigen::Index n) {
  return static_cast<Eigen::Index>(random.bits(i) % static_cast<std::uint64_t>(n));
}

}  // namespace detail

class RandomCrop {
 public:
  // A size x size crop.
  explicit RandomCrop(Eigen::Index size, Eigen::Index padding = 0, double fill = 0.0)
      : RandomCrop(std::array<Eigen::Index, 2>{size, size}, padding, fill) {}
  // A {height, width} crop.
  explicit RandomCrop(std::array<Eigen::Index, 2> size, Eigen::Index padding = 0, double fill = 0.0)
      : height_(size[0]), width_(size[1]), padding_(padding), fill_(fill) {
    const char* function = "momnet::RandomCrop";
    if (height_ <= 0 || width_ <= 0) {
      throw std::invalid_argument(std::string(function) + ": the crop size must be positive, got " +
                                  std::to_string(height_) + "x" + std::to_string(width_));
    }
    if (padding_ < 0) {
      throw std::invalid_argument(std::string(function) + ": padding must be >= 0, got " + std::to_string(padding_));
    }
    if (!std::isfinite(fill_)) {
      throw std::invalid_argument(std::string(function) + ": fill must be finite, got " + std::to_string(fill_));
    }
  }

  Eigen::Index height() const noexcept { return height_; }
  Eigen::Index width() const noexcept { return width_; }
  Eigen::Index padding() const noexcept { return padding_; }
  double fill() const noexcept { return fill_; }

  Shape output_shape(const Shape& input) const {
    detail::check_image_shape("momnet::RandomCrop", input);
    const Eigen::Index padded_h = input[1] + 2 * padding_, padded_w = input[2] + 2 * padding_;
    if (height_ > padded_h || width_ > padded_w) {
      throw std::invalid_argument("momnet::RandomCrop: the crop " + std::to_string(height_) + "x" +
                                  std::to_string(width_) + " is larger than the padded image " +
                                  std::to_string(padded_h) + "x" + std::to_string(padded_w) + " (image " +
                                  std::to_string(input[1]) + "x" + std::to_string(input[2]) + ", padding " +
                                  std::to_string(padding_) + ")");
    }
    return Shape{input[0], height_, width_};
  }

  // The crop's top-left corner in the padded image, as drawn for `random`.
  std::pair<Eigen::Index, Eigen::Index> offset(const Shape& input, const CounterRng& random) const {
    output_shape(input);
    const Eigen::Index top = detail::uniform_below(random, 0, input[1] + 2 * padding_ - height_ + 1);
    const Eigen::Index left = detail::uniform_below(random, 1, input[2] + 2 * padding_ - width_ + 1);
    return {top, left};
  }

  template <class T>
  void operator()(const T* input, const Shape& input_shape, T* output, const CounterRng& random) const {
    const auto [top, left] = offset(input_shape, random);
    const Eigen::Index channels = input_shape[0], h = input_shape[1], w = input_shape[2];
    const T fill = static_cast<T>(fill_);
    // Output column x reads input column left + x - padding: the columns in
    // [x_begin, x_end) fall inside the image, the others are fill.
    const Eigen::Index x_begin = std::clamp<Eigen::Index>(padding_ - left, 0, width_);
    const Eigen::Index x_end = std::clamp<Eigen::Index>(w + padding_ - left, x_begin, width_);
    for (Eigen::Index c = 0; c < channels; ++c) {
      for (Eigen::Index y = 0; y < height_; ++y) {
        T* out = output + (c * height_ + y) * width_;
        const Eigen::Index source_y = top + y - padding_;
        if (source_y < 0 || source_y >= h) {
          std::fill(out, out + width_, fill);
          continue;
        }
        const T* from = input + (c * h + source_y) * w + (left - padding_ + x_begin);
        std::fill(out, out + x_begin, fill);
        std::copy(from, from + (x_end - x_begin), out + x_begin);
        std::fill(out + x_end, out + width_, fill);
      }
    }
  }

 private:
  Eigen::Index height_, width_, padding_;
  double fill_;
};

class RandomHorizontalFlip {
 public:
  explicit RandomHorizontalFlip(double p = 0.5) : p_(p) {
    if (!(p >= 0.0 && p <= 1.0)) {
      throw std::invalid_argument("momnet::RandomHorizontalFlip: p must be in [0, 1], got " + std::to_string(p));
    }
  }

  double p() const noexcept { return p_; }

  Shape output_shape(const Shape& input) const {
    detail::check_image_shape("momnet::RandomHorizontalFlip", input);
    return input;
  }

  // Whether the image is mirrored for `random`.
  bool flips(const CounterRng& random) const noexcept { return random.bernoulli(0, p_); }

  template <class T>
  void operator()(const T* input, const Shape& input_shape, T* output, const CounterRng& random) const {
    const Eigen::Index rows = input_shape[0] * input_shape[1], w = input_shape[2];
    if (!flips(random)) {
      std::copy(input, input + rows * w, output);
      return;
    }
    for (Eigen::Index r = 0; r < rows; ++r) std::reverse_copy(input + r * w, input + (r + 1) * w, output + r * w);
  }

 private:
  double p_;
};

// A sequence of transforms applied in order (torchvision's Compose); empty, it
// copies. apply() keeps intermediate images in buffers of its own: one
// Augmentation must not be applied from two threads at once (copy it).
template <class T>
class Augmentation {
 public:
  Augmentation() = default;
  template <class First, class... Rest,
            class = std::enable_if_t<!std::is_same_v<std::decay_t<First>, Augmentation>>>
  explicit Augmentation(First first, Rest... rest) {
    then(std::move(first));
    (then(std::move(rest)), ...);
  }

  // Appends `transform`.
  template <class Transform>
  Augmentation& then(Transform transform) {
    steps_.push_back(Step{[transform](const Shape& input) { return transform.output_shape(input); },
                          [transform](const T* in, const Shape& shape, T* out, const CounterRng& random) {
                            transform(in, shape, out, random);
                          }});
    return *this;
  }

  bool empty() const noexcept { return steps_.empty(); }
  std::size_t size() const noexcept { return steps_.size(); }

  // The shape of an augmented [C, H, W] image; throws std::invalid_argument
  // when a transform does not fit (a crop larger than the padded image).
  Shape output_shape(const Shape& input) const {
    detail::check_image_shape("momnet::Augmentation", input);
    Shape shape = input;
    for (const Step& step : steps_) shape = step.output_shape(shape);
    return shape;
  }

  // The generator transform `position` draws from for the sample `key`.
  static CounterRng random(const AugmentKey& key, std::size_t position) noexcept {
    return CounterRng(key.seed, key.epoch, key.index, detail::augment_stream + position);
  }

  // Writes the augmented image (output_shape(input_shape).size() values) to
  // `output`, which must not overlap `input`.
  void apply(const T* input, const Shape& input_shape, T* output, const AugmentKey& key) const {
    detail::check_image_shape("momnet::Augmentation::apply", input_shape);
    if (steps_.empty()) {
      std::copy(input, input + input_shape.size(), output);
      return;
    }
    const T* source = input;
    Shape shape = input_shape;
    for (std::size_t s = 0; s < steps_.size(); ++s) {
      const Shape next = steps_[s].output_shape(shape);
      T* target = output;
      if (s + 1 < steps_.size()) {
        std::vector<T>& buffer = scratch_[s % 2];
        buffer.resize(static_cast<std::size_t>(next.size()));
        target = buffer.data();
      }
      steps_[s].apply(source, shape, target, random(key, s));
      source = target;
      shape = next;
    }
  }

 private:
  struct Step {
    std::function<Shape(const Shape&)> output_shape;
    std::function<void(const T*, const Shape&, T*, const CounterRng&)> apply;
  };
  std::vector<Step> steps_;
  mutable std::array<std::vector<T>, 2> scratch_;
};

}  // namespace momnet
