// Batch normalisation over axis 1 as plain kernels: no tape, raw pointers and
// a BatchNormGeometry reading the value as [N, C, inner] (inner = 1 for
// [N, C], L for [N, C, L], H * W for [N, C, H, W]); channel c's values are the
// N runs of `inner` contiguous values starting at (n * C + c) * inner.
//
// Per-channel sums are accumulated in double whatever T, in two passes (the
// mean, then the squared deviations from it: no E[x^2] - E[x]^2
// cancellation), each in one fixed order: the runs n = 0, ..., N - 1, each run
// spread over four lanes by position (for_lanes), the lanes added last as
// (0 + 1) + (2 + 3).
// The order depends on the geometry alone, never on addresses or threads, so
// the same values give the same bits on every call: MomentumResidual's exact
// rebuild relies on that. Element-wise arithmetic is done in double and
// rounded once to T.
//
// Backward kernels ADD into their gradients.
#pragma once

#include <Eigen/Core>

namespace momnet::kernels {

struct BatchNormGeometry {
  Eigen::Index batch = 0;     // N
  Eigen::Index channels = 0;  // C
  Eigen::Index inner = 1;     // L or H * W
  // Values per channel: what the batch statistics average over.
  Eigen::Index count() const noexcept { return batch * inner; }
};

namespace batch_norm_detail {

// Calls add(k, j) for every flat index k of channel c, j in 0..3 the lane k
// is summed in: the fixed order every per-channel sum follows.
template <class Add>
void for_lanes(const BatchNormGeometry& s, Eigen::Index c, Add&& add) {
  if (s.inner == 1) {
    // [N, C]: the runs are single values, so the lanes go across the batch.
    Eigen::Index n = 0;
    for (; n + 4 <= s.batch; n += 4) {
      for (int j = 0; j < 4; ++j) add((n + j) * s.channels + c, j);
    }
    for (int j = 0; j < 4 && n < s.batch; ++n, ++j) add(n * s.channels + c, j);  // j < 4: a bound the compiler sees
    return;
  }
  for (Eigen::Index n = 0; n < s.batch; ++n) {
    const Eigen::Index base = (n * s.channels + c) * s.inner;
    Eigen::Index i = 0;
    for (; i + 4 <= s.inner; i += 4) {
      for (int j = 0; j < 4; ++j) add(base + i + j, j);
    }
    for (int j = 0; j < 4 && i < s.inner; ++i, ++j) add(base + i, j);
  }
}

inline double total(const double (&lane)[4]) { return (lane[0] + lane[1]) + (lane[2] + lane[3]); }

// sum over channel c's values of value(k), k the flat index.
template <class Value>
double channel_sum(const BatchNormGeometry& s, Eigen::Index c, Value&& value) {
  double lane[4] = {0.0, 0.0, 0.0, 0.0};
  for_lanes(s, c, [&](Eigen::Index k, int j) { lane[j] += value(k); });
  return total(lane);
}

// Calls f(k) for every flat index k of channel c.
template <class F>
void for_channel(const BatchNormGeometry& s, Eigen::Index c, F&& f) {
  for (Eigen::Index n = 0; n < s.batch; ++n) {
    const Eigen::Index base = (n * s.channels + c) * s.inner;
    for (Eigen::Index i = 0; i < s.inner; ++i) f(base + i);
  }
}

}  // namespace batch_norm_detail

// Per-channel mean and biased variance (the squared deviations summed over
// count()). Needs count() > 0.
template <class T>
void batch_norm_statistics(const T* x, const BatchNormGeometry& s, double* mean, double* variance) {
  const double count = static_cast<double>(s.count());
  for (Eigen::Index c = 0; c < s.channels; ++c) {
    const double m =
        batch_norm_detail::channel_sum(s, c, [x](Eigen::Index k) { return static_cast<double>(x[k]); }) / count;
    const double squares = batch_norm_detail::channel_sum(s, c, [x, m](Eigen::Index k) {
      const double d = static_cast<double>(x[k]) - m;
      return d * d;
    });
    mean[c] = m;
    variance[c] = squares / count;
  }
}

// y = (x - mean_c) * invstd_c * weight_c + bias_c; weight and bias may be null
// (1 and 0).
template <class T>
void batch_norm_forward(const T* x, T* y, const BatchNormGeometry& s, const double* mean, const double* invstd,
                        const T* weight, const T* bias) {
  for (Eigen::Index n = 0; n < s.batch; ++n) {
    for (Eigen::Index c = 0; c < s.channels; ++c) {
      const double m = mean[c];
      const double scale = invstd[c] * (weight != nullptr ? static_cast<double>(weight[c]) : 1.0);
      const double shift = bias != nullptr ? static_cast<double>(bias[c]) : 0.0;
      const Eigen::Index base = (n * s.channels + c) * s.inner;
      for (Eigen::Index i = 0; i < s.inner; ++i) {
        y[base + i] = static_cast<T>((static_cast<double>(x[base + i]) - m) * scale + shift);
      }
    }
  }
}

// The reverse rule, with g = dL/dy, x̂ = (x - mean) * invstd, w = weight (1 if
// null) and m = count():
//   gbias_c   += sum g
//   gweight_c += sum g x̂
//   gx        += w invstd (g - sum g / m - x̂ sum(g x̂) / m)   (batch statistics:
//                the mean and invstd are functions of x)
//   gx        += w invstd g                                  (fixed statistics)
// Any of gx, gweight, gbias may be null (not wanted).
template <class T>
void batch_norm_backward(const T* g, const T* x, const BatchNormGeometry& s, const double* mean,
                         const double* invstd, const T* weight, bool batch_statistics, T* gx, T* gweight,
                         T* gbias) {
  const double count = static_cast<double>(s.count());
  const bool sums = gweight != nullptr || gbias != nullptr || (gx != nullptr && batch_statistics);
  for (Eigen::Index c = 0; c < s.channels; ++c) {
    const double m = mean[c], r = invstd[c];
    double sum_g = 0.0, sum_g_xhat = 0.0;
    if (sums) {
      // One pass for both sums.
      double lane_g[4] = {0.0, 0.0, 0.0, 0.0}, lane_gx[4] = {0.0, 0.0, 0.0, 0.0};
      batch_norm_detail::for_lanes(s, c, [&](Eigen::Index k, int j) {
        const double gk = static_cast<double>(g[k]);
        lane_g[j] += gk;
        lane_gx[j] += gk * (static_cast<double>(x[k]) - m);
      });
      sum_g = batch_norm_detail::total(lane_g);
      sum_g_xhat = r * batch_norm_detail::total(lane_gx);
    }
    if (gbias != nullptr) gbias[c] += static_cast<T>(sum_g);
    if (gweight != nullptr) gweight[c] += static_cast<T>(sum_g_xhat);
    if (gx == nullptr) continue;
    const double scale = r * (weight != nullptr ? static_cast<double>(weight[c]) : 1.0);
    if (batch_statistics) {
      // x̂ sum(g x̂) / m, written as (x - mean) * slope.
      const double mean_g = sum_g / count, slope = r * sum_g_xhat / count;
      batch_norm_detail::for_channel(s, c, [=](Eigen::Index k) {
        const double d = static_cast<double>(x[k]) - m;
        gx[k] += static_cast<T>(scale * (static_cast<double>(g[k]) - mean_g - d * slope));
      });
    } else {
      batch_norm_detail::for_channel(
          s, c, [=](Eigen::Index k) { gx[k] += static_cast<T>(scale * static_cast<double>(g[k])); });
    }
  }
}

}  // namespace momnet::kernels
