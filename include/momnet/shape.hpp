// The shape of a value: rank 0 (a scalar) to rank 4 (NCHW images). Storage is
// always contiguous and row-major, and every value can be read as a matrix:
// the first dimension is the rows (the batch), the rest flattened are the
// columns (the features). A rank-1 value of n elements is one row of n.
#pragma once

#include <array>
#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

namespace momnet {

class Shape {
 public:
  static constexpr int max_rank = 4;

  Shape() = default;  // a scalar
  Shape(std::initializer_list<Eigen::Index> dims) {
    if (dims.size() > static_cast<std::size_t>(max_rank)) {
      throw std::invalid_argument("momnet::Shape: rank " + std::to_string(dims.size()) +
                                  " exceeds the maximum of 4");
    }
    for (Eigen::Index d : dims) {
      if (d < 0) throw std::invalid_argument("momnet::Shape: negative dimension " + std::to_string(d));
      dims_[static_cast<std::size_t>(rank_++)] = d;
    }
  }

  static Shape matrix(Eigen::Index rows, Eigen::Index cols) { return Shape{rows, cols}; }

  int rank() const noexcept { return rank_; }
  Eigen::Index dim(int axis) const {
    if (axis < 0 || axis >= rank_) {
      throw std::out_of_range("momnet::Shape::dim: axis " + std::to_string(axis) + " of shape " +
                              to_string());
    }
    return dims_[static_cast<std::size_t>(axis)];
  }

  Eigen::Index size() const noexcept {
    Eigen::Index n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  Eigen::Index rows() const noexcept { return rank_ >= 2 ? dims_[0] : 1; }
  Eigen::Index cols() const noexcept {
    const Eigen::Index r = rows();
    return r == 0 ? 0 : size() / r;
  }
  bool is_scalar() const noexcept { return size() == 1; }

  // The same data read as `rows` by the remaining columns (e.g. a batch).
  Shape with_rows(Eigen::Index rows) const { return Shape{rows, size() / (rows == 0 ? 1 : rows)}; }

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
  std::array<Eigen::Index, max_rank> dims_{};
  int rank_ = 0;
};

}  // namespace momnet
