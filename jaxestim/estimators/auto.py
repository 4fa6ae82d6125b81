"""``auto``: pathwise where reparameterizable, the score function elsewhere."""

from __future__ import annotations

from typing import ClassVar

from jaxestim._estimator import Estimator
from jaxestim._util import pytree_dataclass
from jaxestim.estimators.pathwise import Pathwise


@pytree_dataclass
class Auto(Estimator):
    """Pathwise where the site is reparameterizable, score function elsewhere.

    Discrete sites use the score function with the leave-one-out baseline when
    ``num_samples >= 2`` (no baseline otherwise). All score-function sites of one program
    share one baseline group. Unbiased. This is what ``estimator=None`` means.
    """

    name: ClassVar[str] = "auto"

    def process_site(self, ctx, key, dist, sample_shape):
        if dist.is_reparameterized and not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        return ctx.auto_score.process_site(ctx, key, dist, sample_shape)


def auto() -> Auto:
    """Pathwise where reparameterizable, score function elsewhere (see :class:`Auto`)."""
    return Auto()
