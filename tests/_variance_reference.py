"""Exact per-sample variances of four Gaussian gradient estimators (Mohamed et al., 2020).

Independent of jaxestim: NumPy float64 and ``scipy.integrate.quad`` only. For
``x ~ N(mu, sigma)`` (``x = mu + sigma eps``, ``eps ~ N(0, 1)``) and a cost ``f``, the
per-sample variance ``E[g^2] - (grad E[f])^2`` of the estimators of the gradient with respect
to ``mu`` and ``sigma`` (the standard deviation, not its logarithm) of

* ``score``: ``g = f(x) s(x)``, ``s_mu = eps / sigma``, ``s_sigma = (eps^2 - 1) / sigma``;
* ``score_optimal``: ``g = (f(x) - b*_j) s_j(x)`` with the per-coordinate optimal constant
  ``b*_j = E[f s_j^2] / E[s_j^2]``, so ``Var = E[f^2 s_j^2] - E[f s_j^2]^2 / E[s_j^2] - grad_j^2``;
* ``pathwise``: ``g_mu = f'(x)``, ``g_sigma = f'(x) eps``;
* ``measure_valued`` (weak derivative with coupling): ``g_mu = (f(mu + sigma R) -
  f(mu - sigma R)) / (sigma sqrt(2 pi))``, ``R ~ Rayleigh(1)``; ``g_sigma = (f(mu + sigma M) -
  f(mu + sigma M U)) / sigma``, ``M`` double-sided Maxwell, ``U ~ Uniform(0, 1)`` (``M U ~
  N(0, 1)``), the (M, U) expectation by nested ``quad``.

The exact gradient ``grad E[f]`` is ``(E[f eps], E[f (eps^2 - 1)]) / sigma`` by ``quad``; the tests
also check it against the closed forms of ``E[f]``. Reference: S. Mohamed, M. Rosca,
M. Figurnov, A. Mnih, "Monte Carlo Gradient Estimation in Machine Learning", JMLR 21(132),
2020, Sections 4-6 and Figures 2-3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import integrate

MU = 1.0
SIGMA = 1.0
# eps beyond +-L contributes < phi(L) * poly(L) ~ 1e-40 relative to every moment used here
_L = 14.0
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Cost:
    """A cost f_k(x) of the paper's Figures 2-3: its value, derivative and closed-form E[f]."""

    family: str  # "square" (x - k)^2, "exp" exp(-k x^2), "cos" cos(k x)
    k: float

    @property
    def label(self) -> str:
        k = f"{self.k:g}"
        return {
            "square": f"(x - {k})^2" if self.k >= 0 else f"(x + {-self.k:g})^2",
            "exp": f"exp(-{k} x^2)",
            "cos": f"cos({k} x)",
        }[self.family]

    def f(self, x):
        if self.family == "square":
            return (x - self.k) ** 2
        if self.family == "exp":
            return np.exp(-self.k * x**2)
        return np.cos(self.k * x)

    def df(self, x):
        if self.family == "square":
            return 2.0 * (x - self.k)
        if self.family == "exp":
            return -2.0 * self.k * x * np.exp(-self.k * x**2)
        return -self.k * np.sin(self.k * x)

    def mean(self, mu: float, sigma: float) -> float:
        """Closed-form E[f(x)], x ~ N(mu, sigma^2)."""
        k = self.k
        if self.family == "square":
            return (mu - k) ** 2 + sigma**2
        if self.family == "exp":
            a = 1.0 + 2.0 * k * sigma**2
            return math.exp(-k * mu**2 / a) / math.sqrt(a)
        return math.cos(k * mu) * math.exp(-0.5 * k**2 * sigma**2)

    def exact_grad_closed_form(self, mu: float = MU, sigma: float = SIGMA) -> np.ndarray:
        """(d/dmu, d/dsigma) of the closed-form E[f], by hand."""
        k = self.k
        if self.family == "square":
            return np.array([2.0 * (mu - k), 2.0 * sigma])
        if self.family == "exp":
            a = 1.0 + 2.0 * k * sigma**2
            m = self.mean(mu, sigma)
            da = 4.0 * k * sigma
            return np.array([m * (-2.0 * k * mu / a), m * (k * mu**2 * da / a**2 - 0.5 * da / a)])
        e = math.exp(-0.5 * k**2 * sigma**2)
        return np.array([-k * math.sin(k * mu) * e, -(k**2) * sigma * math.cos(k * mu) * e])


COSTS: tuple[Cost, ...] = (
    *(Cost("square", k) for k in (-3.0, 0.0, 1.0, 3.0)),
    *(Cost("exp", k) for k in (0.1, 1.0, 10.0)),
    *(Cost("cos", k) for k in (0.5, 1.0, 2.0, 5.0)),
)

ESTIMATORS = ("score", "score_optimal", "pathwise", "measure_valued")


def _phi(e):
    return np.exp(-0.5 * e * e) / _SQRT_2PI


def _quad(
    fn: Callable[[float], float], a: float, b: float, points=None, rtol: float = 1e-11
) -> float:
    """quad on [a, b] with relative tolerance ``rtol``; asserts the error estimate is small."""
    val, err = integrate.quad(fn, a, b, points=points, limit=2000, epsabs=1e-3 * rtol, epsrel=rtol)
    assert err <= 1e3 * rtol * max(1.0, abs(val)), (val, err)
    return val


def _normal_expect(
    h: Callable[[float], float], cost: Cost, mu: float, sigma: float, rtol: float = 1e-11
) -> float:
    """E[h(eps)], eps ~ N(0, 1); a breakpoint where exp(-k x^2) peaks (x = 0)."""
    points = [(-mu) / sigma] if abs(mu / sigma) < _L else None
    return _quad(lambda e: h(e) * _phi(e), -_L, _L, points, rtol)


def exact_grad(cost: Cost, mu: float = MU, sigma: float = SIGMA) -> np.ndarray:
    """(d/dmu, d/dsigma) E[f] = (E[f eps], E[f (eps^2 - 1)]) / sigma by quad."""
    f = lambda e: cost.f(mu + sigma * e)
    return np.array(
        [
            _normal_expect(lambda e: f(e) * e, cost, mu, sigma) / sigma,
            _normal_expect(lambda e: f(e) * (e * e - 1.0), cost, mu, sigma) / sigma,
        ]
    )


def central_moment(
    cost: Cost, estimator: str, power: int = 2, mu: float = MU, sigma: float = SIGMA
) -> np.ndarray:
    """E[(g_j - grad_j)^power] for j = (mu, sigma) by quad (nested quad for (M, U)).

    ``power=2`` is the per-sample variance (relative accuracy ~1e-11), ``power=4`` gives the
    standard error of an empirical variance (:func:`variance_rel_se_exact`; 1e-6 suffices).
    """
    rtol = 1e-11 if power == 2 else 1e-6
    grad = exact_grad(cost, mu, sigma)
    f = lambda e: cost.f(mu + sigma * e)
    ex = lambda h: _normal_expect(h, cost, mu, sigma, rtol)
    scores = (lambda e: e / sigma, lambda e: (e * e - 1.0) / sigma)
    if estimator in ("score", "score_optimal"):
        out = []
        for j, s in enumerate(scores):
            b = 0.0
            if estimator == "score_optimal":
                b = ex(lambda e: f(e) * s(e) ** 2) / ex(lambda e: s(e) ** 2)
            out.append(ex(lambda e: ((f(e) - b) * s(e) - grad[j]) ** power))
        return np.array(out)
    if estimator == "pathwise":
        df = lambda e: cost.df(mu + sigma * e)
        return np.array(
            [ex(lambda e: (df(e) - grad[0]) ** power), ex(lambda e: (df(e) * e - grad[1]) ** power)]
        )
    if estimator == "measure_valued":
        # mu: R ~ Rayleigh(1), density r exp(-r^2 / 2) on (0, inf)
        g_mu = lambda r: (f(r) - f(-r)) / (sigma * _SQRT_2PI)
        rayleigh = lambda r: r * np.exp(-0.5 * r * r)
        pts = [abs(mu) / sigma] if abs(mu / sigma) < _L else None
        m_mu = _quad(lambda r: (g_mu(r) - grad[0]) ** power * rayleigh(r), 0.0, _L, pts, rtol)

        # sigma: M double-sided Maxwell (density m^2 phi(m) on R), U ~ Uniform(0, 1)
        def inner(m: float) -> float:
            fm = f(m)
            return _quad(lambda u: ((fm - f(m * u)) / sigma - grad[1]) ** power, 0, 1, None, rtol)

        pts = [-mu / sigma] if abs(mu / sigma) < _L else None
        m_sig = _quad(lambda m: inner(m) * m * m * _phi(m), -_L, _L, pts, rtol)
        return np.array([m_mu, m_sig])
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


def variance(cost: Cost, estimator: str, mu: float = MU, sigma: float = SIGMA) -> np.ndarray:
    """Exact per-sample variance (mu, sigma) = E[(g - grad E[f])^2]."""
    return central_moment(cost, estimator, 2, mu, sigma)


def variance_rel_se_exact(
    cost: Cost, estimator: str, n: int, mu: float = MU, sigma: float = SIGMA
) -> np.ndarray:
    """Exact relative standard error of the variance of ``n`` samples: sqrt((m4/v^2 - 1)/n).

    0 where the variance is 0 (the estimate is then a constant).
    """
    v = variance(cost, estimator, mu, sigma)
    m4 = central_moment(cost, estimator, 4, mu, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 1e-20, np.sqrt(np.maximum(m4 / v**2 - 1.0, 0.0) / n), 0.0)


def table(mu: float = MU, sigma: float = SIGMA) -> dict[tuple[str, str], np.ndarray]:
    """{(cost label, estimator): variance (mu, sigma)} for every cost and estimator."""
    return {(c.label, e): variance(c, e, mu, sigma) for c in COSTS for e in ESTIMATORS}


def mc_samples(
    cost: Cost,
    estimator: str,
    rng: np.random.Generator,
    n: int,
    mu: float = MU,
    sigma: float = SIGMA,
) -> np.ndarray:
    """``n`` per-sample gradient estimates (n, 2) by direct NumPy Monte Carlo, float64.

    A check of the quad references that does not use them: ``score_optimal`` uses the
    plug-in ``b*_j = mean(f s_j^2) / mean(s_j^2)`` of the same samples (its variance differs
    from the exact-b* one by O(1/n)); ``measure_valued`` draws ``R = sqrt(2 E)`` with
    ``E ~ Exp(1)`` (Rayleigh) and ``M = +-sqrt(2 E' + Z^2)`` (E' ~ Exp(1), Z ~ N(0, 1)), i.e.
    ``M^2 ~ chi^2_3`` and a random sign (double-sided Maxwell).
    """
    if estimator in ("score", "score_optimal", "pathwise"):
        e = rng.standard_normal(n)
        x = mu + sigma * e
        if estimator == "pathwise":
            d = cost.df(x)
            return np.stack([d, d * e], 1)
        f = cost.f(x)
        s = np.stack([e / sigma, (e * e - 1.0) / sigma], 1)
        b = 0.0
        if estimator == "score_optimal":
            b = (f[:, None] * s**2).mean(0) / (s**2).mean(0)
        return (f[:, None] - b) * s
    if estimator == "measure_valued":
        r = np.sqrt(2.0 * rng.standard_exponential(n))
        m = np.sqrt(2.0 * rng.standard_exponential(n) + rng.standard_normal(n) ** 2)
        m = np.where(rng.uniform(size=n) < 0.5, -m, m)
        u = rng.uniform(0.0, 1.0, n)
        g_mu = (cost.f(mu + sigma * r) - cost.f(mu - sigma * r)) / (sigma * _SQRT_2PI)
        g_sig = (cost.f(mu + sigma * m) - cost.f(mu + sigma * m * u)) / sigma
        return np.stack([g_mu, g_sig], 1)
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


def variance_rel_se(samples: np.ndarray) -> np.ndarray:
    """Relative standard error of the sample variance per column, from the 4th moment.

    ``SE(s^2) / s^2 = sqrt((m4 / s^4 - 1) / n)`` (large-n delta method; ``m4`` the 4th
    central moment). ``inf`` where the sample variance is 0.
    """
    x = np.asarray(samples, np.float64)
    return moments(x.reshape(x.shape[0], -1).T)[2]


def moments(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, variance (ddof 1), relative SE of the variance) of each row of ``columns``
    (shape (d, n): one row per coordinate, contiguous for speed); see :func:`variance_rel_se`.
    """
    x = np.ascontiguousarray(columns, np.float64)
    n = x.shape[1]
    m = x.mean(1)
    c2 = x - m[:, None]
    c2 *= c2
    v = c2.mean(1)
    c2 *= c2
    m4 = c2.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rse = np.where(v > 0, np.sqrt(np.maximum(m4 / v**2 - 1.0, 0.0) / n), np.inf)
    return m, v * n / (n - 1), rse
