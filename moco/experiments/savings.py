"""How many labels pretraining saves: the headline of ``moco evaluate``.

Each init's fine-tuned accuracy is a curve over the shares of labels it was given. The *target* is the
accuracy random init reaches with all its labels, or the highest it reaches at any share (a short budget
can leave 100% below 10%). The pretrained init's curve is followed from the fewest labels up until it
reaches the target, interpolated linearly on the log-label axis between two measured shares (accuracy grows
about linearly in the log of the labels, so a straight line there is the honest guess between two points).
The labels saved are one minus the share it needed over the share random init used. Three other endings
are said as they are: reached already at the fewest labels measured (the saving is a lower bound), never
reached (no crossing), or reached only with more labels than random init used (a cost, not a saving).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

Curve = dict[float, list[float]]
"""Accuracies (%) by share of the labels (a fraction in (0, 1]), one per seed."""


@dataclass(frozen=True)
class Saving:
    """Where a pretrained init's curve meets random init's target accuracy."""

    target: float  # random init's accuracy to reach: its mean at ``target_share``
    target_share: float  # the share of labels random init used for it
    needed: float | None  # the share the pretrained init needs for it; None: it never reaches it
    at_least: bool  # reached at the fewest labels measured already: ``needed`` is an upper bound
    best: float  # the pretrained init's best mean accuracy
    best_share: float  # ... and where

    @property
    def saved(self) -> float | None:
        """The share of random init's labels that pretraining saves (negative: it needs more); None: no
        crossing."""
        return None if self.needed is None else 1.0 - self.needed / self.target_share


def means(curve: Curve) -> list[tuple[float, float]]:
    """(share, mean accuracy) of every share with at least one result, fewest labels first."""
    return [(f, statistics.mean(v)) for f, v in sorted(curve.items()) if v]


def crossing(points: list[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """The first share at which the piecewise-linear curve through ``points`` (share, accuracy; interpolated in
    log share) reaches ``target``, and whether that is already the first point; (None, False) if never."""
    if not points:
        return None, False
    if points[0][1] >= target:
        return points[0][0], True
    for (f0, y0), (f1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            t = (target - y0) / (y1 - y0)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0))), False
    return None, False


def labels_saved(pretrained: Curve, random: Curve) -> Saving:
    """Where ``pretrained``'s mean curve reaches the best mean accuracy of ``random`` (its highest share on a
    tie), as a :class:`Saving`."""
    rnd, pre = means(random), means(pretrained)
    if not rnd or not pre:
        raise ValueError("labels saved needs results of both inits")
    target_share, target = max(rnd, key=lambda p: (p[1], p[0]))
    needed, at_least = crossing(pre, target)
    best_share, best = max(pre, key=lambda p: (p[1], -p[0]))
    return Saving(target, target_share, needed, at_least, best, best_share)


def per_seed(pretrained: Curve, random: Curve) -> list[Saving]:
    """:func:`labels_saved` of each seed's pair of curves (seed ``i`` of both inits, at every share that has
    it): the spread of the headline over seeds."""
    seeds = min(len(v) for v in (*pretrained.values(), *random.values()))
    return [labels_saved({f: [v[i]] for f, v in pretrained.items()}, {f: [v[i]] for f, v in random.items()})
            for i in range(seeds)]


def seed_spread(*curves: Curve) -> float:
    """The largest difference between two seeds of one share and init (0 with one seed)."""
    return max((max(v) - min(v) for c in curves for v in c.values() if len(v) > 1), default=0.0)


def within_spread(pretrained: Curve, random: Curve) -> bool:
    """Whether the pretrained init is nowhere ahead of random init by more than the seeds' spread, at the
    shares both measured up to random init's target share."""
    s = labels_saved(pretrained, random)
    noise = seed_spread(pretrained, random)
    gaps = [statistics.mean(pretrained[f]) - statistics.mean(random[f]) for f in sorted(random)
            if f <= s.target_share and pretrained.get(f) and random[f]]
    return all(g <= noise for g in gaps)


def pct(share: float) -> str:
    """A share as the report writes it: 1%, 12.5%, 0.4%."""
    x = 100 * share
    if 99.5 <= x < 100:  # not rounded up to all of them
        return f"{x:.1f}%"
    return f"{x:.0f}%" if abs(x) >= 10 or abs(x - round(x)) < 1e-9 else f"{x:.2g}%"


def sentence(name: str, s: Saving, seeds: list[Saving], noise: float, within: bool,
             baseline: str = "random init") -> str:
    """The headline: ``pretraining saves ~80% of the labels: MoCo init reaches random init's 100%-label
    accuracy (62.0%) with ~20% of them``, with the seeds' range and a warning when it is within their spread."""
    reach = f"{baseline}'s {pct(s.target_share)}-label accuracy ({s.target:.1f}%)"
    if s.needed is None:
        line = (f"pretraining saves no labels here: {name} init stays below {reach} at every share measured "
                f"(best {s.best:.1f}% at {pct(s.best_share)})")
    elif s.at_least:
        line = (f"pretraining saves at least {pct(s.saved)} of the labels: {name} init reaches {reach} already "
                f"with {pct(s.needed)} of them, the fewest measured")
    elif s.saved < 0:
        line = (f"pretraining costs labels here: {name} init needs ~{pct(s.needed)} of them to reach {reach}")
    else:
        line = (f"pretraining saves ~{pct(s.saved)} of the labels: {name} init reaches {reach} with "
                f"~{pct(s.needed)} of them")
    saved = [x.saved for x in seeds]
    if len(seeds) > 1:
        if all(v is not None for v in saved):
            line += f" (seeds: {pct(min(saved))} to {pct(max(saved))} saved)"
        else:
            line += f" (seeds: {sum(v is None for v in saved)} of {len(seeds)} never reach it)"
    if len(seeds) > 1 and within:
        line += f"; the difference lies within the seeds' spread ({noise:.1f} points), so it may be noise"
    return line
