// The shape of a value: rank 0 (a scalar) to rank 4 (NCHW images, [B, H, T, D]
// attention scores). Storage is always contiguous and row-major.
//
// Operations act along an axis: split(axis) reads the value as
// outer x axis x inner (the dimensions before the axis, the axis, the
// dimensions after it), which is how every axis-wise kernel walks memory.
// Axes count from 0, or from the end when negative (-1 is the last axis).
//
// rows() and cols() read a value as a matrix (first dimension x the rest): a
// kernel detail of the dense layers, never a semantic of an operation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace momnet {

// A value read as outer x axis x inner, row-major: element (o, a, i) sits at
// (o * axis + a) * inner + i.
struct AxisSplit {
  Eigen::Index outer = 1;
  Eigen::Index axis = 1;
  Eigen::Index inner = 1;
};

class Shape {
 public:
  static constexpr int max_rank = 4;
  // The most elements a value may have: its bytes, rounded up to the
  // alignment, then never overflow a size_t or an Eigen::Index.
  static constexpr Eigen::Index max_size = std::numeric_limits<Eigen::Index>::max() / 64;

  Shape() = default;  // a scalar
  Shape(std::initializer_list<Eigen::Index> dims) { assign(dims.begin(), dims.size()); }
  explicit Shape(const std::vector<Eigen::Index>& dims) { assign(dims.data(), dims.size()); }

  static Shape matrix(Eigen::Index rows, Eigen::Index cols) { return Shape{rows, cols}; }

  int rank() const noexcept { return rank_; }
  Eigen::Index dim(int axis) const { return dims_[static_cast<std::size_t>(axis_index(axis, "momnet::Shape::dim"))]; }
  Eigen::Index operator[](int axis) const { return dim(axis); }
  std::vector<Eigen::Index> dims() const { return std::vector<Eigen::Index>(dims_.begin(), dims_.begin() + rank_); }

  Eigen::Index size() const noexcept { return size_; }
  Eigen::Index rows() const noexcept { return rank_ >= 2 ? dims_[0] : 1; }
  Eigen::Index cols() const noexcept {
    const Eigen::Index r = rows();
    return r == 0 ? 0 : size_ / r;
  }
  bool is_scalar() const noexcept { return size_ == 1; }

  // `axis` in [0, rank), counting from the end when negative; throws naming
  // `operation` otherwise. A scalar has no axes.
  int axis_index(int axis, const char* operation) const {
    const int index = axis < 0 ? axis + rank_ : axis;
    if (index < 0 || index >= rank_) {
      throw std::out_of_range(std::string(operation) + ": axis " + std::to_string(axis) + " is outside shape " +
                              to_string() + " (rank " + std::to_string(rank_) + ")");
    }
    return index;
  }

  // The value read as outer x dim(axis) x inner.
  AxisSplit split(int axis, const char* operation = "momnet::Shape::split") const {
    const int a = axis_index(axis, operation);
    AxisSplit s;
    for (int i = 0; i < rank_; ++i) {
      const Eigen::Index d = dims_[static_cast<std::size_t>(i)];
      if (i < a) s.outer *= d;
      if (i == a) s.axis = d;
      if (i > a) s.inner *= d;
    }
    return s;
  }

  // This shape with dimension `axis` set to `n`.
  Shape with_dim(int axis, Eigen::Index n) const {
    std::vector<Eigen::Index> d = dims();
    d[static_cast<std::size_t>(axis_index(axis, "momnet::Shape::with_dim"))] = n;
    return Shape(d);
  }
  // This shape without dimension `axis` (rank - 1).
  Shape without_dim(int axis) const {
    std::vector<Eigen::Index> d = dims();
    d.erase(d.begin() + axis_index(axis, "momnet::Shape::without_dim"));
    return Shape(d);
  }

  // The same data read as `rows` by the remaining columns (e.g. a batch).
  Shape with_rows(Eigen::Index rows) const { return Shape{rows, size_ / (rows == 0 ? 1 : rows)}; }

  std::string to_string() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }

  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i) {
      if (a.dims_[static_cast<std::size_t>(i)] != b.dims_[static_cast<std::size_t>(i)]) return false;
    }
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  void assign(const Eigen::Index* dims, std::size_t count) {
    if (count > static_cast<std::size_t>(max_rank)) {
      throw std::invalid_argument("momnet::Shape: rank " + std::to_string(count) + " exceeds the maximum of 4");
    }
    // The size is checked as it grows, so a product that would wrap (say
    // 2^32 x 2^32) is refused instead of becoming a small number.
    Eigen::Index size = 1;
    bool zero = false;
    for (std::size_t i = 0; i < count; ++i) {
      if (dims[i] < 0) throw std::invalid_argument("momnet::Shape: negative dimension " + std::to_string(dims[i]));
      zero = zero || dims[i] == 0;
    }
    for (std::size_t i = 0; i < count; ++i) {
      const Eigen::Index d = dims[i];
      dims_[i] = d;
      if (!zero && d > max_size / size) {
        throw std::length_error("momnet::Shape: " + to_string_of(dims, count) + " has more than " +
                                std::to_string(max_size) + " elements");
      }
      if (!zero) size *= d;
    }
    rank_ = static_cast<int>(count);
    size_ = zero ? 0 : size;
  }

  static std::string to_string_of(const Eigen::Index* dims, std::size_t count) {
    std::string s = "[";
    for (std::size_t i = 0; i < count; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
  }

  std::array<Eigen::Index, max_rank> dims_{};
  int rank_ = 0;
  Eigen::Index size_ = 1;
};

}  // namespace momnet
