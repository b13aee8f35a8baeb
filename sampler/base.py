"""Backend-independent sampling logic: request fan-out, thinking budget, completion assembly.

A backend implements one primitive, :meth:`BaseSampler._sample`, which runs a flat list of
single-sample requests (prompt ids, max tokens, seed, stop strings) in one batch. Everything
else — the ``n`` fan-out with per-sample seeds, budget forcing in two phases, finish reasons,
sampled-token masks — lives here, so every backend behaves the same.

Thinking budget, in two phases:

1. Sample at most ``min(think_budget, max_tokens)`` tokens.
2. A completion that stopped (EOS or a stop string) is done. One that used its whole phase-1
   budget and already closed ``</think>`` continues normally up to ``max_tokens``. One that
   did not close it is budget-exhausted: ``truncate`` ends it with finish_reason
   ``think_budget``; ``force`` appends ``</think>`` (inserted, ``sampled_mask=False``) and
   lets the model answer within ``answer_budget`` tokens.

Phase 2 runs as one batched call over every completion that needs it. A completion that ran
into the context window (``max_model_len``) first is a plain ``length`` finish: it is neither
budget-exhausted nor continued. A backend matches stop strings in the text it generates, so
phase 2 alone cannot see one that began in phase 1; :meth:`BaseSampler._stop_across` finds it
and cuts the completion there, as one uninterrupted request would have stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from thinkgym.sampler.types import (
    THINK_CLOSE,
    Completion,
    SamplingConfig,
    check_prompts,
    request_seed,
)


@dataclass
class SampleRequest:
    """One single-sample generation request, as a backend sees it."""

    prompt_ids: list[int]
    max_tokens: int
    seed: int | None
    stop: list[str] = field(default_factory=list)


@dataclass
class RawSample:
    """What a backend returns for one request: sampled tokens only."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


class BaseSampler:
    """Shared ``generate`` on top of a backend's batched :meth:`_sample`."""

    tokenizer: Any
    backend: str = "base"

    def _sample(self, requests: list[SampleRequest], cfg: SamplingConfig) -> list[RawSample]:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int | None:
        return len(self.tokenizer) if self.tokenizer is not None else None

    @property
    def max_context(self) -> int | None:
        """Context window (prompt + completion tokens), or None if the backend sets none."""
        return getattr(self, "max_model_len", None)

    # -- public API ---------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], cfg: SamplingConfig, seeds: list[int | None] | None = None
    ) -> list[list[Completion]]:
        """Sample ``cfg.n`` completions per tokenized prompt (see the module docstring).

        ``seeds`` (optional, one per prompt) replaces ``cfg.seed`` as each prompt's base seed, so
        a prompt's samples don't depend on its position in the batch.
        """
        if not isinstance(cfg, SamplingConfig):
            raise TypeError(f"cfg must be a SamplingConfig, got {type(cfg).__name__}")
        cfg.validate()
        prompts = check_prompts(prompts, self.vocab_size)
        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")

        def rseed(i: int, j: int, phase: int) -> int | None:
            if seeds is None:
                return request_seed(cfg, i, j, phase)
            return request_seed(replace(cfg, seed=seeds[i]), 0, j, phase)

        ctx = self.max_context
        if ctx is not None:
            for i, p in enumerate(prompts):
                if len(p) >= ctx:
                    raise ValueError(f"prompt {i} has {len(p)} tokens and does not fit max_model_len={ctx}")
        keys = [(i, j) for i in range(len(prompts)) for j in range(cfg.n)]
        budget = cfg.think_budget
        phase1_max = cfg.max_tokens if budget is None else max(1, min(budget, cfg.max_tokens))
        if budget == 0:
            phase1_max = 0
        reqs = [SampleRequest(prompts[i], phase1_max, rseed(i, j, 0), list(cfg.stop)) for i, j in keys]
        if phase1_max > 0:
            raws = self._sample(reqs, cfg)
        else:
            raws = [RawSample([], [], "length") for _ in reqs]

        # Per (i, j): token ids, logprobs, mask, forced ids, finish reason.
        state: list[dict[str, Any]] = [
            {"ids": list(r.token_ids), "lps": list(r.logprobs), "mask": [True] * len(r.token_ids),
             "forced": [], "finish": r.finish_reason}
            for r in raws
        ]
        if budget is not None:
            close_ids = self._think_close_ids()
            cont: list[tuple[int, SampleRequest]] = []
            for k, ((i, j), st) in enumerate(zip(keys, state)):
                if st["finish"] != "length":
                    continue
                # Tokens the context window still holds after this completion (None: no limit).
                room = None if ctx is None else ctx - len(prompts[i]) - len(st["ids"])
                closed = self._think_closed(st["ids"])
                if closed:
                    left = cfg.max_tokens - len(st["ids"])
                    if room is not None:
                        left = min(left, room)
                    if left > 0:
                        cont.append((k, SampleRequest(prompts[i] + st["ids"], left, rseed(i, j, 1), list(cfg.stop))))
                elif phase1_max < budget or len(st["ids"]) < phase1_max:
                    pass  # max_tokens or the context window ran out before the budget: a plain length finish
                elif cfg.budget_mode == "truncate":
                    st["finish"] = "think_budget"
                elif room is not None and room <= len(close_ids):
                    pass  # the budget ran out just as the context did: no room to close and answer
                else:
                    st["forced"] = list(close_ids)
                    st["ids"] += close_ids
                    st["lps"] += [0.0] * len(close_ids)
                    st["mask"] += [False] * len(close_ids)
                    cont.append((k, SampleRequest(prompts[i] + st["ids"], cfg.answer_budget, rseed(i, j, 1), list(cfg.stop))))
            if cont:
                more = self._sample([r for _, r in cont], cfg)
                for (k, _), r in zip(cont, more):
                    st = state[k]
                    start = len(st["ids"])
                    st["ids"] += r.token_ids
                    st["lps"] += r.logprobs
                    st["mask"] += [True] * len(r.token_ids)
                    st["finish"] = r.finish_reason
                    cut = self._stop_across(st["ids"], start, cfg.stop) if cfg.stop else None
                    if cut is not None:
                        del st["ids"][cut:], st["lps"][cut:], st["mask"][cut:]
                        st["finish"] = "stop"

        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _j), st in zip(keys, state):
            out[i].append(
                Completion(
                    prompt_ids=list(prompts[i]),
                    token_ids=st["ids"],
                    logprobs=st["lps"] if cfg.logprobs else [],
                    text=self.decode(st["ids"]),
                    finish_reason=st["finish"] if st["finish"] in ("stop", "length", "think_budget") else "stop",
                    sampled_mask=st["mask"],
                    forced_ids=st["forced"],
                    think_tokens=self._think_tokens(st["ids"], st["mask"]),
                )
            )
        return out

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:  # pragma: no cover - overridden where there is something to free
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _stop_across(self, ids: list[int], start: int, stops: list[str]) -> int | None:
        """Where a stop string that begins before token ``start`` (phase 1 or the forced close)
        and ends after it is complete: the length of ``ids`` up to that token, or None.

        The phase-2 request sees ``ids[:start]`` as prompt, and engines match stop strings only in
        the text they generate, so such a stop would pass unnoticed and the completion would run
        on to its token limit. Stops wholly after ``start`` were matched by the backend already.
        """
        longest = max(len(s) for s in stops)
        # Every token is at least one byte and a character at most four: 4 * longest tokens hold
        # the last ``longest`` characters before ``start`` (a stop's head lies among them).
        lo = max(0, start - 4 * longest)
        head = len(self.decode(ids[lo:start]))
        for end in range(start + 1, len(ids) + 1):
            text = self.decode(ids[lo:end])
            if any(s in text[max(0, head - len(s) + 1):] for s in stops):
                return end
            if len(text) - head >= longest:  # any stop begun before start would have ended by now
                return None
        return None

    # -- thinking-block helpers -----------------------------------------------------------

    def _think_close_ids(self) -> list[int]:
        return list(self.tokenizer.encode(THINK_CLOSE, add_special_tokens=False))

    def _think_closed(self, ids: list[int]) -> bool:
        return THINK_CLOSE in self.tokenizer.decode(ids, skip_special_tokens=False)

    def _think_tokens(self, ids: list[int], mask: list[bool]) -> int | None:
        """Sampled tokens before the first ``</think>``; None if there is none."""
        close = self._think_close_ids()
        if len(close) == 1:
            try:
                end = ids.index(close[0])
            except ValueError:
                return None
        else:
            if not self._think_closed(ids):
                return None
            lo, hi = 0, len(ids)  # smallest prefix whose text contains the close marker
            while lo < hi:
                mid = (lo + hi) // 2
                if self._think_closed(ids[: mid + 1]):
                    hi = mid
                else:
                    lo = mid + 1
            end = lo + 1 - len(close)
        return sum(mask[: max(end, 0)])


class WeightsMismatch(KeyError, ValueError):
    """New weights that do not fit the sampler's model (names or shapes), refused before any of
    them is loaded. A KeyError and a ValueError, so either ``except`` catches it."""

    def __str__(self) -> str:  # KeyError's own str() would print the message as a repr
        return str(self.args[0]) if self.args else ""


def check_weights(weights: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                  optional: Iterable[str] = ()) -> None:
    """Refuse ``weights`` (tensors, or shape tuples) unless it has every name of ``expected``
    (``optional`` ones may be left out), no other name, and the same shapes.

    A partial load would leave the sampler with a mix of old and new weights, and vLLM's in-place
    reload, handed an unknown name or a wrong shape, stops half-way with its layers on the meta
    device: every later ``generate`` then fails or hangs.
    """
    bad_type = next((k for k, v in weights.items() if not isinstance(v, tuple) and not hasattr(v, "shape")), None)
    if bad_type is not None:
        raise TypeError(f"state dict entry {bad_type!r} is a {type(weights[bad_type]).__name__}, not a tensor")

    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, tuple) else tuple(v.shape)

    names, want = set(weights), set(expected)
    missing = sorted(want - names - set(optional))
    unexpected = sorted(names - want)
    shapes = [f"{k} {shape(weights[k])} (model: {shape(expected[k])})"
              for k in sorted(names & want) if shape(weights[k]) != shape(expected[k])]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    if problems:
        raise WeightsMismatch("weights do not match the model, none were loaded: " + "; ".join(problems))


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF checkpoint dir: those its ``model.safetensors.index.json``
    names, else every ``*.safetensors`` file. The index matters where a repo ships one model twice
    (e.g. ``consolidated.safetensors`` beside the HF shards, in other names)."""
    if not path.is_dir():
        return []
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [path / n for n in names if (path / n).is_file()]
    return sorted(path.glob("*.safetensors"))


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Names and shapes of the tensors in an HF checkpoint dir's safetensors files (read from
    their headers, no tensor is loaded); None if it has none."""
    files = _weight_files(Path(path))
    if not files:
        return None
    from safetensors import safe_open

    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = tuple(h.get_slice(k).get_shape())
    return out


# Checkpoint tensors vLLM's loaders drop by name (old rotary-embedding caches): neither required
# in nor refused from new weights.
_VLLM_DROPS = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def check_checkpoint_weights(weights: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], tied: bool) -> None:
    """:func:`check_weights` against the tensors of the checkpoint a vLLM engine was started from
    (:func:`checkpoint_shapes`). A tied model's checkpoint may leave ``lm_head.weight`` out; new
    weights may carry it or not."""
    def kept(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not any(x in k for x in _VLLM_DROPS)}

    expected = kept(shapes)
    optional = set()
    if tied and "model.embed_tokens.weight" in expected:
        expected.setdefault("lm_head.weight", expected["model.embed_tokens.weight"])
        optional.add("lm_head.weight")
    check_weights(kept(weights), expected, optional)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read the safetensors files of an HF checkpoint dir into one state dict."""
    path = Path(path)
    files = _weight_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no HF checkpoint (*.safetensors) found")
    from safetensors.torch import load_file

    sd: dict[str, Any] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd
