// A pair of sizes (height, width) for 2-D operations: kernel, stride, padding,
// dilation, output size; PyTorch's `_size_2_t` given as a pair.
#pragma once

#include <array>
#include <string>

#include <Eigen/Core>

namespace momnet {

using Size2 = std::array<Eigen::Index, 2>;

namespace detail {
// "(h, w)", as error messages print it.
inline std::string size2_string(const Size2& s) {
  return "(" + std::to_string(s[0]) + ", " + std::to_string(s[1]) + ")";
}
}  // namespace detail

}  // namespace momnet
