"""Equal keys computed twice: two sites whose keys are computed by the same operations from
the same inputs draw identical numbers and raise EstimatorError at trace time, under every
estimator, eagerly and under jax.jit; legitimately different keys do not. Exact references
in closed form (Poisson moments)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import _keys
from jaxestim import distributions as D

KEY = jax.random.key(3)
THETA = 2.0
SF = je.score_function("leave_one_out")
SAD = je.stochastic_ad()
SAME = "same PRNG key"


def _raises(fn, *args, est, match=SAME):
    with pytest.raises(je.EstimatorError, match=match):
        je.grad(fn, est, num_samples=4)(KEY, *args)
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(je.grad(fn, est, num_samples=4))(KEY, *args)


def _traces(fn, est, *args):
    """Trace (no compile) the estimate eagerly and under jax.jit: no error is raised."""
    jax.eval_shape(je.grad(fn, est, num_samples=4), KEY, *args)
    jax.eval_shape(jax.jit(je.grad(fn, est, num_samples=4)), KEY, *args)


# --------------------------------------------------------------------------------------
# equal keys raise
# --------------------------------------------------------------------------------------


def poisson_twice(key, theta):
    # identical draws: E[x z] = E[x^2] = theta + theta^2, so the exact gradient is 5 at 2
    x = je.sample(jax.random.split(key)[0], D.Poisson(theta))
    z = je.sample(jax.random.split(key)[0], D.Poisson(theta))
    return x * z


def normal_twice(key, theta):
    x = je.sample(jax.random.split(key)[0], D.Normal(theta, 1.0))
    z = je.sample(jax.random.split(key)[0], D.Normal(theta, 1.0))
    return x * z


@pytest.mark.parametrize(
    "est",
    [SAD, je.stochastic_ad(mode="reverse"), SF, je.finite_difference()],
    ids=["stochastic_ad", "stochastic_ad_reverse", "leave_one_out", "finite_difference"],
)
def test_key_derived_twice_raises(est):
    _raises(poisson_twice, THETA, est=est)


def test_key_derived_twice_raises_without_the_compilation_cache():
    class Options:  # an unhashable static argument: the transform runs its Python eagerly
        __hash__ = None

    def f(key, theta, options):
        return poisson_twice(key, theta)

    for est in (SAD, SF, je.finite_difference()):
        with pytest.raises(je.EstimatorError, match=SAME):
            je.grad(f, est, num_samples=4)(KEY, THETA, Options())


def test_key_derived_twice_raises_under_pathwise():
    # pathwise would handle identical draws correctly; the key rule holds for every estimator
    _raises(normal_twice, THETA, est=je.pathwise())


def test_fold_in_twice_and_legacy_keys_raise():
    def fold(key, theta):
        a = je.sample(jax.random.fold_in(key, 7), D.Poisson(theta))
        return a * je.sample(jax.random.fold_in(key, 7), D.Poisson(theta))

    def legacy(key, theta):  # a raw uint32[2] key
        k = jax.random.key_data(key)
        a = je.sample(jax.random.split(k)[1], D.Poisson(theta))
        return a * je.sample(jax.random.split(k)[1], D.Poisson(theta))

    _raises(fold, THETA, est=SF)
    _raises(legacy, THETA, est=SF)


def test_equal_keys_in_a_scan_body_raise():
    def from_xs(key, theta):
        def step(c, k):
            a = je.sample(jax.random.split(k)[0], D.Poisson(theta))
            return c + a * je.sample(jax.random.split(k)[0], D.Poisson(theta)), None

        return je.scan(step, 0.0, jax.random.split(key, 3))[0]

    def fold_index(key, theta):
        def body(i, c):
            a = je.sample(jax.random.fold_in(key, i), D.Poisson(theta))
            return c + a * je.sample(jax.random.fold_in(key, i), D.Poisson(theta))

        return je.fori_loop(0, 3, body, 0.0)

    def loop_key(key, theta):
        def step(c, _, k):
            a = je.sample(k.split(2)[0], D.Poisson(theta))
            return c + a * je.sample(k.split(2)[0], D.Poisson(theta)), None

        return je.scan(step, 0.0, None, length=3, key=key)[0]

    for fn in (from_xs, fold_index, loop_key):
        _raises(fn, THETA, est=SF)
    _raises(from_xs, THETA, est=SAD)


def test_loop_invariant_key_computed_in_the_body_raises():
    def split_outer(key, theta):  # the same key in every iteration
        def step(c, _):
            return c + je.sample(jax.random.split(key)[0], D.Poisson(theta)), None

        return je.scan(step, 0.0, None, length=3)[0]

    def constant(key, theta):
        def body(i, c):
            return c + je.sample(jax.random.key(5), D.Poisson(theta))

        return je.fori_loop(0, 3, body, 0.0)

    def nested(key, theta):  # varies with the outer iteration, not with the inner one
        def outer(c, k):
            def inner(c2, _):
                return c2 + je.sample(jax.random.split(k)[0], D.Poisson(theta)), None

            return je.scan(inner, c, None, length=2)[0], None

        return je.scan(outer, 0.0, jax.random.split(key, 3))[0]

    for fn in (split_outer, constant, nested):
        _raises(fn, THETA, est=SF, match="outside the loop")
    _raises(split_outer, THETA, est=SAD, match="outside the loop")


def _carry_unchanged(key, theta):  # the same carry key in every iteration
    def body(carry, _):
        k, s = carry
        return (k, s + je.sample(k, D.Bernoulli(logits=theta))), None

    return je.scan(body, (key, 0.0), None, length=3)[0][1]


def _carry_split_unchanged(key, theta):  # a key derived only from the unchanged carry key
    def body(carry, _):
        k, s = carry
        return (k, s + je.sample(jax.random.split(k)[0], D.Poisson(theta))), None

    return je.scan(body, (key, 0.0), None, length=3)[0][1]


def _fori_carry_unchanged(key, theta):  # and from an outer value
    def body(i, carry):
        k, s = carry
        return k, s + je.sample(jax.random.fold_in(k, 3), D.Poisson(theta))

    return je.fori_loop(0, 3, body, (key, 0.0))[1]


def _while_carry_unchanged(key, theta):
    def body(carry):
        k, s, n = carry
        return k, s + je.sample(k, D.Poisson(theta)), n + 1

    return je.while_loop(lambda c: c[2] < 3, body, (key, 0.0, 0), max_iterations=4)[1]


CONSTANT = "does not change between iterations"


@pytest.mark.parametrize(
    "fn", [_carry_unchanged, _carry_split_unchanged, _fori_carry_unchanged, _while_carry_unchanged]
)
@pytest.mark.parametrize("est", [SF, SAD], ids=["leave_one_out", "stochastic_ad"])
def test_carry_key_returned_unchanged_raises(fn, est):
    _raises(fn, THETA, est=est, match=CONSTANT)


def test_carry_key_that_changes_does_not_raise():
    def fori_index(key, theta):  # unchanged carry key, folded with the iteration index
        def body(i, carry):
            k, s = carry
            return k, s + je.sample(jax.random.fold_in(k, i), D.Poisson(theta))

        return je.fori_loop(0, 3, body, (key, 0.0))[1]

    def while_split(key, theta):
        def body(carry):
            k, s, n = carry
            k, sub = jax.random.split(k)
            return k, s + je.sample(sub, D.Poisson(theta)), n + 1

        return je.while_loop(lambda c: c[2] < 3, body, (key, 0.0, 0), max_iterations=4)[1]

    def swapped(key, theta):  # two carry keys that trade places: not returned unchanged
        def body(carry, _):
            a, b, s = carry
            return (b, a, s + je.sample(a, D.Poisson(theta))), None

        return je.scan(body, (key, jax.random.fold_in(key, 9), 0.0), None, length=2)[0][2]

    for fn in (fori_index, while_split, swapped):
        _traces(fn, SF, THETA)
        _traces(fn, SAD, THETA)


def _fold_and_index(key, theta):
    a = je.sample(jax.random.fold_in(key, 1), D.Poisson(theta))
    return a * je.sample(jax.random.split(key)[1], D.Poisson(theta))


def _fold_and_unpack(key, theta):
    _, k2 = jax.random.split(key)
    return je.sample(jax.random.fold_in(key, 1), D.Poisson(theta)) * je.sample(k2, D.Poisson(theta))


def _fold_and_row_of_three(key, theta):
    a = je.sample(jax.random.split(key, 3)[2], D.Poisson(theta))
    return a * je.sample(jax.random.fold_in(key, 2), D.Poisson(theta))


def _raw_fold_and_unpack(key, theta):
    k = jax.random.key_data(key)
    _, _, k3 = jax.random.split(k, 3)
    return je.sample(k3, D.Poisson(theta)) * je.sample(jax.random.fold_in(k, 2), D.Poisson(theta))


def _index_and_unpack(key, theta):  # one row written two ways (equal slices)
    _, k2 = jax.random.split(key)
    return je.sample(jax.random.split(key)[1], D.Poisson(theta)) * je.sample(k2, D.Poisson(theta))


@pytest.mark.parametrize(
    "fn",
    [
        _fold_and_index,
        _fold_and_unpack,
        _fold_and_row_of_three,
        _raw_fold_and_unpack,
        _index_and_unpack,
    ],
)
@pytest.mark.parametrize("est", [SF, SAD], ids=["leave_one_out", "stochastic_ad"])
def test_fold_in_and_the_same_split_row_raise(fn, est):
    _raises(fn, THETA, est=est)


def test_fold_in_and_split_rows_are_bit_equal_only_in_partitionable_mode():
    """The identity the numbering relies on, checked on values (typed and raw keys)."""
    for make in (jax.random.key, jax.random.PRNGKey):
        key = make(11)
        for n in (2, 3):
            rows = jax.random.key_data(jax.random.split(key, n))
            folds = [jax.random.key_data(jax.random.fold_in(key, i)) for i in range(n)]
            assert jax.config.jax_threefry_partitionable
            np.testing.assert_array_equal(rows, np.stack(folds))
            with jax.threefry_partitionable(False):
                rows = jax.random.key_data(jax.random.split(key, n))
                folds = [jax.random.key_data(jax.random.fold_in(key, i)) for i in range(n)]
                assert not np.any(np.all(rows == np.stack(folds), axis=-1))


def test_fold_in_and_split_row_are_different_keys_outside_partitionable_mode():
    with jax.threefry_partitionable(False):
        for fn in (_fold_and_index, _raw_fold_and_unpack):
            _traces(fn, SF, THETA)
        _raises(_index_and_unpack, THETA, est=SF)


def test_equal_key_in_a_branch_and_outside_raises():
    def before(key, theta):
        x = je.sample(jax.random.split(key)[0], D.Poisson(theta))
        k = jax.random.split(key)[0]
        return x + je.cond(x > 1, lambda: je.sample(k, D.Poisson(theta)), lambda: 0.0)

    def after(key, theta):
        x = je.sample(jax.random.split(key)[1], D.Poisson(theta))
        y = je.cond(
            x > 1, lambda: je.sample(jax.random.split(key)[0], D.Poisson(theta)), lambda: 0.0
        )
        return y * je.sample(jax.random.split(key)[0], D.Poisson(theta))

    _raises(before, THETA, est=SF)
    _raises(after, THETA, est=SAD)


def test_equal_keys_under_an_inner_vmap_raise():
    def f(key, theta):
        draw = jax.vmap(lambda k: je.sample(k, D.Normal(theta, 1.0)))
        return jnp.sum(draw(jax.random.split(key, 3)) * draw(jax.random.split(key, 3)))

    _raises(f, THETA, est=je.pathwise())


# --------------------------------------------------------------------------------------
# different keys do not raise
# --------------------------------------------------------------------------------------


def different_keys(key, theta):
    # four independent Poisson(theta) draws: E = 2 theta^2, exact gradient 4 theta = 8
    # (fold_in(key, i) equals split(key, n)[i] for threefry keys: fold a subkey instead)
    x = je.sample(jax.random.split(key)[0], D.Poisson(theta))
    z = je.sample(jax.random.split(key)[1], D.Poisson(theta))
    w = je.sample(jax.random.fold_in(jax.random.split(key)[0], 1), D.Poisson(theta))
    v = je.sample(jax.random.fold_in(jax.random.split(key)[0], 2), D.Poisson(theta))
    return x * z + w * v


def test_different_keys_give_the_exact_gradient():
    # the score function would count a hidden repeated draw twice (12 instead of 8)
    g = np.asarray(jax.jit(je.grad_samples(different_keys, SF, num_samples=4000))(KEY, THETA))
    assert_unbiased(g, 4 * THETA, se_max=0.5)


def test_carry_split_keys_give_the_exact_gradient():
    def f(key, theta):  # E = 3 theta^2: exact gradient 6 theta = 12
        def step(c, _):
            k, s = c
            k, a, b = jax.random.split(k, 3)
            return (k, s + je.sample(a, D.Poisson(theta)) * je.sample(b, D.Poisson(theta))), None

        return je.scan(step, (key, 0.0), None, length=3)[0][1]

    g = np.asarray(jax.jit(je.grad_samples(f, SF, num_samples=4000))(KEY, THETA))
    assert_unbiased(g, 6 * THETA, se_max=0.6)


def test_legitimately_different_keys_do_not_raise():
    def rows(key, theta):
        ks = jax.random.split(key, 6)

        def body(i, c):
            a = je.sample(ks[2 * i], D.Poisson(theta))
            return c + a * je.sample(ks[2 * i + 1], D.Poisson(theta))

        return je.fori_loop(0, 3, body, 0.0)

    def loop_key(key, theta):
        def step(c, _, k):
            a, b = k.split(2)
            return c + je.sample(a, D.Poisson(theta)) * je.sample(b, D.Poisson(theta)), None

        return je.scan(step, 0.0, None, length=3, key=key)[0]

    def branches(key, theta):  # only one branch runs: its sites may share a key
        x = je.sample(jax.random.split(key)[1], D.Poisson(theta))
        return je.cond(
            x > 1,
            lambda: je.sample(jax.random.split(key)[0], D.Poisson(theta)),
            lambda: 2.0 * je.sample(jax.random.split(key)[0], D.Poisson(theta)),
        )

    def nested(key, theta):
        def outer(c, k):
            def inner(c2, i):
                return c2 + je.sample(jax.random.fold_in(k, i), D.Poisson(theta)), None

            return je.scan(inner, c, jnp.arange(2))[0], None

        return je.scan(outer, 0.0, jax.random.split(key, 3))[0]

    def segments(key, theta):
        def step(c, k):
            return c + je.sample(jax.random.split(k)[1], D.Poisson(theta)), None

        return je.scan(step, 0.0, jax.random.split(key, 5), checkpoint_every=2)[0]

    for fn in (different_keys, rows, loop_key, branches, nested, segments):
        _traces(fn, SF, THETA)
    _traces(rows, SAD, THETA)


def test_keys_passed_as_separate_arguments_are_not_compared():
    # equal values in separate arguments cannot be known equal at trace time (documented)
    def f(key, theta, other):
        return je.sample(key, D.Poisson(theta)) * je.sample(other, D.Poisson(theta))

    _traces(f, SF, THETA, KEY)


# --------------------------------------------------------------------------------------
# the value numbering itself
# --------------------------------------------------------------------------------------


def test_value_numbering_reads_jax_tracers():
    """Fails loudly if JAX's internals change so that the structure cannot be read."""
    internals = (_keys._Literal, _keys._BatchTracer, _keys._JaxprTracer, _keys._TracingEqn)
    assert () not in internals, "jax._src internals moved: key equality is not detected"
    found = {}

    def fn(key, i):
        vn = _keys.ValueNumbering()
        a, b = jax.random.split(key)[0], jax.random.split(key)[0]
        c = jax.random.split(key)[1]
        assert isinstance(a, _keys._JaxprTracer) and a.parent is not None
        found["split"] = (vn.number(a) == vn.number(b), vn.number(a) != vn.number(c))
        d, e = jax.random.fold_in(key, i), jax.random.fold_in(key, i)
        found["fold_in"] = (
            vn.number(d) == vn.number(e),
            vn.number(d) != vn.number(jax.random.fold_in(key, i + 1)),
        )
        batched = jax.vmap(lambda k: jax.random.split(k)[0])
        ks = jax.random.split(key, 3)
        found["vmap"] = (vn.number(batched(ks)) == vn.number(batched(ks)),)
        return a

    jax.make_jaxpr(fn)(KEY, 1)
    jax.make_jaxpr(jax.jit(fn))(KEY, 1)
    assert all(all(v) for v in found.values()), found
    vn = _keys.ValueNumbering()  # concrete arrays compare by value
    assert vn.number(jax.random.split(KEY)[0]) == vn.number(jax.random.split(KEY)[0])
    assert vn.number(jax.random.split(KEY)[0]) != vn.number(jax.random.split(KEY)[1])


def test_value_numbering_of_a_long_chain_is_iterative():
    def fn(key):
        for _ in range(3000):  # deeper than Python's recursion limit
            key = jax.random.fold_in(key, 1)
        vn = _keys.ValueNumbering()
        assert vn.number(key) == vn.number(key)
        return key

    jax.make_jaxpr(fn)(KEY)
