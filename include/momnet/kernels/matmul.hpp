// The plain kernels behind matmul() and linear() (ops/matmul.hpp): GEMMs over
// contiguous row-major storage, looped over broadcast batch dimensions. No
// tape, no exceptions: plan_matmul() reports a bad pair of shapes as a status
// and the operation turns it into a message.
//
// Shapes (torch.matmul's rules, ranks 1 to 4):
//   - a rank >= 2 operand is [batch..., rows, cols]; the transpose flags swap
//     its last two dimensions;
//   - a rank-1 a of k elements is the row [1, k], a rank-1 b the column
//     [k, 1], and that dimension is dropped from the result ([k] x [k] is a
//     scalar); a transpose flag on a rank-1 operand is refused;
//   - the batch dimensions (all but the last two) broadcast NumPy-style: they
//     align from the right, and a 1 repeats to match the other side.
//
// Alignment: a value's storage starts 64-byte aligned, so the whole-buffer
// products (rank 2 x rank 2, linear, a batch folded into rows) map it with
// Aligned64, as views.hpp does. A matrix at an offset inside a batch is not
// necessarily aligned and is mapped Unaligned. Either way, the same shapes take
// the same path, so a recomputed product is bit-for-bit the same.
//
// Empty values: a dimension of 0 makes an empty result (no product is run); an
// inner dimension of 0 makes a result of zeros.
#pragma once

#include <array>

#include <Eigen/Core>

#include "momnet/shape.hpp"
#include "momnet/views.hpp"

namespace momnet::kernels {

// C = op(L) op(R), or C += op(L) op(R) when `accumulate`; L is stored
// l_rows x l_cols, R r_rows x r_cols, C is op(L).rows() x op(R).cols(), all
// row-major. Alignment is Eigen::Aligned64 (every pointer starts a buffer) or
// Eigen::Unaligned.
template <int Alignment, class T>
void gemm(bool accumulate, bool transpose_l, const T* l, Eigen::Index l_rows, Eigen::Index l_cols, bool transpose_r,
          const T* r, Eigen::Index r_rows, Eigen::Index r_cols, T* c) {
  using In = Eigen::Map<const RowMatrix<T>, Alignment>;
  using Out = Eigen::Map<RowMatrix<T>, Alignment>;
  const Eigen::Index rows = transpose_l ? l_cols : l_rows;
  const Eigen::Index inner = transpose_l ? l_rows : l_cols;
  const Eigen::Index cols = transpose_r ? r_rows : r_cols;
  if (rows == 0 || cols == 0) return;
  Out C(c, rows, cols);
  if (inner == 0) {
    if (!accumulate) C.setZero();
    return;
  }
  const In L(l, l_rows, l_cols);
  const In R(r, r_rows, r_cols);
  const auto store = [&C, accumulate](const auto& product) {
    if (accumulate) {
      C.noalias() += product;
    } else {
      C.noalias() = product;
    }
  };
  if (!transpose_l && !transpose_r) store(L * R);
  if (!transpose_l && transpose_r) store(L * R.transpose());
  if (transpose_l && !transpose_r) store(L.transpose() * R);
  if (transpose_l && transpose_r) store(L.transpose() * R.transpose());
}

// ---- matmul --------------------------------------------------------------------

enum class MatmulStatus {
  ok,
  bad_rank,          // an operand of rank 0 or above 4
  transposed_vector, // a transpose flag on a rank-1 operand
  inner_mismatch,    // op(a) is m x k, op(b) is k' x n with k != k'
  batch_mismatch,    // batch dimensions that do not broadcast
};

// How op(a) op(b) runs: one stored matrix of each operand (a_rows x a_cols,
// b_rows x b_cols), op(a) m x k, op(b) k x n, and `batch` output matrices
// whose batch index maps to a matrix of a and of b through the broadcast.
struct MatmulPlan {
  bool transpose_a = false;
  bool transpose_b = false;
  Eigen::Index a_rows = 0, a_cols = 0, b_rows = 0, b_cols = 0;
  Eigen::Index m = 0, k = 0, n = 0;
  // Batch dimensions, left-padded with 1 to two (ranks are at most 4).
  std::array<Eigen::Index, 2> batch_dims{{1, 1}};
  std::array<Eigen::Index, 2> a_batch{{1, 1}};
  std::array<Eigen::Index, 2> b_batch{{1, 1}};
  Eigen::Index batch = 1;  // output matrices: batch_dims[0] * batch_dims[1]
  // b is one matrix shared by every batch and a is untransposed and not
  // broadcast: the batch folds into rows, one GEMM of (batch m) x k by k x n.
  // Always true for rank 2 x rank 2.
  bool fold = true;
  Shape out;

  // The matrix of a (of b) that output matrix i reads.
  Eigen::Index a_matrix(Eigen::Index i) const noexcept { return source(a_batch, i); }
  Eigen::Index b_matrix(Eigen::Index i) const noexcept { return source(b_batch, i); }

 private:
  Eigen::Index source(const std::array<Eigen::Index, 2>& dims, Eigen::Index i) const noexcept {
    const Eigen::Index i0 = i / batch_dims[1], i1 = i % batch_dims[1];
    return (dims[0] == 1 ? 0 : i0) * dims[1] + (dims[1] == 1 ? 0 : i1);
  }
};

// The plan of op(a) op(b) for operands of shapes `a` and `b`, in `plan`. On
// inner_mismatch, the plan holds the stored sizes and m, k, n (for a message).
inline MatmulStatus plan_matmul(const Shape& a, const Shape& b, bool transpose_a, bool transpose_b,
                                MatmulPlan& plan) {
  const int ra = a.rank(), rb = b.rank();
  if (ra < 1 || ra > 4 || rb < 1 || rb > 4) return MatmulStatus::bad_rank;
  if ((ra == 1 && transpose_a) || (rb == 1 && transpose_b)) return MatmulStatus::transposed_vector;
  plan = MatmulPlan{};
  plan.transpose_a = transpose_a;
  plan.transpose_b = transpose_b;
  // A vector a is the row [1, k], a vector b the column [k, 1].
  plan.a_rows = ra == 1 ? 1 : a.dim(ra - 2);
  plan.a_cols = a.dim(ra - 1);
  plan.b_rows = b.dim(rb - (rb == 1 ? 1 : 2));
  plan.b_cols = rb == 1 ? 1 : b.dim(rb - 1);
  plan.m = transpose_a ? plan.a_cols : plan.a_rows;
  plan.k = transpose_a ? plan.a_rows : plan.a_cols;
  const Eigen::Index kb = transpose_b ? plan.b_cols : plan.b_rows;
  plan.n = transpose_b ? plan.b_rows : plan.b_cols;
  if (plan.k != kb) return MatmulStatus::inner_mismatch;

  // Batch dimensions, aligned from the right into two slots.
  const int na = ra > 2 ? ra - 2 : 0, nb = rb > 2 ? rb - 2 : 0;
  for (int i = 0; i < na; ++i) plan.a_batch[static_cast<std::size_t>(2 - na + i)] = a.dim(i);
  for (int i = 0; i < nb; ++i) plan.b_batch[static_cast<std::size_t>(2 - nb + i)] = b.dim(i);
  for (std::size_t d = 0; d < 2; ++d) {
    const Eigen::Index x = plan.a_batch[d], y = plan.b_batch[d];
    if (x != y && x != 1 && y != 1) return MatmulStatus::batch_mismatch;
    plan.batch_dims[d] = x == 1 ? y : x;
  }
  plan.batch = plan.batch_dims[0] * plan.batch_dims[1];
  const bool b_shared = plan.b_batch[0] == 1 && plan.b_batch[1] == 1;
  const bool a_whole = plan.a_batch == plan.batch_dims;
  plan.fold = b_shared && a_whole && !transpose_a;

  // The result: the broadcast batch dimensions, then m unless a is a vector,
  // then n unless b is a vector.
  const int batch_rank = na > nb ? na : nb;
  std::array<Eigen::Index, 4> dims{};
  int rank = 0;
  for (int i = 2 - batch_rank; i < 2; ++i) dims[static_cast<std::size_t>(rank++)] = plan.batch_dims[static_cast<std::size_t>(i)];
  if (ra > 1) dims[static_cast<std::size_t>(rank++)] = plan.m;
  if (rb > 1) dims[static_cast<std::size_t>(rank++)] = plan.n;
  switch (rank) {
    case 0: plan.out = Shape{}; break;
    case 1: plan.out = Shape{dims[0]}; break;
    case 2: plan.out = Shape{dims[0], dims[1]}; break;
    case 3: plan.out = Shape{dims[0], dims[1], dims[2]}; break;
    default: plan.out = Shape{dims[0], dims[1], dims[2], dims[3]}; break;
  }
  return MatmulStatus::ok;
}

namespace detail {

// The batched products, one GEMM per output matrix: Aligned64 when there is a
// single one (whole buffers), else Unaligned (matrices at offsets).
template <int Alignment, class T>
void batched_forward(const MatmulPlan& p, const T* a, const T* b, T* c) {
  const Eigen::Index a_size = p.a_rows * p.a_cols, b_size = p.b_rows * p.b_cols, c_size = p.m * p.n;
  for (Eigen::Index i = 0; i < p.batch; ++i) {
    gemm<Alignment>(false, p.transpose_a, a + p.a_matrix(i) * a_size, p.a_rows, p.a_cols, p.transpose_b,
                    b + p.b_matrix(i) * b_size, p.b_rows, p.b_cols, c + i * c_size);
  }
}

template <int Alignment, class T>
void batched_backward_a(const MatmulPlan& p, const T* g, const T* b, T* ga) {
  const Eigen::Index a_size = p.a_rows * p.a_cols, b_size = p.b_rows * p.b_cols, g_size = p.m * p.n;
  for (Eigen::Index i = 0; i < p.batch; ++i) {
    const T* gi = g + i * g_size;
    const T* bi = b + p.b_matrix(i) * b_size;
    T* gai = ga + p.a_matrix(i) * a_size;
    if (!p.transpose_a) {  // g op(b)^T
      gemm<Alignment>(true, false, gi, p.m, p.n, !p.transpose_b, bi, p.b_rows, p.b_cols, gai);
    } else {  // op(b) g^T
      gemm<Alignment>(true, p.transpose_b, bi, p.b_rows, p.b_cols, true, gi, p.m, p.n, gai);
    }
  }
}

template <int Alignment, class T>
void batched_backward_b(const MatmulPlan& p, const T* a, const T* g, T* gb) {
  const Eigen::Index a_size = p.a_rows * p.a_cols, b_size = p.b_rows * p.b_cols, g_size = p.m * p.n;
  for (Eigen::Index i = 0; i < p.batch; ++i) {
    const T* ai = a + p.a_matrix(i) * a_size;
    const T* gi = g + i * g_size;
    T* gbi = gb + p.b_matrix(i) * b_size;
    if (!p.transpose_b) {  // op(a)^T g
      gemm<Alignment>(true, !p.transpose_a, ai, p.a_rows, p.a_cols, false, gi, p.m, p.n, gbi);
    } else {  // g^T op(a)
      gemm<Alignment>(true, true, gi, p.m, p.n, p.transpose_a, ai, p.a_rows, p.a_cols, gbi);
    }
  }
}

}  // namespace detail

// c = op(a) op(b), c of plan.out's size.
template <class T>
void matmul_forward(const MatmulPlan& p, const T* a, const T* b, T* c) {
  if (p.fold) {
    gemm<Eigen::Aligned64>(false, false, a, p.batch * p.a_rows, p.a_cols, p.transpose_b, b, p.b_rows, p.b_cols, c);
  } else if (p.batch == 1) {
    detail::batched_forward<Eigen::Aligned64>(p, a, b, c);
  } else {
    detail::batched_forward<Eigen::Unaligned>(p, a, b, c);
  }
}

// ga += d(<g, op(a) op(b)>)/da: per output matrix, op(a)'s gradient is
// g op(b)^T, transposed back when a was read transposed (op(b) g^T); a matrix
// of a read by several batches (broadcast) receives their sum, in batch order.
template <class T>
void matmul_backward_a(const MatmulPlan& p, const T* g, const T* b, T* ga) {
  if (p.fold) {
    gemm<Eigen::Aligned64>(true, false, g, p.batch * p.m, p.n, !p.transpose_b, b, p.b_rows, p.b_cols, ga);
  } else if (p.batch == 1) {
    detail::batched_backward_a<Eigen::Aligned64>(p, g, b, ga);
  } else {
    detail::batched_backward_a<Eigen::Unaligned>(p, g, b, ga);
  }
}

// gb += d(<g, op(a) op(b)>)/db: op(a)^T g per output matrix, transposed back
// when b was read transposed (g^T op(a)); summed over the batches that share
// a matrix of b. Folded, that sum is the inner dimension of one GEMM.
template <class T>
void matmul_backward_b(const MatmulPlan& p, const T* a, const T* g, T* gb) {
  if (p.fold) {
    const Eigen::Index rows = p.batch * p.m;
    if (!p.transpose_b) {
      gemm<Eigen::Aligned64>(true, true, a, rows, p.a_cols, false, g, rows, p.n, gb);
    } else {
      gemm<Eigen::Aligned64>(true, true, g, rows, p.n, false, a, rows, p.a_cols, gb);
    }
  } else if (p.batch == 1) {
    detail::batched_backward_b<Eigen::Aligned64>(p, a, g, gb);
  } else {
    detail::batched_backward_b<Eigen::Unaligned>(p, a, g, gb);
  }
}

// ---- linear --------------------------------------------------------------------
// x is `rows` x in (every leading dimension folded into rows), weight out x in,
// bias out values or nullptr, y rows x out: whole buffers, Aligned64.

// y = x weight^T + bias.
template <class T>
void linear_forward(const T* x, const T* weight, const T* bias, T* y, Eigen::Index rows, Eigen::Index in,
                    Eigen::Index out) {
  gemm<Eigen::Aligned64>(false, false, x, rows, in, true, weight, out, in, y);
  if (bias != nullptr && rows != 0 && out != 0) {
    MatrixView<T>(y, rows, out).rowwise() += ConstMatrixView<T>(bias, 1, out).row(0);
  }
}

// gx += g weight.
template <class T>
void linear_backward_x(const T* g, const T* weight, T* gx, Eigen::Index rows, Eigen::Index in, Eigen::Index out) {
  gemm<Eigen::Aligned64>(true, false, g, rows, out, false, weight, out, in, gx);
}

// gweight += g^T x.
template <class T>
void linear_backward_weight(const T* g, const T* x, T* gweight, Eigen::Index rows, Eigen::Index in,
                            Eigen::Index out) {
  gemm<Eigen::Aligned64>(true, true, g, rows, out, false, x, rows, in, gweight);
}

// gbias += the column sums of g.
template <class T>
void linear_backward_bias(const T* g, T* gbias, Eigen::Index rows, Eigen::Index out) {
  if (rows == 0 || out == 0) return;
  MatrixView<T>(gbias, 1, out) += ConstMatrixView<T>(g, rows, out).colwise().sum();
}

}  // namespace momnet::kernels
