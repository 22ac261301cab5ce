// Argument checks shared by the operations: every operation names itself and
// the offending shapes in the exception it throws.
#pragma once

#include <stdexcept>
#include <string>

#include "momnet/tape.hpp"

namespace momnet::detail {

// The tape both operands live on; throws if they are empty, released or on
// different tapes.
template <class T>
Tape<T>& common_tape(const char* operation, const Var<T>& a) {
  if (!a.valid()) throw std::invalid_argument(std::string(operation) + ": empty Var (default-constructed)");
  a.tape().check(a, operation);
  return a.tape();
}
template <class T>
Tape<T>& common_tape(const char* operation, const Var<T>& a, const Var<T>& b) {
  if (!a.valid() || !b.valid()) {
    throw std::invalid_argument(std::string(operation) + ": empty Var (default-constructed)");
  }
  Tape<T>& tape = a.tape();
  tape.check(a, operation);
  if (&b.tape() != &tape) {
    throw std::invalid_argument(std::string(operation) + ": the operands belong to different tapes");
  }
  tape.check(b, operation);
  return tape;
}

// A row: rank 0 or 1, or rank 2 with a single row.
inline bool is_row_shape(const Shape& s) { return s.rank() <= 1 || (s.rank() == 2 && s.rows() == 1); }

[[noreturn]] inline void throw_shapes(const char* operation, const Shape& a, const Shape& b,
                                      const std::string& why) {
  throw std::invalid_argument(std::string(operation) + ": " + why + ": " + a.to_string() + " and " +
                              b.to_string());
}

[[noreturn]] inline void throw_shape(const char* operation, const Shape& a, const std::string& why) {
  throw std::invalid_argument(std::string(operation) + ": " + why + ", got " + a.to_string());
}

}  // namespace momnet::detail
