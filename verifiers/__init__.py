"""Graders: turn a completion into a reward (``Grade``)."""

from thinkgym.verifiers.base import GRADERS, Grade, GraderSpec, get_grader, grade, list_graders, register_grader
from thinkgym.verifiers import math_equiv as _math_equiv  # noqa: F401,E402  registers "math"
from thinkgym.verifiers import format as _format  # noqa: F401,E402  registers "format"
from thinkgym.verifiers import judge as _judge  # noqa: F401,E402  registers "judge"
from thinkgym.verifiers import rubric as _rubric  # noqa: F401,E402  registers "math+format"
from thinkgym.verifiers import code as _code  # noqa: F401,E402  registers "code"
from thinkgym.verifiers import countdown as _countdown  # noqa: F401,E402  registers "countdown"

__all__ = ["GRADERS", "Grade", "GraderSpec", "get_grader", "grade", "list_graders", "register_grader"]
