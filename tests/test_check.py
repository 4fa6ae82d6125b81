"""je.check: reports operations through which the gradient is silently lost."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._check import CheckReport, Finding, check

KEY = jax.random.key(0)
_SRC = pathlib.Path(__file__).read_text().splitlines()


def _line(marker: str) -> int:
    """Line number of the (unique) source line of this file containing ``marker``."""
    (n,) = [i for i, text in enumerate(_SRC, 1) if marker in text and "_line(" not in text]
    return n


def _one(report: CheckReport, kind: str, severity: str = "error") -> Finding:
    assert len(report.findings) == 1, str(report)
    (f,) = report.findings
    assert f.kind == kind, str(report)
    assert f.severity == severity, str(report)
    assert f.message and f.suggestion
    return f


# --------------------------------------------------------------------------- must fire


def test_jax_random_bernoulli():
    def f(key, theta):
        return jax.random.bernoulli(key, theta).astype(jnp.float32)  # <bernoulli>

    r = check(f, KEY, 0.3)
    f0 = _one(r, "jax_random")
    assert "jax.random.bernoulli" in f0.message
    assert "D.Bernoulli" in f0.suggestion and "je.score_function()" in f0.suggestion
    assert f"test_check.py:{_line('<bernoulli>')} (" in f0.source
    assert "jax.random.bernoulli(key, theta)" in f0.code
    assert not r.ok


def test_jax_random_categorical():
    def f(key, logits):
        return jnp.asarray([1.0, 2.0, 3.0])[jax.random.categorical(key, logits=logits)]

    f0 = _one(check(f, KEY, jnp.zeros(3)), "jax_random")
    assert "categorical" in f0.message and "D.Categorical" in f0.suggestion


def test_jax_random_poisson():
    f0 = _one(check(lambda k, r: jax.random.poisson(k, r) * 1.0, KEY, 2.0), "jax_random")
    assert "D.Poisson" in f0.suggestion


def test_pathwise_step_function_points_at_user_line():
    def f(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        return (x > 0).astype(jnp.float32)  # <step>

    r = check(f, KEY, 0.5, estimator=je.pathwise())
    f0 = _one(r, "comparison")
    assert f0.primitive == "gt"
    assert f"test_check.py:{_line('<step>')} (" in f0.source
    assert "exactly zero" in f0.message
    assert "score_function" in f0.suggestion
    # ... and the gradient it warns about is indeed exactly zero (true value: 0.352)
    assert je.grad(f, je.pathwise(), num_samples=64)(KEY, 0.5) == 0.0


def test_floor_of_pathwise_sample():
    def f(key, theta):
        return jnp.floor(je.sample(key, D.Normal(theta, 1.0)))

    assert _one(check(f, KEY, 0.5, estimator=je.pathwise()), "rounding").primitive == "floor"
    # auto is pathwise at a Normal site
    _one(check(f, KEY, 0.5), "rounding")


def test_integer_cast():
    def f(key, theta):
        n = (3.0 * theta).astype(jnp.int32)
        return jnp.arange(5.0)[n]

    f0 = _one(check(f, KEY, 0.5), "integer_cast")
    assert f0.primitive == "convert_element_type" and "int32" in f0.message


def test_straight_through_sample_only_feeds_a_comparison():
    def f(key, theta):
        x = je.sample(key, D.Bernoulli(probs=theta))
        return jnp.where(x > 0.5, 3.0, -1.0)  # <st>

    r = check(f, KEY, 0.3, estimator=je.straight_through())
    f0 = _one(r, "comparison")
    assert f"test_check.py:{_line('<st>')} (" in f0.source
    assert "je.sample site" in f0.message and "score_function" in f0.suggestion
    # relaxed samples too
    _one(check(f, KEY, 0.3, estimator=je.gumbel_softmax(0.5)), "comparison")


def test_argmax():
    def f(key, theta):
        y = theta + jax.random.normal(key, theta.shape)
        return jnp.asarray([1.0, -2.0, 4.0])[jnp.argmax(y)]

    assert _one(check(f, KEY, jnp.zeros(3)), "argmax").primitive == "argmax"


def test_inside_je_scan_body():
    def f(key, theta):
        def body(c, k):
            x = je.sample(k, D.Normal(theta, 1.0))
            return c + (x > 0.0), None  # <scan>

        c, _ = je.scan(body, 0.0, jax.random.split(key, 4))
        return c

    for est in (je.pathwise(), je.auto()):
        f0 = _one(check(f, KEY, 0.5, estimator=est), "comparison")
        assert f"test_check.py:{_line('<scan>')} (" in f0.source


def test_inside_lax_cond_and_while():
    def f(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        return jax.lax.cond(theta > -10.0, lambda v: jnp.round(v), lambda v: v, x)  # <cond>

    r = check(f, KEY, 0.5, estimator=je.pathwise())
    kinds = {(f.kind, f.severity) for f in r.findings}
    # round(x) in the taken branch loses x; `theta > -10` picks the branch (theta also
    # reaches the output differentiably through x: a warning)
    assert kinds == {("rounding", "error"), ("comparison", "warning")}, str(r)
    assert all(f"test_check.py:{_line('<cond>')} (" in f.source for f in r.findings)

    def g(key, theta):
        return jax.lax.while_loop(lambda c: c < theta, lambda c: c + 0.1, 0.0)

    _one(check(g, KEY, 0.5), "comparison")


def test_distribution_sample_outside_je_sample():
    def f(key, theta):
        return D.Bernoulli(probs=theta).sample(key)

    f0 = _one(check(f, KEY, 0.3), "distribution_sample")
    assert "je.sample(key, dist)" in f0.suggestion


def test_branch_on_parameter_is_a_warning():
    def f(key, theta):
        return jnp.where(theta > 0, theta, -theta) + je.sample(key, D.Normal(0.0, 1.0))

    r = check(f, KEY, 0.5)
    f0 = _one(r, "comparison", "warning")
    assert "continuous" in f0.message
    assert r.warnings == (f0,) and r.errors == ()


# ----------------------------------------------------------------------- must not fire


def _clean(report: CheckReport) -> None:
    assert report.ok, str(report)
    assert report.findings == ()
    assert "no problems found" in str(report)


def test_parameter_free_noise_is_fine():
    _clean(check(lambda k, t: t + jax.random.normal(k), KEY, 0.3))
    _clean(check(lambda k, t: t * jax.random.exponential(k, (3,)).sum(), KEY, 0.3))
    # jax.random.gamma is implicitly reparameterized (differentiable in its shape)
    _clean(check(lambda k, t: jax.random.gamma(k, t), KEY, 2.0))


def _bernoulli_step(key, theta):
    x = je.sample(key, D.Bernoulli(probs=theta))
    return jnp.where(x > 0.5, 3.0, -1.0)


def test_score_function_site_feeding_a_comparison_is_fine():
    _clean(check(_bernoulli_step, KEY, 0.3, estimator=je.score_function()))
    _clean(check(_bernoulli_step, KEY, 0.3))  # auto: score function at discrete sites

    def per_site(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0), estimator=je.score_function("leave_one_out"))
        return (x > 0).astype(jnp.float32)

    _clean(check(per_site, KEY, 0.3, estimator=je.pathwise()))


def test_discrete_sites_under_stochastic_ad_are_fine():
    _clean(check(_bernoulli_step, KEY, 0.3, estimator=je.stochastic_ad()))

    def walk(key, p):
        def body(n, k):
            x = je.sample(k, D.Bernoulli(probs=p * (1.0 - n / 20.0)))
            return n + jnp.where(x > 0.5, 1.0, 0.0), None

        n, _ = je.scan(body, 0.0, jax.random.split(key, 10))
        return jnp.floor(n)

    for est in (je.stochastic_ad(), je.score_function(), je.auto()):
        _clean(check(walk, KEY, 0.3, estimator=est))


def test_smooth_programs_are_fine():
    def f(key, theta):
        k1, k2, k3 = jax.random.split(key, 3)
        z = je.sample(k1, D.Normal(theta, 2.0))
        g = je.sample(k2, D.Gamma(theta + 1.0, 1.0))
        c = je.sample(k3, D.Categorical(logits=jnp.stack([theta, 0.0, -theta])))
        return (
            theta**2 * (4.0 + z)
            + jax.nn.relu(z)
            + jnp.abs(g)
            + jnp.clip(theta, 0.0, 1.0)
            + jax.nn.logsumexp(jnp.stack([z, g]))
            + je.select(jnp.asarray([1.0, 2.0, 3.0]), c)
            + D.Normal(theta, 1.0).log_prob(0.3)
            # jax.nn's piecewise activations are continuous; isnan/isinf guards are fine
            + jax.nn.leaky_relu(z)
            + jax.nn.elu(z)
            + jax.nn.hard_tanh(z)
            + jnp.nan_to_num(z)
            + jnp.where(jnp.isinf(g), 0.0, g)
        )

    for est in (je.auto(), je.score_function(), je.straight_through(), je.gumbel_softmax()):
        _clean(check(f, KEY, 0.5, estimator=est))


def test_finite_difference_reports_nothing():
    def f(key, theta):
        return jax.random.bernoulli(key, theta).astype(jnp.float32)

    r = check(f, KEY, 0.3, estimator=je.finite_difference())
    _clean(r)
    assert "finite differences" in str(r)


# ------------------------------------------------------------------- pytrees, argnums


def test_dict_params():
    def smooth(key, params):
        z = je.sample(key, D.Normal(params["loc"], jnp.exp(params["log_scale"])))
        return jnp.sum((z - 1.0) ** 2)

    def stepped(key, params):
        z = je.sample(key, D.Normal(params["loc"], jnp.exp(params["log_scale"])))
        return jnp.sum(z > params["threshold"])

    p = {"loc": jnp.zeros(2), "log_scale": jnp.zeros(2), "threshold": 0.5}
    _clean(check(smooth, KEY, p))
    _one(check(stepped, KEY, p), "comparison")


def test_argnums_tuple_and_non_differentiated_arguments():
    def f(key, theta, threshold, data):
        x = je.sample(key, D.Normal(theta, 1.0))
        return x * data + (threshold > 0.0)

    # threshold and data are not differentiated: comparing them is fine
    _clean(check(f, KEY, 0.5, 0.1, jnp.ones(3), estimator=je.pathwise()))
    r = check(f, KEY, 0.5, 0.1, jnp.ones(3), estimator=je.pathwise(), argnums=(1, 2))
    assert _one(r, "comparison").primitive == "gt"
    _one(check(f, KEY, 0.5, 0.1, jnp.ones(3), estimator=je.pathwise(), argnums=2), "comparison")


def test_has_aux():
    def f(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        return x, {"positive": x > 0}

    _clean(check(f, KEY, 0.5, has_aux=True))


def test_dead_comparisons_are_not_reported():
    def f(key, theta):
        _unused = jnp.floor(theta) + (theta > 0)
        return 2.0 * theta

    _clean(check(f, KEY, 0.5))


# ------------------------------------------------------------ stop_gradient of a sample


def _detached(key, theta):
    x = je.sample(key, D.Normal(theta, 1.0))
    return theta**2 * (4.0 + jax.lax.stop_gradient(x))  # <detached>


def test_stop_gradient_of_pathwise_sample():
    f0 = _one(check(_detached, KEY, 0.5), "stop_gradient")
    assert f"test_check.py:{_line('<detached>')} (" in f0.source
    assert "dependence on the differentiated argument(s) is dropped" in f0.message
    assert "directly" in f0.suggestion and "score_function" in f0.suggestion
    _one(check(_detached, KEY, 0.5, estimator=je.pathwise()), "stop_gradient")

    def in_loop(key, theta):
        def body(c, _, k):
            x = je.sample(k, D.Normal(theta, 1.0))
            return c + jnp.sin(jax.lax.stop_gradient(2.0 * x)) * theta, None

        return je.scan(body, 0.0, None, length=3, key=key)[0]

    _one(check(in_loop, KEY, 0.5), "stop_gradient")
    # what it reports: E[theta^2 (4 + x)] = 4 theta^2 + theta^3, d/dtheta = 8 theta + 3 theta^2
    # = 4.75 at 0.5; with the stop_gradient pathwise estimates 8 theta + 2 theta^2 = 4.5
    attached = lambda k, t: t**2 * (4.0 + je.sample(k, D.Normal(t, 1.0)))
    g = lambda f: je.grad_samples(f, je.pathwise(), num_samples=4000)(KEY, 0.5)
    assert_unbiased(g(attached), 4.75, se_max=0.02)
    assert_unbiased(g(_detached), 4.5, se_max=0.02)


def test_stop_gradient_keeping_the_dependence_is_fine():
    def parts(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        smooth = jnp.tanh(x)
        zero_valued = x - jax.lax.stop_gradient(x)  # value 0, derivative that of x
        forward_other = smooth + jax.lax.stop_gradient(x**2 - smooth)  # value x^2
        return zero_valued + forward_other + x * jax.lax.stop_gradient(theta)

    _clean(check(parts, KEY, 0.5))

    def noise_and_baseline(key, theta):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Normal(theta, 1.0))
        z = je.sample(k2, D.Normal(0.0, 1.0))  # does not depend on theta
        return x**2 - jax.lax.stop_gradient(theta**2) + theta * jax.lax.stop_gradient(z)

    _clean(check(noise_and_baseline, KEY, 0.5))
    # a score-function sample carries no pathwise derivative to drop
    sf = lambda k, t: jax.lax.stop_gradient(je.sample(k, D.Bernoulli(probs=t))) * 2.0
    _clean(check(sf, KEY, 0.3))
    _clean(check(_detached, KEY, 0.5, estimator=je.score_function()))


# ------------------------------------------------------------ je.cost outside the return


def _walk(key, p, declared="returned"):
    def step(total, _, k):
        x = je.sample(k, D.Bernoulli(probs=p))
        c = je.cost(2.0 * x)  # <cost>
        if declared == "returned":
            return total + c, None
        if declared == "statement":  # je.cost's return ignored, the value itself used
            return total + 2.0 * x, None
        return total + x, None  # the objective excludes the declared cost

    return je.scan(step, 0.0, None, length=3, key=key)[0]


def test_cost_outside_the_return():
    for est in (None, je.score_function("leave_one_out"), je.stochastic_ad()):
        r = check(lambda k, p: _walk(k, p, "excluded"), KEY, 0.3, estimator=est)
        f0 = _one(r, "unused_cost")
        assert f"test_check.py:{_line('<cost>')} (" in f0.source
        assert "je.cost(2.0 * x)" in f0.code
        assert "objective excludes the cost" in f0.message

    def aux_only(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        return x**2, je.cost(jnp.abs(x))  # only the aux output holds the cost

    _one(check(aux_only, KEY, 0.3, has_aux=True), "unused_cost")


def test_cost_in_the_return_is_fine():
    for declared in ("returned", "statement"):
        for est in (None, je.score_function("leave_one_out")):
            _clean(check(lambda k, p, d=declared: _walk(k, p, d), KEY, 0.3, estimator=est))

    def recomputed(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        je.cost(x**2)
        return x**2 + theta

    _clean(check(recomputed, KEY, 0.3))


# ---------------------------------------------------------------------------- report API


def test_report_text_and_raise():
    def f(key, theta):
        return jnp.floor(je.sample(key, D.Normal(theta, 1.0)))

    r = check(f, KEY, 0.5, estimator=je.pathwise())
    text = str(r)
    assert "1 error(s), 0 warning(s)" in text and "[error]" in text
    assert "test_check.py" in text and "suggestion:" in text
    with pytest.raises(je.EstimatorError, match="rounding"):
        r.raise_if_any()
    check(lambda k, t: t * 2.0, KEY, 0.5).raise_if_any()  # nothing found: no error
    assert "__bool__" not in vars(CheckReport)


def test_errors_and_validation():
    def discrete(key, theta):
        return je.sample(key, D.Bernoulli(probs=theta))

    with pytest.raises(je.EstimatorError, match="pathwise"):
        check(discrete, KEY, 0.3, estimator=je.pathwise())
    with pytest.raises(ValueError, match="argnums"):
        check(discrete, KEY, 0.3, argnums=0)
    with pytest.raises(ValueError, match="argnums"):
        check(discrete, KEY, 0.3, argnums=2)
    with pytest.raises(TypeError, match="floating"):
        check(discrete, KEY, 3)
    with pytest.raises(TypeError, match="estimator"):
        check(discrete, KEY, 0.3, estimator="pathwise")
    with pytest.raises(TypeError, match="key"):
        check(discrete, 0, 0.3)
