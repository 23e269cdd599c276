r"""The lab's instance grid: the hand-made cases of ``docs/scripts/straight_through_bias.py``
plus seeded random instances.

Each :class:`Instance` is one token's reference distribution and one objective. Hand-made
(:func:`hand_made`): :math:`\theta = (1, 0.5, -0.5, -1)` with the affine, :math:`z_1^2`,
gated-sum (Exact-1, Exact-2, band [1, 3]) and exponential losses of that script (same
constants; ``tests/verify/test_estimators_lab.py`` checks that they agree). Random
(:func:`random_instances`): for each seed and each ``n``, :math:`\theta \sim N(0, 1.5^2)^n`,
the four objectives of :func:`verify.estimators.objectives.random_objectives`, under Exact-2
and the band [1, 3]. Quick: ``n`` in (4, 6), one seed; full: ``n`` in (4, 6, 8, 10), three seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import probmoe_ref as pr

from . import objectives as obj

__all__ = ["Instance", "THETA", "EXPERTS", "TARGET", "AFFINE", "hand_made", "random_instances",
           "grid"]

THETA = np.array([1.0, 0.5, -0.5, -1.0])
EXPERTS = np.array([[1.0, -0.5, 0.3, 0.8],
                    [0.2, 0.9, -1.0, 0.4]])
TARGET = np.array([0.5, -0.3])
AFFINE = np.array([0.7, -1.2, 0.4, 2.0])


@dataclass(frozen=True)
class Instance:
    """``label`` (objective / distribution / source), the distribution and the objective."""

    label: str
    family: str
    dist: object
    objective: obj.Objective


def hand_made() -> list[Instance]:
    k1, k2, band = pr.ExactK(THETA, 1), pr.ExactK(THETA, 2), pr.DynamicK(THETA, 1, 3)
    mixture = obj.gated_sum(EXPERTS, TARGET)
    cases = [(obj.linear(AFFINE, "affine"), "Exact-2", k2),
             (obj.square_first(4), "Exact-2", k2),
             (mixture, "Exact-1", k1), (mixture, "Exact-2", k2), (mixture, "band [1, 3]", band),
             (obj.exponential(AFFINE), "Exact-2", k2)]
    return [Instance(f"{o.name} | {fam} | hand-made", fam, d, o) for o, fam, d in cases]


def random_instances(sizes=(4, 6), seeds=(0,)) -> list[Instance]:
    out = []
    for seed in seeds:
        for n in sizes:
            rng = np.random.default_rng([seed, n, 14])
            theta = rng.normal(size=n) * 1.5
            for o in obj.random_objectives(n, rng):
                for fam, d in (("Exact-2", pr.ExactK(theta, 2)),
                               ("band [1, 3]", pr.DynamicK(theta, 1, 3))):
                    out.append(Instance(f"{o.name} | {fam} | n={n} seed={seed}", fam, d, o))
    return out


def grid(quick: bool) -> list[Instance]:
    """The hand-made cases, then the random ones (the quick or the full grid)."""
    if quick:
        return hand_made() + random_instances((4, 6), (0,))
    return hand_made() + random_instances((4, 6, 8, 10), (0, 1, 2))
