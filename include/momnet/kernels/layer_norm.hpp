// Layer normalisation as plain kernels: no tape, raw pointers and a
// LayerNormGeometry reading the value as [rows, cols], cols the product of the
// normalised (trailing) dimensions; row r is the cols contiguous values
// starting at r * cols.
//
// Row sums are accumulated in double whatever T, in two passes (the mean, then
// the squared deviations from it: no E[x^2] - E[x]^2 cancellation), each in
// one fixed order: the row spread over four lanes by position, the lanes added
// last as (0 + 1) + (2 + 3). Four independent sums keep the adder busy without
// -ffast-math; the order depends on cols alone, never on addresses or threads,
// so the same row gives the same bits on every call, which MomentumResidual's
// exact rebuild relies on. Element-wise arithmetic is done in double and
// rounded once to T.
//
// Backward kernels ADD into their gradients.
#pragma once

#include <cmath>

#include <Eigen/Core>

namespace momnet::kernels {

struct LayerNormGeometry {
  Eigen::Index rows = 0;  // the product of the leading (not normalised) dimensions
  Eigen::Index cols = 0;  // the product of normalized_shape: values per row
};

namespace layer_norm_detail {

// sum over j < n of value(j), in the fixed four-lane order.
template <class Value>
double row_sum(Eigen::Index n, Value&& value) {
  double lane[4] = {0.0, 0.0, 0.0, 0.0};
  Eigen::Index j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int k = 0; k < 4; ++k) lane[k] += value(j + k);
  }
  for (int k = 0; k < 4 && j < n; ++j, ++k) lane[k] += value(j);  // k < 4: a bound the compiler sees
  return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

}  // namespace layer_norm_detail

// Per-row mean and 1 / sqrt(biased variance + eps). Needs cols > 0.
template <class T>
void layer_norm_statistics(const T* x, const LayerNormGeometry& s, double eps, double* mean, double* rstd) {
  const double count = static_cast<double>(s.cols);
  for (Eigen::Index r = 0; r < s.rows; ++r) {
    const T* row = x + r * s.cols;
    const double m = layer_norm_detail::row_sum(s.cols, [row](Eigen::Index j) { return static_cast<double>(row[j]); }) /
                     count;
    const double squares = layer_norm_detail::row_sum(s.cols, [row, m](Eigen::Index j) {
      const double d = static_cast<double>(row[j]) - m;
      return d * d;
    });
    mean[r] = m;
    // std::sqrt, not a vectorised estimate: the same bits in every build.
    rstd[r] = 1.0 / std::sqrt(squares / count + eps);
  }
}

// y = (x - mean_r) * rstd_r * weight_j + bias_j; weight and bias ([cols]) may
// be null (1 and 0).
template <class T>
void layer_norm_forward(const T* x, T* y, const LayerNormGeometry& s, const double* mean, const double* rstd,
                        const T* weight, const T* bias) {
  for (Eigen::Index r = 0; r < s.rows; ++r) {
    const Eigen::Index base = r * s.cols;
    const double m = mean[r], q = rstd[r];
    for (Eigen::Index j = 0; j < s.cols; ++j) {
      double v = (static_cast<double>(x[base + j]) - m) * q;
      if (weight != nullptr) v *= static_cast<double>(weight[j]);
      if (bias != nullptr) v += static_cast<double>(bias[j]);
      y[base + j] = static_cast<T>(v);
    }
  }
}

// The reverse rule, with g = dL/dy, x̂ = (x - mean) rstd, w = weight (1 if null),
// ĝ = g w and n = cols, per row:
//   gx      += rstd (ĝ - sum(ĝ) / n - x̂ sum(ĝ x̂) / n)
//   gweight += sum over rows of g x̂
//   gbias   += sum over rows of g
// Any of gx, gweight, gbias may be null (not wanted). `work` holds 2 * cols
// doubles when gweight or gbias is wanted (may be null otherwise): the column
// sums are kept in double over all rows and added into the T gradients once,
// so a float weight's gradient over many rows loses no more than one rounding.
template <class T>
void layer_norm_backward(const T* g, const T* x, const LayerNormGeometry& s, const double* mean, const double* rstd,
                         const T* weight, T* gx, T* gweight, T* gbias, double* work) {
  const bool columns = gweight != nullptr || gbias != nullptr;
  double* sum_g_xhat = work;
  double* sum_g = columns ? work + s.cols : nullptr;
  if (columns) {
    for (Eigen::Index j = 0; j < 2 * s.cols; ++j) work[j] = 0.0;
  }
  const double count = static_cast<double>(s.cols);
  for (Eigen::Index r = 0; r < s.rows; ++r) {
    const T* gr = g + r * s.cols;
    const T* xr = x + r * s.cols;
    const double m = mean[r], q = rstd[r];
    const auto xhat = [=](Eigen::Index j) { return (static_cast<double>(xr[j]) - m) * q; };
    if (columns) {
      for (Eigen::Index j = 0; j < s.cols; ++j) {
        const double gj = static_cast<double>(gr[j]);
        sum_g_xhat[j] += gj * xhat(j);
        sum_g[j] += gj;
      }
    }
    if (gx == nullptr) continue;
    const auto ghat = [=](Eigen::Index j) {
      const double gj = static_cast<double>(gr[j]);
      return weight != nullptr ? gj * static_cast<double>(weight[j]) : gj;
    };
    const double mean_ghat = layer_norm_detail::row_sum(s.cols, ghat) / count;
    const double mean_ghat_xhat =
        layer_norm_detail::row_sum(s.cols, [&](Eigen::Index j) { return ghat(j) * xhat(j); }) / count;
    T* gxr = gx + r * s.cols;
    for (Eigen::Index j = 0; j < s.cols; ++j) {
      gxr[j] += static_cast<T>(q * (ghat(j) - mean_ghat - xhat(j) * mean_ghat_xhat));
    }
  }
  if (gweight != nullptr) {
    for (Eigen::Index j = 0; j < s.cols; ++j) gweight[j] += static_cast<T>(sum_g_xhat[j]);
  }
  if (gbias != nullptr) {
    for (Eigen::Index j = 0; j < s.cols; ++j) gbias[j] += static_cast<T>(sum_g[j]);
  }
}

}  // namespace momnet::kernels
