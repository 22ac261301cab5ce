// Element-wise functions of broadcast operands, as plain kernels: no tape,
// raw pointers and shapes (kernels/broadcast.hpp has the rules).
//
// A function is given as a callable taking Eigen array expressions of equal
// length, one per operand, and returning an array expression, for example
// [](const auto& a, const auto& b) { return a + b; }. Each operand arrives as
// a contiguous map or, where it is repeated along a run, as a constant. The
// reverse form takes (G, Out, operands...) with G the output's gradient and Out
// the output, and returns the contribution to one operand's gradient, which the
// kernel adds in, summed over that operand's broadcast axes.
//
// Paths, chosen from the shapes alone:
//   - every operand has the output's elements (equal shapes): one array
//     expression over the whole 64-byte aligned buffers;
//   - two operands, one a single element (a scalar): the same, with a constant;
//   - two operands, one a trailing row of the output (a bias [D] over
//     [B, T, D]): one expression per row;
//   - anything else: BroadcastWalk's runs.
// Each path is a fixed sequence of operations, so the same call on the same
// data at the same addresses gives the same bits. Buffers given to these
// kernels must be 64-byte aligned (all of momnet's storage is): the whole-buffer
// paths declare them so; rows and runs at other offsets are read through
// Eigen::Unaligned maps.
#pragma once

#include <array>
#include <cstddef>
#include <utility>

#include <Eigen/Core>

#include "momnet/kernels/broadcast.hpp"
#include "momnet/shape.hpp"

namespace momnet::kernels {

namespace elementwise_detail {

template <class T>
using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
template <class T>
using Whole = Eigen::Map<const Array<T>, Eigen::Aligned64>;
template <class T>
using WholeOut = Eigen::Map<Array<T>, Eigen::Aligned64>;
template <class T>
using ConstRun = Eigen::Map<const Array<T>, Eigen::Unaligned>;
template <class T>
using Run = Eigen::Map<Array<T>, Eigen::Unaligned>;

// body(x_0, ..., x_{N-1}): operand k over run r, a map or a constant.
template <class T, std::size_t N, class Body, class... X>
void with_run(const std::array<const T*, N>& in, const BroadcastRun<N>& r, Body& body, const X&... x) {
  constexpr std::size_t k = sizeof...(X);
  if constexpr (k == N) {
    body(x...);
  } else if (r.stride[k] == 0) {
    with_run(in, r, body, x..., Array<T>::Constant(r.length, in[k][r.offset[k]]));
  } else {
    with_run(in, r, body, x..., ConstRun<T>(in[k] + r.offset[k], r.length));
  }
}

template <class T, std::size_t N, class F>
void forward_run(const F& f, const std::array<const T*, N>& in, T* out, const BroadcastRun<N>& r) {
  auto body = [&](const auto&... x) { Run<T>(out + r.out_offset, r.length) = f(x...); };
  with_run(in, r, body);
}

template <std::size_t K, class T, std::size_t N, class F>
void backward_run(const F& f, const T* g, const T* out, const std::array<const T*, N>& in, T* grad,
                  const BroadcastRun<N>& r) {
  const ConstRun<T> G(g + r.out_offset, r.length);
  const ConstRun<T> Out(out + r.out_offset, r.length);
  auto body = [&](const auto&... x) {
    if (r.stride[K] == 0) {
      grad[r.offset[K]] += f(G, Out, x...).sum();
    } else {
      Run<T>(grad + r.offset[K], r.length) += f(G, Out, x...);
    }
  };
  with_run(in, r, body);
}

template <class T, std::size_t N, class F, std::size_t... I>
void forward_whole(const F& f, const std::array<const T*, N>& in, T* out, Eigen::Index n,
                   std::index_sequence<I...>) {
  WholeOut<T>(out, n) = f(Whole<T>(in[I], n)...);
}

template <class T, std::size_t N, class F, std::size_t... I>
void backward_whole(const F& f, const T* g, const T* out, const std::array<const T*, N>& in, T* grad,
                    Eigen::Index n, std::index_sequence<I...>) {
  WholeOut<T>(grad, n) += f(Whole<T>(g, n), Whole<T>(out, n), Whole<T>(in[I], n)...);
}

// The run of row r when operand `row` (of two) is a trailing row of `length`
// and the other has every element of the output.
template <std::size_t N>
BroadcastRun<N> row_run(std::size_t row, Eigen::Index r, Eigen::Index length) {
  BroadcastRun<N> run;
  run.out_offset = r * length;
  run.length = length;
  for (std::size_t k = 0; k < N; ++k) {
    run.offset[k] = k == row ? 0 : r * length;
    run.stride[k] = 1;
  }
  return run;
}

// Which fast path two operands take: none (-1 for `scalar` or `row`), or the
// operand (0 or 1) that is a single element / a trailing row.
struct Path {
  bool whole = false;
  int scalar = -1;
  int row = -1;
  Eigen::Index row_length = 0;
};

template <std::size_t N>
Path path_of(const std::array<Shape, N>& shapes, const Shape& out) {
  Path p;
  bool all_full = true;
  for (const Shape& s : shapes) all_full = all_full && is_full(s, out);
  p.whole = all_full;
  if constexpr (N == 2) {
    if (all_full) return p;
    for (int k = 0; k < 2; ++k) {
      const Shape& self = shapes[static_cast<std::size_t>(k)];
      const Shape& other = shapes[static_cast<std::size_t>(1 - k)];
      if (!is_full(other, out)) continue;
      if (self.size() == 1) {
        p.scalar = k;
        return p;
      }
      const Eigen::Index length = trailing_row_length(self, out);
      if (length > 0) {
        p.row = k;
        p.row_length = length;
        return p;
      }
    }
  }
  return p;
}

}  // namespace elementwise_detail

// out = f(x_0, ..., x_{N-1}) with every operand broadcast to `out_shape`
// (which must be their broadcast shape). Nothing happens for an empty output.
template <class T, std::size_t N, class F>
void broadcast_map(const F& f, const std::array<const T*, N>& in, const std::array<Shape, N>& shapes, T* out,
                   const Shape& out_shape) {
  namespace d = elementwise_detail;
  const Eigen::Index n = out_shape.size();
  if (n == 0) return;
  const d::Path p = d::path_of(shapes, out_shape);
  if (p.whole) {
    d::forward_whole(f, in, out, n, std::make_index_sequence<N>{});
  } else if constexpr (N == 2) {
    if (p.scalar == 1) {
      d::WholeOut<T>(out, n) = f(d::Whole<T>(in[0], n), d::Array<T>::Constant(n, in[1][0]));
    } else if (p.scalar == 0) {
      d::WholeOut<T>(out, n) = f(d::Array<T>::Constant(n, in[0][0]), d::Whole<T>(in[1], n));
    } else if (p.row >= 0) {
      const Eigen::Index rows = n / p.row_length;
      for (Eigen::Index r = 0; r < rows; ++r) {
        d::forward_run(f, in, out, d::row_run<N>(static_cast<std::size_t>(p.row), r, p.row_length));
      }
    } else {
      BroadcastWalk<N>(out_shape, shapes).for_each_run([&](const BroadcastRun<N>& r) { d::forward_run(f, in, out, r); });
    }
  } else {
    BroadcastWalk<N>(out_shape, shapes).for_each_run([&](const BroadcastRun<N>& r) { d::forward_run(f, in, out, r); });
  }
}

// grad_K += f(G, Out, x_0, ..., x_{N-1}) summed over operand K's broadcast
// axes: `grad` has shapes[K], `g` and `out` have out_shape.
template <std::size_t K, class T, std::size_t N, class F>
void broadcast_map_backward(const F& f, const T* g, const T* out, const std::array<const T*, N>& in,
                            const std::array<Shape, N>& shapes, const Shape& out_shape, T* grad) {
  static_assert(K < N, "momnet::kernels::broadcast_map_backward: operand index out of range");
  namespace d = elementwise_detail;
  const Eigen::Index n = out_shape.size();
  if (n == 0) return;
  const d::Path p = d::path_of(shapes, out_shape);
  if (p.whole) {
    d::backward_whole(f, g, out, in, grad, n, std::make_index_sequence<N>{});
  } else if constexpr (N == 2) {
    if (p.scalar >= 0) {
      const d::Whole<T> G(g, n), Out(out, n);
      if (p.scalar == 1) {
        const auto x = f(G, Out, d::Whole<T>(in[0], n), d::Array<T>::Constant(n, in[1][0]));
        if (K == 1) {
          grad[0] += x.sum();
        } else {
          d::WholeOut<T>(grad, n) += x;
        }
      } else {
        const auto x = f(G, Out, d::Array<T>::Constant(n, in[0][0]), d::Whole<T>(in[1], n));
        if (K == 0) {
          grad[0] += x.sum();
        } else {
          d::WholeOut<T>(grad, n) += x;
        }
      }
    } else if (p.row >= 0) {
      const Eigen::Index rows = n / p.row_length;
      for (Eigen::Index r = 0; r < rows; ++r) {
        d::backward_run<K>(f, g, out, in, grad, d::row_run<N>(static_cast<std::size_t>(p.row), r, p.row_length));
      }
    } else {
      BroadcastWalk<N>(out_shape, shapes).for_each_run(
          [&](const BroadcastRun<N>& r) { d::backward_run<K>(f, g, out, in, grad, r); });
    }
  } else {
    BroadcastWalk<N>(out_shape, shapes).for_each_run(
        [&](const BroadcastRun<N>& r) { d::backward_run<K>(f, g, out, in, grad, r); });
  }
}

}  // namespace momnet::kernels
