"""Graders: turn a completion into a reward (``Grade``)."""

from thinkgym.verifiers.base import GRADERS, Grade, GraderSpec, get_grader, grade, list_graders, register_grader

__all__ = ["GRADERS", "Grade", "GraderSpec", "get_grader", "grade", "list_graders", "register_grader"]
