"""Exception types raised by jaxestim."""


class EstimatorError(ValueError):
    """An estimator was asked to do something it cannot do correctly.

    Raised at trace time, e.g. when the pathwise estimator meets a discrete sample site
    (whose reparameterization gradient would silently be zero), when a per-site estimator
    override is not a valid combination, or when a recording sample site runs inside plain
    ``jax.lax`` control flow instead of :func:`jaxestim.scan`.
    """
