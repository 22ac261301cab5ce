// Element-wise operations of several Vars, with NumPy broadcasting on
// trailing dimensions (ranks 0 to 4): add, sub, mul, div (and + - * /),
// maximum, minimum, where, and the comparisons greater, greater_equal, less,
// less_equal, equal, not_equal. Also add, sub, mul, div with a constant on
// either side (x + 1.0, 2.0 * x, 1.0 - x, 1.0 / x).
//
// Broadcasting (kernels/broadcast.hpp): shapes are aligned at their last
// dimension; each pair of dimensions must be equal or one of them 1, and a
// missing leading dimension counts as 1. So [D] goes over [B, T, D],
// [1, C, 1, 1] over [N, C, H, W], [B, 1, T] with [B, S, 1] gives [B, S, T], and
// a single element goes over anything. The gradient of a broadcast operand is
// the output's gradient summed over the axes it was repeated along.
// Incompatible shapes throw std::invalid_argument naming the operation, the
// first incompatible axis and both shapes.
//
// Comparisons return 1 where the relation holds and 0 elsewhere (NaN compares
// false, except in not_equal), as a value that receives no gradient: a mask for
// where() or mul().
#pragma once

#include <array>
#include <stdexcept>
#include <string>

#include "momnet/kernels/broadcast.hpp"
#include "momnet/kernels/elementwise.hpp"
#include "momnet/ops/checks.hpp"
#include "momnet/ops/unary.hpp"
#include "momnet/tape.hpp"
#include "momnet/views.hpp"

namespace momnet {
namespace detail {

inline std::string broadcast_failure(const kernels::BroadcastShape& r) {
  return "shapes do not broadcast (axis " + std::to_string(r.axis) + " from the end: " + std::to_string(r.dim_a) +
         " against " + std::to_string(r.dim_b) + "; aligned at the last axis, dimensions must be equal or 1)";
}

// The broadcast shape of a and b; throws naming `operation` and both shapes.
inline Shape broadcast_or_throw(const char* operation, const Shape& a, const Shape& b) {
  const kernels::BroadcastShape r = kernels::broadcast_shapes(a, b);
  if (!r.ok) throw_shapes(operation, a, b, broadcast_failure(r));
  return r.shape;
}

// Op<T> provides value(A, B), grad_a(G, Out, A, B) and grad_b(G, Out, A, B):
// array expressions of equal-length operands (kernels/elementwise.hpp).
template <template <class> class Op, class T>
Var<T> broadcast_binary(const char* operation, const Var<T>& a, const Var<T>& b) {
  Tape<T>& tape = common_tape(operation, a, b);
  const std::array<Shape, 2> shapes{a.shape(), b.shape()};
  const Shape out_shape = broadcast_or_throw(operation, shapes[0], shapes[1]);
  const std::array<const T*, 2> in{a.data(), b.data()};
  T* out = tape.allocate(out_shape.size());
  kernels::broadcast_map([](const auto& A, const auto& B) { return Op<T>::value(A, B); }, in, shapes, out,
                         out_shape);
  return tape.record_op({a, b}, out_shape, out, [=](Gradients<T>& g) {
    const T* go = g.output(0);
    if (T* ga = g.input(0)) {
      kernels::broadcast_map_backward<0>(
          [](const auto& G, const auto& O, const auto& A, const auto& B) { return Op<T>::grad_a(G, O, A, B); }, go,
          out, in, shapes, out_shape, ga);
    }
    if (T* gb = g.input(1)) {
      kernels::broadcast_map_backward<1>(
          [](const auto& G, const auto& O, const auto& A, const auto& B) { return Op<T>::grad_b(G, O, A, B); }, go,
          out, in, shapes, out_shape, gb);
    }
  });
}

// A 0/1 mask of Op<T>::value(A, B) (a boolean array expression), recorded
// without a gradient.
template <template <class> class Op, class T>
Var<T> broadcast_compare(const char* operation, const Var<T>& a, const Var<T>& b) {
  Tape<T>& tape = common_tape(operation, a, b);
  const std::array<Shape, 2> shapes{a.shape(), b.shape()};
  const Shape out_shape = broadcast_or_throw(operation, shapes[0], shapes[1]);
  T* out = tape.allocate(out_shape.size());
  kernels::broadcast_map(
      [](const auto& A, const auto& B) { return Op<T>::value(A, B).template cast<T>(); },
      std::array<const T*, 2>{a.data(), b.data()}, shapes, out, out_shape);
  return tape.leaf(out_shape, out, false);
}

// The same against a constant.
template <template <class> class Op, class T>
Var<T> compare_constant(const char* operation, const Var<T>& x, T s) {
  Tape<T>& tape = common_tape(operation, x);
  const Eigen::Index n = x.size();
  T* out = tape.allocate(n);
  array_view(out, n) =
      Op<T>::value(array_view(x.data(), n), Eigen::Array<T, Eigen::Dynamic, 1>::Constant(n, s)).template cast<T>();
  return tape.leaf(x.shape(), out, false);
}

template <class T>
struct AddOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a + b; }
  template <class G, class O, class A, class B>
  static G grad_a(const G& g, const O&, const A&, const B&) { return g; }
  template <class G, class O, class A, class B>
  static G grad_b(const G& g, const O&, const A&, const B&) { return g; }
};
template <class T>
struct SubOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a - b; }
  template <class G, class O, class A, class B>
  static G grad_a(const G& g, const O&, const A&, const B&) { return g; }
  template <class G, class O, class A, class B>
  static auto grad_b(const G& g, const O&, const A&, const B&) { return -g; }
};
template <class T>
struct MulOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a * b; }
  template <class G, class O, class A, class B>
  static auto grad_a(const G& g, const O&, const A&, const B& b) { return g * b; }
  template <class G, class O, class A, class B>
  static auto grad_b(const G& g, const O&, const A& a, const B&) { return g * a; }
};
template <class T>
struct DivOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a / b; }
  template <class G, class O, class A, class B>
  static auto grad_a(const G& g, const O&, const A&, const B& b) { return g / b; }
  // d(a/b)/db = -(a/b)/b
  template <class G, class O, class A, class B>
  static auto grad_b(const G& g, const O& out, const A&, const B& b) { return -(g * out) / b; }
};
// NaN propagates: a when a is NaN or larger, else b. Ties split the gradient
// in half between a and b (PyTorch's rule for torch.maximum).
template <class T>
struct MaximumOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return (a > b || a != a).select(a, b); }
  template <class G, class O, class A, class B>
  static auto grad_a(const G& g, const O&, const A& a, const B& b) {
    return (a == b).select(g * T(0.5), (a < b).select(T(0), g));
  }
  template <class G, class O, class A, class B>
  static auto grad_b(const G& g, const O&, const A& a, const B& b) {
    return (a == b).select(g * T(0.5), (a > b).select(T(0), g));
  }
};
template <class T>
struct MinimumOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return (a < b || a != a).select(a, b); }
  template <class G, class O, class A, class B>
  static auto grad_a(const G& g, const O&, const A& a, const B& b) {
    return (a == b).select(g * T(0.5), (a > b).select(T(0), g));
  }
  template <class G, class O, class A, class B>
  static auto grad_b(const G& g, const O&, const A& a, const B& b) {
    return (a == b).select(g * T(0.5), (a < b).select(T(0), g));
  }
};

template <class T>
struct GreaterOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a > b; }
};
template <class T>
struct GreaterEqualOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a >= b; }
};
template <class T>
struct LessOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a < b; }
};
template <class T>
struct LessEqualOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a <= b; }
};
template <class T>
struct EqualOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a == b; }
};
template <class T>
struct NotEqualOp {
  template <class A, class B>
  static auto value(const A& a, const B& b) { return a != b; }
};

}  // namespace detail

// ---- two Vars, broadcast --------------------------------------------------------

template <class T>
Var<T> add(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::AddOp>("momnet::add", a, b);
}
template <class T>
Var<T> sub(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::SubOp>("momnet::sub", a, b);
}
template <class T>
Var<T> mul(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::MulOp>("momnet::mul", a, b);
}
template <class T>
Var<T> div(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::DivOp>("momnet::div", a, b);
}

template <class T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) { return add(a, b); }
template <class T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) { return sub(a, b); }
template <class T>
Var<T> operator*(const Var<T>& a, const Var<T>& b) { return mul(a, b); }
template <class T>
Var<T> operator/(const Var<T>& a, const Var<T>& b) { return div(a, b); }

// The larger of a and b, element by element. NaN in either propagates. Where
// a == b the gradient is split, half to each (as torch.maximum).
template <class T>
Var<T> maximum(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::MaximumOp>("momnet::maximum", a, b);
}
// The smaller of a and b; NaN propagates; ties split the gradient in half.
template <class T>
Var<T> minimum(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_binary<detail::MinimumOp>("momnet::minimum", a, b);
}

// a where condition is nonzero (NaN counts as nonzero), else b; the three
// broadcast together. The gradient goes to a where the condition holds and to
// b elsewhere; the condition receives none.
template <class T>
Var<T> where(const Var<T>& condition, const Var<T>& a, const Var<T>& b) {
  const char* operation = "momnet::where";
  Tape<T>& tape = detail::common_tape(operation, condition, a);
  detail::common_tape(operation, a, b);
  const std::array<Shape, 3> shapes{condition.shape(), a.shape(), b.shape()};
  const kernels::BroadcastShape ca = kernels::broadcast_shapes(shapes[0], shapes[1]);
  const kernels::BroadcastShape all = ca.ok ? kernels::broadcast_shapes(ca.shape, shapes[2]) : ca;
  if (!all.ok) {
    throw std::invalid_argument(std::string(operation) + ": " + detail::broadcast_failure(all) + ": condition " +
                                shapes[0].to_string() + ", a " + shapes[1].to_string() + " and b " +
                                shapes[2].to_string());
  }
  const Shape out_shape = all.shape;
  const std::array<const T*, 3> in{condition.data(), a.data(), b.data()};
  T* out = tape.allocate(out_shape.size());
  kernels::broadcast_map([](const auto& C, const auto& A, const auto& B) { return (C != T(0)).select(A, B); }, in,
                         shapes, out, out_shape);
  return tape.record_op({a, b}, out_shape, out, [=](Gradients<T>& g) {
    const T* go = g.output(0);
    if (T* ga = g.input(0)) {
      kernels::broadcast_map_backward<1>(
          [](const auto& G, const auto&, const auto& C, const auto&, const auto&) {
            return (C != T(0)).select(G, T(0));
          },
          go, out, in, shapes, out_shape, ga);
    }
    if (T* gb = g.input(1)) {
      kernels::broadcast_map_backward<2>(
          [](const auto& G, const auto&, const auto& C, const auto&, const auto&) {
            return (C != T(0)).select(T(0), G);
          },
          go, out, in, shapes, out_shape, gb);
    }
  });
}

// ---- comparisons: 0/1 masks without gradient -----------------------------------

template <class T>
Var<T> greater(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::GreaterOp>("momnet::greater", a, b);
}
template <class T>
Var<T> greater_equal(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::GreaterEqualOp>("momnet::greater_equal", a, b);
}
template <class T>
Var<T> less(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::LessOp>("momnet::less", a, b);
}
template <class T>
Var<T> less_equal(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::LessEqualOp>("momnet::less_equal", a, b);
}
template <class T>
Var<T> equal(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::EqualOp>("momnet::equal", a, b);
}
template <class T>
Var<T> not_equal(const Var<T>& a, const Var<T>& b) {
  return detail::broadcast_compare<detail::NotEqualOp>("momnet::not_equal", a, b);
}

// Against a constant: greater(x, 0.0) is 1 where x > 0.
template <class T>
Var<T> greater(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::GreaterOp>("momnet::greater", x, s);
}
template <class T>
Var<T> greater_equal(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::GreaterEqualOp>("momnet::greater_equal", x, s);
}
template <class T>
Var<T> less(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::LessOp>("momnet::less", x, s);
}
template <class T>
Var<T> less_equal(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::LessEqualOp>("momnet::less_equal", x, s);
}
template <class T>
Var<T> equal(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::EqualOp>("momnet::equal", x, s);
}
template <class T>
Var<T> not_equal(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::compare_constant<detail::NotEqualOp>("momnet::not_equal", x, s);
}

// ---- a Var and a constant ---------------------------------------------------------

template <class T>
Var<T> add(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::unary(
      "momnet::add", x, [s](const auto& X) { return X + s; }, [](const auto& G, const auto&, const auto&) { return G; });
}
template <class T>
Var<T> add(typename Var<T>::Scalar s, const Var<T>& x) {
  return add(x, s);
}
template <class T>
Var<T> sub(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::unary(
      "momnet::sub", x, [s](const auto& X) { return X - s; }, [](const auto& G, const auto&, const auto&) { return G; });
}
template <class T>
Var<T> sub(typename Var<T>::Scalar s, const Var<T>& x) {
  return detail::unary(
      "momnet::sub", x, [s](const auto& X) { return s - X; },
      [](const auto& G, const auto&, const auto&) { return -G; });
}
template <class T>
Var<T> mul(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::unary(
      "momnet::mul", x, [s](const auto& X) { return X * s; },
      [s](const auto& G, const auto&, const auto&) { return G * s; });
}
template <class T>
Var<T> mul(typename Var<T>::Scalar s, const Var<T>& x) {
  return mul(x, s);
}
// x / s divides (it does not multiply by 1 / s), as x / y does.
template <class T>
Var<T> div(const Var<T>& x, typename Var<T>::Scalar s) {
  return detail::unary(
      "momnet::div", x, [s](const auto& X) { return X / s; },
      [s](const auto& G, const auto&, const auto&) { return G / s; });
}
template <class T>
Var<T> div(typename Var<T>::Scalar s, const Var<T>& x) {
  return detail::unary(
      "momnet::div", x, [s](const auto& X) { return s / X; },
      [](const auto& G, const auto& X, const auto& Y) { return -(G * Y) / X; });
}

template <class T>
Var<T> operator+(const Var<T>& x, typename Var<T>::Scalar s) { return add(x, s); }
template <class T>
Var<T> operator+(typename Var<T>::Scalar s, const Var<T>& x) { return add(x, s); }
template <class T>
Var<T> operator-(const Var<T>& x, typename Var<T>::Scalar s) { return sub(x, s); }
template <class T>
Var<T> operator-(typename Var<T>::Scalar s, const Var<T>& x) { return sub(s, x); }
template <class T>
Var<T> operator/(const Var<T>& x, typename Var<T>::Scalar s) { return div(x, s); }
template <class T>
Var<T> operator/(typename Var<T>::Scalar s, const Var<T>& x) { return div(s, x); }
// x * s and s * x are scale() (ops/unary.hpp).

}  // namespace momnet
