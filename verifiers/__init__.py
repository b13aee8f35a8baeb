"""Graders: turn a completion into a reward (``Grade``)."""

from thinkgym.verifiers.base import GRADERS, Grade, GraderSpec, get_grader, grade, list_graders, register_grader
from thinkgym.verifiers import math_equiv as _math_equiv  # noqa: F401,E402  registers "math"
from thinkgym.verifiers import format as _format  # noqa: F401,E402  registers "format"

__all__ = ["GRADERS", "Grade", "GraderSpec", "get_grader", "grade", "list_graders", "register_grader"]
