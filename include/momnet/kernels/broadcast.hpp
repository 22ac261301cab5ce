// NumPy broadcasting, as plain kernels: no tape, shapes and raw pointers.
//
// Shapes are aligned at their last dimension; two dimensions are compatible
// when they are equal or one of them is 1 (which is repeated). A missing
// leading dimension counts as 1. [D] broadcasts over [B, T, D], [1, C, 1, 1]
// over [N, C, H, W], [B, 1, T] with [B, S, 1] gives [B, S, T], and a scalar
// over anything. A dimension of 0 is compatible with 0 and 1 only.
//
// BroadcastWalk<N> visits an output of shape `out` and N operands broadcast to
// it as contiguous runs of the output (the innermost dimension after merging
// every dimension that can be merged). In a run an operand either advances
// one element per output element (stride 1) or stays on one element
// (stride 0, broadcast along the run). The runs come in row-major order of the
// output, always the same for the same shapes, so a kernel built on them
// gives the same bits on every call.
//
// sum_to_shape() is the reduction of broadcasting's gradient: it adds a value
// of the output's shape into an operand's shape, summing over the operand's
// broadcast axes.
#pragma once

#include <array>
#include <cstddef>
#include <vector>

#include <Eigen/Core>

#include "momnet/shape.hpp"

namespace momnet::kernels {

// The broadcast of two shapes: `ok`, and then `shape`; otherwise `axis`, the
// first incompatible axis counted from the end (-1 is the last), with the two
// dimensions found there.
struct BroadcastShape {
  bool ok = false;
  Shape shape;
  int axis = 0;
  Eigen::Index dim_a = 0;
  Eigen::Index dim_b = 0;
};

inline BroadcastShape broadcast_shapes(const Shape& a, const Shape& b) {
  BroadcastShape r;
  const int rank = a.rank() > b.rank() ? a.rank() : b.rank();
  std::array<Eigen::Index, Shape::max_rank> dims{};
  for (int k = 1; k <= rank; ++k) {  // k-th dimension from the end
    const Eigen::Index da = k <= a.rank() ? a.dim(a.rank() - k) : 1;
    const Eigen::Index db = k <= b.rank() ? b.dim(b.rank() - k) : 1;
    Eigen::Index d;
    if (da == db || db == 1) {
      d = da;
    } else if (da == 1) {
      d = db;
    } else {
      r.axis = -k;
      r.dim_a = da;
      r.dim_b = db;
      return r;
    }
    dims[static_cast<std::size_t>(rank - k)] = d;
  }
  r.ok = true;
  r.shape = Shape(std::vector<Eigen::Index>(dims.begin(), dims.begin() + rank));
  return r;
}

// `operand` read in the output's layout element for element: it has every
// element of `out` (broadcasting only added or expanded dimensions of 1).
inline bool is_full(const Shape& operand, const Shape& out) { return operand.size() == out.size(); }

// The length of `operand` as a trailing row of `out` (a bias: its shape,
// without leading 1s, is the last dimensions of out), else 0. A single element
// is not a row (it is a scalar).
inline Eigen::Index trailing_row_length(const Shape& operand, const Shape& out) {
  int first = 0;  // the operand without its leading 1s
  while (first < operand.rank() && operand.dim(first) == 1) ++first;
  const int length = operand.rank() - first;
  if (length == 0 || length > out.rank()) return 0;
  for (int k = 1; k <= length; ++k) {
    if (operand.dim(operand.rank() - k) != out.dim(out.rank() - k)) return 0;
  }
  return operand.size();
}

// One contiguous run of the output: `length` elements from `out_offset`; each
// operand starts at offset[k] and moves stride[k] (0 or 1) per element.
template <std::size_t N>
struct BroadcastRun {
  Eigen::Index out_offset = 0;
  Eigen::Index length = 0;
  std::array<Eigen::Index, N> offset{};
  std::array<Eigen::Index, N> stride{};
};

template <std::size_t N>
class BroadcastWalk {
 public:
  // Every operand must broadcast to `out` (broadcast_shapes agrees).
  BroadcastWalk(const Shape& out, const std::array<Shape, N>& operands) : size_(out.size()) {
    constexpr int R = Shape::max_rank;
    // Padded to rank 4 at the front; an operand's stride is 0 along the
    // dimensions it repeats.
    std::array<Eigen::Index, R> dims{};
    std::array<std::array<Eigen::Index, R>, N> strides{};
    const int pad = R - out.rank();
    for (int i = 0; i < R; ++i) dims[static_cast<std::size_t>(i)] = i < pad ? 1 : out.dim(i - pad);
    for (std::size_t k = 0; k < N; ++k) {
      const Shape& s = operands[k];
      Eigen::Index stride = 1;
      for (int i = R - 1; i >= 0; --i) {
        const int j = i - (R - s.rank());
        const Eigen::Index d = j >= 0 ? s.dim(j) : 1;
        strides[k][static_cast<std::size_t>(i)] = d == 1 ? 0 : stride;
        stride *= d;
      }
    }
    // Drop dimensions of 1, then merge a dimension into the next (inner) one
    // when every operand walks both as one.
    for (int i = 0; i < R; ++i) {
      const std::size_t u = static_cast<std::size_t>(i);
      if (dims[u] == 1) continue;
      if (rank_ > 0) {
        const std::size_t last = static_cast<std::size_t>(rank_ - 1);
        bool merge = true;
        for (std::size_t k = 0; k < N; ++k) merge = merge && strides_[k][last] == strides[k][u] * dims[u];
        if (merge) {
          dims_[last] *= dims[u];
          for (std::size_t k = 0; k < N; ++k) strides_[k][last] = strides[k][u];
          continue;
        }
      }
      dims_[static_cast<std::size_t>(rank_)] = dims[u];
      for (std::size_t k = 0; k < N; ++k) strides_[k][static_cast<std::size_t>(rank_)] = strides[k][u];
      ++rank_;
    }
    if (rank_ == 0) {  // a single element
      dims_[0] = 1;
      for (std::size_t k = 0; k < N; ++k) strides_[k][0] = 0;
      rank_ = 1;
    }
  }

  // The merged rank (>= 1) and dimensions: the last is the run length.
  int rank() const noexcept { return rank_; }
  Eigen::Index dim(int i) const { return dims_[static_cast<std::size_t>(i)]; }
  Eigen::Index stride(std::size_t operand, int i) const { return strides_[operand][static_cast<std::size_t>(i)]; }

  // body(const BroadcastRun<N>&) for every run, in row-major order. Nothing
  // for an empty output.
  template <class Body>
  void for_each_run(Body&& body) const {
    if (size_ == 0) return;
    const std::size_t inner = static_cast<std::size_t>(rank_ - 1);
    BroadcastRun<N> run;
    run.length = dims_[inner];
    for (std::size_t k = 0; k < N; ++k) run.stride[k] = strides_[k][inner];
    // Up to three outer dimensions, padded with 1s in front.
    std::array<Eigen::Index, 3> outer{1, 1, 1};
    std::array<std::array<Eigen::Index, 3>, N> step{};
    for (int i = 0; i < rank_ - 1; ++i) {
      const std::size_t o = static_cast<std::size_t>(3 - (rank_ - 1) + i);
      outer[o] = dims_[static_cast<std::size_t>(i)];
      for (std::size_t k = 0; k < N; ++k) step[k][o] = strides_[k][static_cast<std::size_t>(i)];
    }
    for (Eigen::Index i0 = 0; i0 < outer[0]; ++i0) {
      for (Eigen::Index i1 = 0; i1 < outer[1]; ++i1) {
        for (Eigen::Index i2 = 0; i2 < outer[2]; ++i2) {
          for (std::size_t k = 0; k < N; ++k) run.offset[k] = i0 * step[k][0] + i1 * step[k][1] + i2 * step[k][2];
          body(static_cast<const BroadcastRun<N>&>(run));
          run.out_offset += run.length;
        }
      }
    }
  }

 private:
  Eigen::Index size_;
  int rank_ = 0;
  std::array<Eigen::Index, Shape::max_rank> dims_{};
  std::array<std::array<Eigen::Index, Shape::max_rank>, N> strides_{};
};

// reduced += full summed over the broadcast axes of `operand`: `full` has the
// shape `out`, `reduced` the shape `operand` (which broadcasts to out). The
// additions run in the output's row-major order.
template <class T>
void sum_to_shape(const T* full, const Shape& out, T* reduced, const Shape& operand) {
  using ConstRun = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;
  using Run = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Unaligned>;
  const BroadcastWalk<1> walk(out, {operand});
  walk.for_each_run([&](const BroadcastRun<1>& r) {
    const ConstRun values(full + r.out_offset, r.length);
    if (r.stride[0] == 0) {
      reduced[r.offset[0]] += values.sum();
    } else {
      Run(reduced + r.offset[0], r.length) += values;
    }
  });
}

}  // namespace momnet::kernels
