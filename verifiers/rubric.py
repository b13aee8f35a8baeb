"""Rubrics: weighted compositions of named graders, themselves registrable as graders.

``score = sum(w_i * s_i) / sum(w_i)`` over the components with a positive weight. A component with
weight 0 is run and logged (``Grade.components``) but does not move the score. If a weighted
component is an infrastructure error (``score=None``) the rubric is one too: a half-graded sum
would be a silently wrong reward. Partial credit passes through: a code grader that returns the
fraction of tests passed contributes that fraction.

    register_rubric("math+format", {"math": 1.0, "format": 0.1})
    grade("math+format", completion, gold)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from thinkgym.verifiers.base import GRADERS, Grade, GraderSpec, get_grader


@dataclass(frozen=True)
class Rubric:
    """A weighted sum of registered graders (all of them see the same completion, gold and meta)."""

    #: Grader name -> weight (>= 0; 0 = logged metric only).
    weights: Mapping[str, float]
    #: Name used in error messages (the registered name for registered rubrics).
    name: str = "rubric"
    #: Meta routed to one component only: ``meta["component_meta"] = {"judge": {"rubric": "..."}}``
    #: reaches only the judge.
    components_meta_key: str = field(default="component_meta", repr=False)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("a rubric needs at least one component")
        for n, w in self.weights.items():
            # An infinite weight makes the sum inf/inf = NaN, which the clamp below turns into 0.
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < math.inf:
                raise ValueError(f"rubric {self.name!r}: weight of {n!r} must be a finite number >= 0, got {w!r}")
        if not 0 < sum(self.weights.values()) < math.inf:
            raise ValueError(f"rubric {self.name!r}: at least one weight must be > 0, and their sum finite")

    def __call__(self, completion: str, gold: Any, **meta: Any) -> Grade:
        per = meta.pop(self.components_meta_key, None) or {}
        comps: dict[str, float | None] = {}
        reasons: list[str] = []
        extracted = None
        total = wsum = 0.0
        failed: list[str] = []
        for n, w in self.weights.items():
            g = get_grader(n)(completion, gold, **{**meta, **per.get(n, {})})
            comps[n] = g.score
            for k, v in g.components.items():
                comps[f"{n}.{k}"] = v
            reasons.append(f"{n}: {g.reason}" if g.reason else n)
            if extracted is None and g.extracted is not None:
                extracted = g.extracted
            if w > 0:
                if g.score is None:
                    failed.append(n)
                else:
                    total += w * g.score
                    wsum += w
        reason = "; ".join(reasons)
        if failed:
            return Grade.error(f"component(s) {', '.join(failed)} failed: {reason}", extracted=extracted, components=comps)
        return Grade(min(1.0, max(0.0, total / wsum)), extracted=extracted, reason=reason, components=comps,
                     details={"weights": dict(self.weights)})


def register_rubric(name: str, weights: Mapping[str, float], version: str = "1", description: str = "") -> Rubric:
    """Register ``Rubric(weights)`` as grader ``name`` (components are looked up at grading time)."""
    r = Rubric(dict(weights), name=name)
    desc = description or " + ".join(f"{w:g}*{n}" for n, w in r.weights.items())
    # The registering module is the origin, so pool workers can import it to find the rubric.
    origin = sys._getframe(1).f_globals.get("__name__", __name__)
    GRADERS.add(name, GraderSpec(name, version, r, desc), origin=origin)
    return r


MATH_FORMAT = register_rubric("math+format", {"math": 1.0, "format": 0.1})
