// Pearson chi-square goodness of fit for the sampling tests (MTP and DSpark speculative
// decoding): the statistic, its p-value from the regularised incomplete gamma function.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace kiln::runtime::test_stats {

// ---- statistics -------------------------------------------------------------------------

// Regularised upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a): the power series of
// P(a, x) below x = a + 1, the continued fraction of Q (modified Lentz) above.
inline double gamma_q(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double log_prefix = a * std::log(x) - x - std::lgamma(a);
  if (x < a + 1.0) {
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 10000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::fabs(term) < std::fabs(sum) * 1e-15) break;
    }
    return 1.0 - sum * std::exp(log_prefix);
  }
  const double tiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / tiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1.0) < 1e-15) break;
  }
  return std::exp(log_prefix) * h;
}

// P(X >= x) for X ~ chi-square with df degrees of freedom.
inline double chi2_sf(double x, int df) { return gamma_q(0.5 * df, 0.5 * x); }

struct Fit {
  double chi2 = 0.0;
  int df = 0;
  double p_value = 1.0;
  int64_t outside = 0;  // observations where the expected probability is 0
};

// Pearson goodness of fit of counts to probabilities; cells expected below 5 are pooled
// into one (and that pool dropped if it still expects less than 5).
inline Fit chi_square(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  Fit f;
  double pool_e = 0.0, pool_o = 0.0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * static_cast<double>(n);
    if (probs[i] <= 0.0) {
      f.outside += counts[i];
      continue;
    }
    if (e < 5.0) {
      pool_e += e;
      pool_o += static_cast<double>(counts[i]);
      continue;
    }
    f.chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  if (pool_e >= 5.0) {
    f.chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
    ++cells;
  }
  f.df = std::max(cells - 1, 1);
  f.p_value = chi2_sf(f.chi2, f.df);
  return f;
}

// Fixed seeds make every fit deterministic; alpha bounds the chance that a correct
// sampler fails for a freshly chosen seed.
inline constexpr double kAlpha = 1e-3;

}  // namespace kiln::runtime::test_stats
