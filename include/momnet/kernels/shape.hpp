// Moving elements between shapes, as plain kernels: no tape, raw pointers.
//
// Along an axis (concat, slice): a value read as outer x axis x inner
// (element (o, a, i) at (o * axis + a) * inner + i), each kernel copies or adds
// a range of `count` positions along the axis, for every o, as contiguous runs
// of count * inner elements.
//
// Permutation (permute, transpose): the output's axis k is the input's axis
// perm[k]; values of rank up to 4.
//
// Copies are exact and adds are one addition per element, so every kernel
// gives the same bits on every call.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>

#include <Eigen/Core>

#include "momnet/shape.hpp"

namespace momnet::kernels {

// dst(o, dst_begin + a, i) = src(o, src_begin + a, i), a in [0, count), for
// every o in [0, outer) and i in [0, inner); src has src_axis positions along
// the axis, dst has dst_axis.
template <class T>
void copy_along_axis(const T* src, Eigen::Index src_axis, Eigen::Index src_begin, T* dst, Eigen::Index dst_axis,
                     Eigen::Index dst_begin, Eigen::Index count, Eigen::Index outer, Eigen::Index inner) {
  const Eigen::Index run = count * inner;
  if (run == 0) return;
  for (Eigen::Index o = 0; o < outer; ++o) {
    std::memcpy(dst + (o * dst_axis + dst_begin) * inner, src + (o * src_axis + src_begin) * inner,
                static_cast<std::size_t>(run) * sizeof(T));
  }
}

// As copy_along_axis, adding into dst.
template <class T>
void add_along_axis(const T* src, Eigen::Index src_axis, Eigen::Index src_begin, T* dst, Eigen::Index dst_axis,
                    Eigen::Index dst_begin, Eigen::Index count, Eigen::Index outer, Eigen::Index inner) {
  const Eigen::Index run = count * inner;
  for (Eigen::Index o = 0; o < outer; ++o) {
    const T* s = src + (o * src_axis + src_begin) * inner;
    T* d = dst + (o * dst_axis + dst_begin) * inner;
    for (Eigen::Index e = 0; e < run; ++e) d[e] += s[e];
  }
}

// How a permutation walks its input: the output's dimensions and, for each,
// the input's stride (in elements), padded in front to rank 4 with length-1
// dimensions.
struct PermutedWalk {
  std::array<Eigen::Index, 4> dims{{1, 1, 1, 1}};
  std::array<Eigen::Index, 4> strides{{0, 0, 0, 0}};
};

// The walk for an input of `shape` whose output axis k is input axis perm[k]
// (perm: a permutation of [0, shape.rank()), already validated).
inline PermutedWalk permuted_walk(const Shape& shape, const int* perm) {
  const int rank = shape.rank();
  std::array<Eigen::Index, 4> in_strides{};
  Eigen::Index stride = 1;
  for (int k = rank; k-- > 0;) {
    in_strides[static_cast<std::size_t>(k)] = stride;
    stride *= shape.dim(k);
  }
  PermutedWalk walk;
  const int pad = 4 - rank;
  for (int k = 0; k < rank; ++k) {
    const auto from = static_cast<std::size_t>(perm[k]);
    walk.dims[static_cast<std::size_t>(pad + k)] = shape.dim(perm[k]);
    walk.strides[static_cast<std::size_t>(pad + k)] = in_strides[from];
  }
  return walk;
}

namespace shape_detail {

// Calls f(input offset, output offset) for every element, in output order.
template <class F>
void walk(const PermutedWalk& w, F&& f) {
  Eigen::Index out = 0;
  for (Eigen::Index j0 = 0; j0 < w.dims[0]; ++j0) {
    for (Eigen::Index j1 = 0; j1 < w.dims[1]; ++j1) {
      for (Eigen::Index j2 = 0; j2 < w.dims[2]; ++j2) {
        const Eigen::Index base = j0 * w.strides[0] + j1 * w.strides[1] + j2 * w.strides[2];
        for (Eigen::Index j3 = 0; j3 < w.dims[3]; ++j3) f(base + j3 * w.strides[3], out++);
      }
    }
  }
}

}  // namespace shape_detail

// out (in output order) = the input x permuted by the walk.
template <class T>
void permute(const T* x, T* out, const PermutedWalk& w) {
  shape_detail::walk(w, [x, out](Eigen::Index in, Eigen::Index o) { out[o] = x[in]; });
}

// gx += g permuted back: gx[input offset] += g[output offset].
template <class T>
void permute_backward(const T* g, T* gx, const PermutedWalk& w) {
  shape_detail::walk(w, [g, gx](Eigen::Index in, Eigen::Index o) { gx[in] += g[o]; });
}

}  // namespace momnet::kernels
