"""A text space for prompts and completions.

Gymnasium's ``Text`` space has a fixed character set (alphanumerics by default), so it rejects
the spaces, newlines, punctuation and Unicode that every real prompt and completion contains.
``TextSpace`` accepts any ``str`` up to a length bound.
"""

from __future__ import annotations

import numbers
import string
from typing import Any

import numpy as np
from gymnasium.spaces import Space
from gymnasium.vector.utils import create_shared_memory

# Sampling alphabet: printable ASCII (incl. space, tab, newline) plus a few non-ASCII characters
# and the tags the graders look for, so random actions exercise the parsers too.
_SAMPLE_CHARS = list(string.printable) + list("éß∑π→😀中") + ["<think>", "</think>", "<answer>", "</answer>"]


class TextSpace(Space[str]):
    """Any Unicode string of at most ``max_length`` characters."""

    def __init__(self, max_length: int = 1 << 20, *, sample_max_length: int = 64, seed: int | np.random.Generator | None = None) -> None:
        for name, value in (("max_length", max_length), ("sample_max_length", sample_max_length)):
            # Refused rather than truncated (1.5) or compared with an int ("10").
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.max_length = int(max_length)
        self.sample_max_length = int(min(sample_max_length, max_length))
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """Random printable text (spaces and newlines included) of random length."""
        if mask is not None or probability is not None:
            raise NotImplementedError("TextSpace.sample does not support masks")
        n = int(self.np_random.integers(0, self.sample_max_length + 1))
        idx = self.np_random.integers(0, len(_SAMPLE_CHARS), size=n)
        out = "".join(_SAMPLE_CHARS[i] for i in idx)
        return out[: self.max_length]

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length

    def to_jsonable(self, sample_n: Any) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)


@create_shared_memory.register(TextSpace)
def _no_shared_memory(space: TextSpace, n: int = 1, ctx: Any = None) -> Any:
    # Gymnasium's async shared-memory path reads the buffer once, at construction, into a tuple
    # of str (so every later text observation would be stale), and a fixed buffer would cost
    # 4 bytes x max_length per env. Text goes through the pipes instead. Raised as a ValueError,
    # not a CustomSpaceError, so that AsyncVectorEnv shows this message rather than a generic one.
    raise ValueError(
        "text observations (TextSpace) cannot use AsyncVectorEnv's shared memory; pass "
        "shared_memory=False: gymnasium.make_vec(env_id, num_envs=n, vectorization_mode='async', "
        "vector_kwargs={'shared_memory': False}) or gymnasium.vector.AsyncVectorEnv(env_fns, shared_memory=False)"
    )
