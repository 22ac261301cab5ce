// Elementwise binary operations with broadcasting: add, sub, mul, div.
// Operands have the same shape, or one is a row of the other's columns (a
// bias, shape [cols] or [1, cols]) repeated down the rows, or one is a single
// element. The gradient of a broadcast operand is summed over the repeats.
#pragma once

#include "momnet/ops/checks.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {
namespace detail {

enum class Broadcast { none, row_a, row_b, scalar_a, scalar_b };

inline Broadcast broadcast_of(const char* operation, const Shape& a, const Shape& b) {
  if (a == b) return Broadcast::none;
  if (b.size() == 1) return Broadcast::scalar_b;
  if (a.size() == 1) return Broadcast::scalar_a;
  if (is_row_shape(b) && a.rank() >= 2 && b.size() == a.cols()) return Broadcast::row_b;
  if (is_row_shape(a) && b.rank() >= 2 && a.size() == b.cols()) return Broadcast::row_a;
  throw_shapes(operation, a, b,
               "shapes do not broadcast (need equal shapes, a row matching the columns, or a "
               "single element)");
}

template <class T>
using ArrayMatrix = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstArrayMatrixView = Eigen::Map<const ArrayMatrix<T>, Eigen::Aligned64>;

// Calls body(expression) with `data` read as a rows x cols array, repeating a
// row (`row`) or a single element (`scalar`) when the operand was broadcast.
template <class T, class Body>
void with_expanded(const T* data, const Shape& shape, bool row, bool scalar, Eigen::Index rows,
                   Eigen::Index cols, Body&& body) {
  if (scalar) {
    body(ArrayMatrix<T>::Constant(rows, cols, data[0]));
  } else if (row) {
    body(ConstArrayMatrixView<T>(data, 1, cols).replicate(rows, 1));
  } else {
    body(ConstArrayMatrixView<T>(data, shape.rows(), shape.cols()));
  }
}

// Adds `contribution` (rows x cols) into the gradient of an operand,
// summing over the repeats when the operand was broadcast.
template <class T, class Expression>
void accumulate_reduced(T* grad, bool row, bool scalar, Eigen::Index rows, Eigen::Index cols,
                        const Expression& contribution) {
  if (scalar) {
    grad[0] += contribution.sum();
  } else if (row) {
    Eigen::Map<ArrayMatrix<T>, Eigen::Aligned64>(grad, 1, cols) += contribution.colwise().sum();
  } else {
    Eigen::Map<ArrayMatrix<T>, Eigen::Aligned64>(grad, rows, cols) += contribution;
  }
}

// Op provides value(A, B), grad_a(G, A, B, Out) and grad_b(G, A, B, Out) as
// array expressions over full rows x cols operands.
template <class Op, class T>
Var<T> elementwise(const char* operation, const Var<T>& a, const Var<T>& b) {
  Tape<T>& tape = common_tape(operation, a, b);
  const Shape sa = a.shape();
  const Shape sb = b.shape();
  const Broadcast mode = broadcast_of(operation, sa, sb);
  const bool a_small = mode == Broadcast::row_a || mode == Broadcast::scalar_a;
  const Shape out_shape = a_small ? sb : sa;
  const Eigen::Index rows = out_shape.rows();
  const Eigen::Index cols = out_shape.cols();
  const bool row_a = mode == Broadcast::row_a, scalar_a = mode == Broadcast::scalar_a;
  const bool row_b = mode == Broadcast::row_b, scalar_b = mode == Broadcast::scalar_b;
  const T* pa = a.data();
  const T* pb = b.data();
  T* out = tape.allocate(out_shape.size());
  Eigen::Map<ArrayMatrix<T>, Eigen::Aligned64> result(out, rows, cols);
  with_expanded(pa, sa, row_a, scalar_a, rows, cols, [&](const auto& A) {
    with_expanded(pb, sb, row_b, scalar_b, rows, cols, [&](const auto& B) { result = Op::value(A, B); });
  });
  return tape.record(out_shape, out, {a, b}, [=](const T* g) {
    const ConstArrayMatrixView<T> G(g, rows, cols);
    const ConstArrayMatrixView<T> Out(out, rows, cols);
    with_expanded(pa, sa, row_a, scalar_a, rows, cols, [&](const auto& A) {
      with_expanded(pb, sb, row_b, scalar_b, rows, cols, [&](const auto& B) {
        if (a.requires_grad()) {
          accumulate_reduced(a.tape().gradient_for(a), row_a, scalar_a, rows, cols,
                             Op::grad_a(G, A, B, Out));
        }
        if (b.requires_grad()) {
          accumulate_reduced(b.tape().gradient_for(b), row_b, scalar_b, rows, cols,
                             Op::grad_b(G, A, B, Out));
        }
      });
    });
  });
}

struct AddOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a + b; }
  template <class G, class A, class B, class O>
  static const G& grad_a(const G& g, const A&, const B&, const O&) { return g; }
  template <class G, class A, class B, class O>
  static const G& grad_b(const G& g, const A&, const B&, const O&) { return g; }
};
struct SubOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a - b; }
  template <class G, class A, class B, class O>
  static const G& grad_a(const G& g, const A&, const B&, const O&) { return g; }
  template <class G, class A, class B, class O>
  static auto grad_b(const G& g, const A&, const B&, const O&) { return -g; }
};
struct MulOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a * b; }
  template <class G, class A, class B, class O>
  static auto grad_a(const G& g, const A&, const B& b, const O&) { return g * b; }
  template <class G, class A, class B, class O>
  static auto grad_b(const G& g, const A& a, const B&, const O&) { return g * a; }
};
struct DivOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a / b; }
  template <class G, class A, class B, class O>
  static auto grad_a(const G& g, const A&, const B& b, const O&) { return g / b; }
  // d(a/b)/db = -(a/b)/b
  template <class G, class A, class B, class O>
  static auto grad_b(const G& g, const A&, const B& b, const O& out) { return -(g * out) / b; }
};

}  // namespace detail

template <class T>
Var<T> add(const Var<T>& a, const Var<T>& b) {
  return detail::elementwise<detail::AddOp>("momnet::add", a, b);
}
template <class T>
Var<T> sub(const Var<T>& a, const Var<T>& b) {
  return detail::elementwise<detail::SubOp>("momnet::sub", a, b);
}
template <class T>
Var<T> mul(const Var<T>& a, const Var<T>& b) {
  return detail::elementwise<detail::MulOp>("momnet::mul", a, b);
}
template <class T>
Var<T> div(const Var<T>& a, const Var<T>& b) {
  return detail::elementwise<detail::DivOp>("momnet::div", a, b);
}

template <class T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) { return add(a, b); }
template <class T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) { return sub(a, b); }
template <class T>
Var<T> operator*(const Var<T>& a, const Var<T>& b) { return mul(a, b); }
template <class T>
Var<T> operator/(const Var<T>& a, const Var<T>& b) { return div(a, b); }

}  // namespace momnet
