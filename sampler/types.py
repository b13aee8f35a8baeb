"""Sampler data types and protocol, shared by the vLLM, vLLM-server and HF backends.

Light module: no torch or vLLM at import time, so the learner and the CLI can import it freely.

Logprob convention (all backends): ``Completion.logprobs[t]`` is the sampler's log-probability
of the sampled token under the distribution it was sampled from: ``log_softmax`` of
``logits / temperature`` after top-k / top-p filtering, renormalized over the tokens kept (vLLM's
``logprobs_mode="processed_logprobs"``; the HF backend computes the same). Greedy sampling
(``temperature=0``) reports the plain ``log_softmax(logits)``. Without top-k / top-p these equal
a teacher-forced ``log_softmax(logits / temperature)``; with them a kept token's logprob is
higher by ``-log`` of the kept mass, as the importance ratio of a sample from the filtered
distribution needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "think_budget"]
BudgetMode = Literal["force", "truncate"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _is_int(x: Any) -> bool:
    """An integer (numpy's too), not a bool: ``True`` as a token count is a typo, not 1."""
    import numbers

    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass
class SamplingConfig:
    """How to sample a group of completions per prompt."""

    n: int = 1
    """Completions per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 256
    """Cap on model-sampled tokens per completion (per turn in multi-turn rollouts). A completion
    forced out of its think block gets ``answer_budget`` more tokens after the forced
    ``</think>`` (so up to ``think_budget + answer_budget`` sampled tokens)."""
    seed: int | None = 0
    """Base seed: the same seed, prompts and weights give the same tokens. None = unseeded."""
    stop: list[str] = field(default_factory=list)
    """Stop strings (kept in the output, e.g. ``</answer>``)."""
    think_budget: int | None = None
    """Max sampled tokens before ``</think>``; None = no thinking budget."""
    answer_budget: int = 64
    """In ``force`` mode: tokens allowed after the forced ``</think>``."""
    budget_mode: BudgetMode = "force"
    """``force``: close the think block with ``</think>`` and let the model answer within
    ``answer_budget``; ``truncate``: end the completion (finish_reason ``think_budget``)."""
    logprobs: bool = True
    """Return the sampled tokens' logprobs."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        # Written so that NaN (false under every comparison) fails it too; inf is no temperature.
        if not (0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.think_budget is not None and (not _is_int(self.think_budget) or self.think_budget < 0):
            raise ValueError(f"think_budget must be None or an integer >= 0, got {self.think_budget!r}")
        if not _is_int(self.answer_budget) or self.answer_budget < 1:
            raise ValueError(f"answer_budget must be a positive integer, got {self.answer_budget!r}")
        if not isinstance(self.logprobs, bool):
            raise ValueError(f"logprobs must be true or false, got {self.logprobs!r}")
        if self.budget_mode not in ("force", "truncate"):
            raise ValueError(f"budget_mode must be 'force' or 'truncate', got {self.budget_mode!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        # Numpy numbers pass the checks above, but vLLM's SamplingParams refuses a numpy n or
        # top_k and JSON (the vLLM-server client) any numpy integer: plain Python numbers from here.
        for k in ("n", "max_tokens", "top_k", "answer_budget", "seed", "think_budget"):
            if getattr(self, k) is not None:
                setattr(self, k, int(getattr(self, k)))
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``token_ids`` holds every completion token, including tokens the sampler inserted itself
    (the forced ``</think>`` of budget forcing). ``sampled_mask[t]`` is False for inserted
    tokens: they were not sampled by the model and must be masked out of the policy loss.
    ``logprobs[t]`` is 0.0 at inserted positions.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    sampled_mask: list[bool] = field(default_factory=list)
    forced_ids: list[int] = field(default_factory=list)
    """Token ids inserted by budget forcing (empty if none)."""
    think_tokens: int | None = None
    """Sampled tokens before ``</think>`` (None if the completion never closed a think block)."""

    def __post_init__(self) -> None:
        if not self.sampled_mask:
            self.sampled_mask = [True] * len(self.token_ids)
        if len(self.sampled_mask) != len(self.token_ids):
            raise ValueError("sampled_mask must have one entry per completion token")
        if self.logprobs and len(self.logprobs) != len(self.token_ids):
            raise ValueError(
                f"logprobs has {len(self.logprobs)} entries for {len(self.token_ids)} completion tokens"
            )

    @property
    def num_sampled(self) -> int:
        """Model-sampled tokens (the completion length the learner trains on)."""
        return sum(self.sampled_mask)

    @property
    def forced(self) -> bool:
        return bool(self.forced_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_ids": self.prompt_ids,
            "token_ids": self.token_ids,
            "logprobs": self.logprobs,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "sampled_mask": self.sampled_mask,
            "forced_ids": self.forced_ids,
            "think_tokens": self.think_tokens,
        }


@runtime_checkable
class Sampler(Protocol):
    """A text generator that returns token ids and logprobs and can take new weights."""

    tokenizer: Any

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig) -> list[list[Completion]]:
        """Sample ``cfg.n`` completions for each tokenized prompt, in prompt order."""
        ...

    def update_weights(self, weights: Any) -> None:
        """Load new weights: a ``{name: tensor}`` state dict (HF names) or an HF checkpoint dir."""
        ...

    def close(self) -> None:
        """Free the engine (processes, memory)."""
        ...


def check_prompts(prompts: Any, vocab_size: int | None = None) -> list[list[int]]:
    """Validate a batch of tokenized prompts; raise a clear error on bad input."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise TypeError("prompts must be a list of token-id lists (tokenize text first)")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) or not isinstance(p, (list, tuple)):
            raise TypeError(f"prompt {i} must be a list of token ids, got {type(p).__name__}")
        if not p:
            raise ValueError(f"prompt {i} is empty")
        bad = next((t for t in p if not _is_int(t)), None)
        if bad is not None:  # int() would silently floor 3.7 or parse "5"
            raise TypeError(f"prompt {i} has a token id that is not an integer: {bad!r}")
        ids = [int(t) for t in p]
        if vocab_size is not None and any(t < 0 or t >= vocab_size for t in ids):
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab_size})")
        out.append(ids)
    return out


def mix_seed(*parts: int) -> int:
    """A seed in ``[0, 2**31 - 1)`` hashed from integer parts: stable across runs and platforms,
    and unrelated for different part tuples.

    A linear mix such as ``base + 7919 * step + 7919 * group`` repeats along diagonals (step 2's
    group 0 gets step 1's group 1 seed), so "independent" samples would share their noise across
    steps; a hash has no such structure. The range suits vLLM and torch generators."""
    import hashlib

    key = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31 - 1)


def request_seed(cfg: SamplingConfig, prompt_index: int, sample_index: int = 0, phase: int = 0) -> int | None:
    """A per-request seed derived from the base seed, stable across runs and backends."""
    if cfg.seed is None:
        return None
    return mix_seed(cfg.seed, prompt_index, sample_index, phase)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]], **template_kwargs: Any) -> list[int]:
    """Render chat ``messages`` with the tokenizer's chat template (generation prompt on)
    and return token ids. ``template_kwargs`` go to the template (e.g. ``enable_thinking``).

    A special-token string in a message's content (``<|im_end|>`` in a dataset question) is
    encoded as plain text (:func:`hide_special_strings`); only the template writes special tokens."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; pass token ids or set tokenizer.chat_template")
    messages, hidden, mark = hide_special_strings(tokenizer, messages)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    # The template already contains every special token; don't let the tokenizer add a BOS.
    return encode_hidden(tokenizer, text, hidden, mark)


def hide_special_strings(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[str], str]:
    """Replace each special-token string (``<|im_end|>``, ...) in the messages' content by a
    numbered marker; return the messages, the replaced strings and the marker
    (:func:`encode_hidden` encodes the rendered text).

    Message content is data: a dataset question, or env feedback quoting the policy's own output
    (a program's output echoed in retry feedback, a tool result). Encoded as-is,
    ``<|im_end|>\\n<|im_start|>assistant`` in it would become the real special tokens and forge
    a turn boundary. Content with no such string is left alone (the usual case: its tokens stay
    exactly as before).
    """
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    if not specials:
        return messages, [], ""
    pattern = re.compile("|".join(map(re.escape, specials)))
    texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
    if not any(pattern.search(t) for t in texts):
        return messages, [], ""
    mark = "\ue000"  # private-use; lengthened until no content holds it, so no content fakes a marker
    while any(mark in t for t in texts):
        mark += "\ue000"
    hidden: list[str] = []

    def hide(m: re.Match[str]) -> str:
        hidden.append(m.group())
        return f"{mark}{len(hidden) - 1}{mark}"

    out = [{**m, "content": pattern.sub(hide, m["content"])} if isinstance(m.get("content"), str) else m for m in messages]
    return out, hidden, mark


def encode_hidden(tokenizer: Any, text: str, hidden: list[str], mark: str) -> list[int]:
    """Token ids of ``text`` (no BOS added), each marker of :func:`hide_special_strings` as the
    plain-text ids of the string it replaced."""
    if not hidden:
        return list(tokenizer.encode(text, add_special_tokens=False))
    # An ordinary encode cuts the text at special tokens before anything else, so cutting it at
    # the hidden strings instead leaves every other id as it would have been. Every piece but the
    # first continues the text: encoded on its own, a SentencePiece-style tokenizer (Llama 2,
    # Mistral) would open it with a word-start space.
    ids: list[int] = []
    for k, piece in enumerate(re.split(f"{mark}(\\d+){mark}", text)):
        if k % 2:
            ids += _plain_text_ids(tokenizer, hidden[int(piece)], _special_ids(tokenizer))
        elif piece:
            ids += tokenizer.encode(piece, add_special_tokens=False) if k == 0 else _continuation_ids(tokenizer, piece)
    return ids


def _special_ids(tokenizer: Any) -> set[int]:
    return {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def _plain_text_ids(tokenizer: Any, text: str, special_ids: set[int]) -> list[int]:
    """Ids of a special-token string as plain text, continuing the text before it.

    A tokenizer that ignores ``split_special_tokens`` (some custom backends) still returns the
    special token: the string is then encoded in halves, down to single characters if need be,
    so that no piece spells a whole special token. Those ids are not the canonical split of the
    text, but they decode to it and never to a turn boundary.
    """
    plain = _continuation_ids(tokenizer, text, split_special_tokens=True)
    if not special_ids.intersection(plain):
        return plain
    if len(text) == 1:
        raise RuntimeError(f"{type(tokenizer).__name__} encodes {text!r} only as a special token")
    h = len(text) // 2
    return _plain_text_ids(tokenizer, text[:h], special_ids) + _plain_text_ids(tokenizer, text[h:], special_ids)


def _continuation_ids(tokenizer: Any, text: str, split_special_tokens: bool = False) -> list[int]:
    """Ids of ``text`` as it encodes after other text: encoded behind a newline, whose ids are
    then dropped (encoded alone instead when the newline would merge into ``text``)."""
    kw = {"add_special_tokens": False, "split_special_tokens": split_special_tokens}
    lead = list(tokenizer.encode("\n", **kw))
    both = list(tokenizer.encode("\n" + text, **kw))
    return both[len(lead):] if both[: len(lead)] == lead else list(tokenizer.encode(text, **kw))
