// flatten and the Flatten layer, with PyTorch's semantics: dimensions
// start_dim..end_dim (inclusive; negative ones count from the end) merged
// into one, [N, C, H, W] -> [N, C * H * W] by default. A view of x's
// storage (reshape): no copy. A scalar reads as rank 1 and gives [1].
//
// The default start_dim is 1, nn.Flatten's (torch.flatten's is 0: write
// flatten(x, 0) for it).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "momnet/ops/checks.hpp"
#include "momnet/ops/shape_ops.hpp"
#include "momnet/tape.hpp"

namespace momnet {

template <class T>
Var<T> flatten(const Var<T>& x, int start_dim = 1, int end_dim = -1) {
  const char* name = "momnet::flatten";
  detail::common_tape(name, x);
  const Shape shape = x.shape();
  const int rank = shape.rank() == 0 ? 1 : shape.rank();
  const auto wrapped = [&](int dim, const char* which) {
    const int d = dim < 0 ? dim + rank : dim;
    if (d < 0 || d >= rank) {
      throw std::out_of_range(std::string(name) + ": " + which + " " + std::to_string(dim) + " is outside [" +
                              std::to_string(-rank) + ", " + std::to_string(rank - 1) + "] for shape " +
                              shape.to_string());
    }
    return d;
  };
  const int start = wrapped(start_dim, "start_dim");
  const int end = wrapped(end_dim, "end_dim");
  if (start > end) {
    throw std::invalid_argument(std::string(name) + ": start_dim " + std::to_string(start_dim) +
                                " comes after end_dim " + std::to_string(end_dim) + " for shape " +
                                shape.to_string());
  }
  if (shape.rank() == 0) return reshape(x, Shape{1});
  std::vector<Eigen::Index> dims;
  Eigen::Index merged = 1;
  for (int k = 0; k < shape.rank(); ++k) {
    if (k < start || k > end) {
      dims.push_back(shape.dim(k));
    } else {
      // Only a value with a zero elsewhere can have dimensions whose product overflows.
      if (shape.dim(k) != 0 && merged > Shape::max_size / shape.dim(k)) {
        throw std::length_error(std::string(name) + ": dimensions " + std::to_string(start_dim) + " to " +
                                std::to_string(end_dim) + " of " + shape.to_string() + " merge into more than " +
                                std::to_string(Shape::max_size) + " elements");
      }
      merged *= shape.dim(k);
      if (k == end) dims.push_back(merged);
    }
  }
  return reshape(x, Shape(dims));
}

template <class T>
class Flatten {
 public:
  using Scalar = T;
  explicit Flatten(int start_dim = 1, int end_dim = -1) noexcept : start_dim_(start_dim), end_dim_(end_dim) {}
  Var<T> forward(Tape<T>&, const Var<T>& x) { return flatten(x, start_dim_, end_dim_); }
  template <class Visitor>
  void visit_state(Visitor&) noexcept {}
  template <class Visitor>
  void visit_parameters(Visitor&&) noexcept {}
  int start_dim() const noexcept { return start_dim_; }
  int end_dim() const noexcept { return end_dim_; }

 private:
  int start_dim_;
  int end_dim_;
};

}  // namespace momnet
