"""Rollout collection: run groups of episodes over Gymnasium envs with one sampler.

Token in, token out: an episode's ``input_ids`` are exactly the tokens the model saw and
sampled — the rendered first prompt, each completion's sampled ids (never re-tokenized), and
between turns the chat-template "bridge" (end of the assistant turn, the env feedback as a user
turn, the next assistant header). Only model-sampled tokens get ``loss_mask=1``; prompt, bridge
and feedback tokens and tokens inserted by budget forcing get 0. Message content is data:
feedback can quote the policy's own output and a dataset question can hold anything, so a
special-token string in either (``<|im_end|>``) is encoded as plain text, never as the token
(:func:`~thinkgym.sampler.types.chat_prompt_ids` for the first prompt, the same helpers for
each bridge): neither the policy nor the data can forge a turn boundary in a prompt.

Per turn, every active episode goes into ONE ``sampler.generate`` call. Env steps (which run the
graders) go to a thread pool as soon as their completion exists; episodes whose step finished
within ``regroup_s`` join the next turn's batch, the others join a later one, so a slow grade
never stalls generation for the rest. Each (group, member, turn) has its own seed, so results
do not depend on that timing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from thinkgym.sampler.types import (
    Completion,
    Sampler,
    SamplingConfig,
    chat_prompt_ids,
    encode_hidden,
    hide_special_strings,
    mix_seed,
)
from thinkgym.verifiers.extract import THINK_OPEN, assistant_turn

log = logging.getLogger("thinkgym.sampler")


@dataclass
class Episode:
    """One rollout: the token sequence the learner trains on, and how it was graded."""

    group_id: int
    index: int  # task item index
    env_id: str
    input_ids: list[int]
    loss_mask: list[int]  # 1 on model-sampled tokens only
    old_logprobs: list[float]  # sampler logprobs aligned to input_ids; 0.0 where masked
    prompt_len: int
    completion_len: int = 0  # model-sampled tokens (sum of loss_mask)
    turn_lens: list[int] = field(default_factory=list)  # model-sampled tokens per turn
    reward: float | None = None  # None: the final grade was an infrastructure error
    grades: list[dict[str, Any]] = field(default_factory=list)  # one per turn
    turn_rewards: list[float | None] = field(default_factory=list)
    finish_reason: str = "stop"  # of the last turn: stop | length | think_budget | context
    finish_reasons: list[str] = field(default_factory=list)
    num_turns: int = 0
    text: str = ""  # the last completion's text (what the final grade judged)
    texts: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False  # ran out of turns (env limit, max_turns) or context
    think_tokens: list[int | None] = field(default_factory=list)
    member: int = 0  # position within the group
    think_in_prompt: bool = False  # the rendered prompt already opened <think>

    @property
    def infra_error(self) -> bool:
        return self.reward is None

    @property
    def longest_turn(self) -> int:
        """Most model-sampled tokens in one turn: what a per-turn ``max_tokens`` bounds."""
        return max(self.turn_lens, default=0)

    @property
    def extracted(self) -> str | None:
        return self.grades[-1].get("extracted") if self.grades else None

    def to_dict(self, tokens: bool = False) -> dict[str, Any]:
        d = {
            "group_id": self.group_id, "member": self.member, "index": self.index, "env_id": self.env_id,
            "reward": self.reward, "turn_rewards": self.turn_rewards, "finish_reason": self.finish_reason,
            "finish_reasons": self.finish_reasons, "num_turns": self.num_turns, "prompt_len": self.prompt_len,
            "completion_len": self.completion_len, "turn_lens": self.turn_lens, "think_tokens": self.think_tokens,
            "terminated": self.terminated, "truncated": self.truncated, "texts": self.texts,
            "grades": self.grades, "messages": self.messages,
        }
        if tokens:
            d.update(input_ids=self.input_ids, loss_mask=self.loss_mask, old_logprobs=self.old_logprobs)
        return d


def pad_episodes(episodes: Sequence[Episode], pad_id: int = 0) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` (B, T) long; ``loss_mask``, ``old_logprobs``
    (B, T) float."""
    import torch

    T = max(len(e.input_ids) for e in episodes)
    B = len(episodes)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    lm = torch.zeros((B, T), dtype=torch.float32)
    lp = torch.zeros((B, T), dtype=torch.float32)
    for b, e in enumerate(episodes):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        att[b, :n] = 1
        lm[b, :n] = torch.tensor(e.loss_mask, dtype=torch.float32)
        lp[b, :n] = torch.tensor(e.old_logprobs, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": att, "loss_mask": lm, "old_logprobs": lp}


@dataclass
class EpisodeBatch:
    """Episodes of one collection, in (group, member) order, with learner helpers."""

    episodes: list[Episode]
    group_size: int
    elapsed_s: float = 0.0
    generate_s: float = 0.0

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self):
        return iter(self.episodes)

    @property
    def rewards(self) -> Any:
        """float64 array; NaN marks an infrastructure error (exclude it from advantages)."""
        import numpy as np

        return np.array([np.nan if e.reward is None else e.reward for e in self.episodes], dtype=np.float64)

    @property
    def group_ids(self) -> Any:
        import numpy as np

        return np.array([e.group_id for e in self.episodes], dtype=np.int64)

    def groups(self) -> list[list[Episode]]:
        out: dict[int, list[Episode]] = {}
        for e in self.episodes:
            out.setdefault(e.group_id, []).append(e)
        return list(out.values())

    def to_tensors(self, pad_id: int = 0, device: Any = None) -> dict[str, Any]:
        """Right-padded ``input_ids``, ``attention_mask``, ``loss_mask`` (float), ``old_logprobs``,
        plus ``rewards`` (NaN = infra error) and ``group_ids``."""
        import torch

        out = {
            **pad_episodes(self.episodes, pad_id),
            "rewards": torch.tensor(self.rewards, dtype=torch.float32),
            "group_ids": torch.tensor(self.group_ids),
        }
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def metrics(self) -> dict[str, float]:
        """Mean reward, accuracy, format rate, infra errors, lengths, truncation rate."""
        import numpy as np

        eps = self.episodes
        if not eps:
            return {}
        r = self.rewards
        ok = ~np.isnan(r)
        think = [t for e in eps for t in e.think_tokens if t is not None]
        return {
            "mean_reward": float(r[ok].mean()) if ok.any() else float("nan"),
            "accuracy": float((r[ok] >= 1.0).mean()) if ok.any() else float("nan"),
            "format_rate": float(np.mean([format_ok(e) for e in eps])),
            "infra_errors": int((~ok).sum()),
            "mean_completion_len": float(np.mean([e.completion_len for e in eps])),
            "mean_prompt_len": float(np.mean([e.prompt_len for e in eps])),
            "mean_think_tokens": float(np.mean(think)) if think else float("nan"),
            "truncation_rate": float(np.mean([e.finish_reason in ("length", "think_budget", "context") for e in eps])),
            "mean_turns": float(np.mean([e.num_turns for e in eps])),
            "episodes": len(eps),
            "elapsed_s": self.elapsed_s,
            "generate_s": self.generate_s,
            "sampled_tokens_per_s": sum(e.completion_len for e in eps) / self.generate_s if self.generate_s else 0.0,
        }


def format_ok(e: Episode) -> bool:
    """Whether the last completion has the ``<think>…</think>`` + answer structure."""
    from thinkgym.verifiers.format import FormatConfig, check_format

    return check_format(e.text, FormatConfig(think_in_prompt=e.think_in_prompt)).score == 1.0


# -- collection -------------------------------------------------------------------------------


class _Live:
    """Mutable state of an episode in flight."""

    def __init__(self, ep: Episode, env: Any, prompt_ids: list[int], seed: int | None) -> None:
        self.ep = ep
        self.env = env
        self.next_prompt = prompt_ids
        self.seed = seed
        self.last: Completion | None = None


def _make_env(env_or_id: Any, env_kwargs: dict[str, Any]) -> tuple[Any, str]:
    if isinstance(env_or_id, str):
        import gymnasium

        from thinkgym.envs import register_envs

        register_envs()
        return gymnasium.make(env_or_id, **env_kwargs).unwrapped, env_or_id
    if callable(env_or_id) and not hasattr(env_or_id, "step"):
        env = env_or_id()
        return env, getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    raise TypeError(
        "envs must be env ids (str) or zero-argument env factories (one env instance per episode is "
        f"needed, so an env object can't be shared), got {type(env_or_id).__name__}"
    )


def _assistant_suffix(tokenizer: Any, template_kwargs: dict[str, Any]) -> str:
    """What the chat template writes after an assistant message's content (e.g. ``<|im_end|>\\n``)."""
    sentinel = "\u2063SENTINEL\u2063"
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, **template_kwargs)
    return text[text.rindex(sentinel) + len(sentinel) :]


def _bridge_ids(
    tokenizer: Any, before: list[dict[str, str]], after: list[dict[str, str]], last: Completion,
    suffix: str, template_kwargs: dict[str, Any],
) -> list[int]:
    """Tokens between the last completion and the next assistant turn (all masked out)."""
    new_msgs, hidden, mark = hide_special_strings(tokenizer, after[len(before) :])
    after = after[: len(before)] + new_msgs
    prev = tokenizer.apply_chat_template(before, tokenize=False, **template_kwargs)
    new = tokenizer.apply_chat_template(after, tokenize=False, add_generation_prompt=True, **template_kwargs)
    if new.startswith(prev):
        delta = new[len(prev) :]
    else:
        # Templates that rewrite history (e.g. drop earlier reasoning) are not prefix-stable;
        # the model still saw its own tokens, so only the new messages are rendered.
        delta = tokenizer.apply_chat_template(new_msgs, tokenize=False, add_generation_prompt=True, **template_kwargs)
    tail = suffix
    eos = tokenizer.eos_token
    if last.token_ids and eos and last.token_ids[-1] == tokenizer.eos_token_id and tail.startswith(eos):
        tail = tail[len(eos) :]  # the model already sampled the end-of-turn token
    return encode_hidden(tokenizer, tail + delta, hidden, mark)


def collect_rollouts(
    envs_or_ids: str | Sequence[Any],
    sampler: Sampler,
    *,
    indices: Sequence[int],
    group_size: int,
    cfg: SamplingConfig,
    max_turns: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    grade_workers: int = 8,
    env_kwargs: dict[str, Any] | None = None,
    reward_reduce: str = "last",
    regroup_s: float = 0.5,
    max_context: int | None = None,
) -> EpisodeBatch:
    """Run ``group_size`` episodes for each task item in ``indices``.

    ``envs_or_ids`` is one env id (or zero-arg env factory) for every item, or one per item.
    ``cfg.n`` is ignored (``group_size`` is the group); ``cfg.max_tokens`` is per turn.
    ``max_turns`` caps turns below the env's own limit. ``reward_reduce``: the episode reward is
    the ``last`` turn's reward, or the ``max`` / ``sum`` over turns (infra error if any is None);
    with a partial-credit grader ``sum`` pays for deliberately wrong tries (0.3 + 0.3 + 1.0 beats
    a right first answer), so it suits graders that score 0 until the answer is right.
    ``max_context`` (default: the sampler's ``max_model_len``) ends an episode whose next prompt
    would not fit (finish_reason ``context``).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if reward_reduce not in ("last", "max", "sum"):
        raise ValueError(f"reward_reduce must be 'last', 'max' or 'sum', got {reward_reduce!r}")
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if max_context is not None and max_context < 2:
        raise ValueError(f"max_context must be >= 2 or None, got {max_context}")
    indices = [int(i) for i in indices]
    if isinstance(envs_or_ids, (str, bytes)) or callable(envs_or_ids):
        envs_or_ids = [envs_or_ids] * len(indices)
    envs_or_ids = list(envs_or_ids)
    if len(envs_or_ids) != len(indices):
        raise ValueError(f"got {len(envs_or_ids)} envs for {len(indices)} indices (give one, or one per index)")
    tok = sampler.tokenizer
    tkw = dict(chat_template_kwargs or {})
    suffix = _assistant_suffix(tok, tkw)
    max_context = max_context or getattr(sampler, "max_model_len", None)
    cfg1 = replace(cfg, n=1)
    t_start = time.perf_counter()

    live: list[_Live] = []
    rendered: dict[str, list[int]] = {}  # a group's members share their prompt: template it once
    for g, (spec, idx) in enumerate(zip(envs_or_ids, indices)):
        for m in range(group_size):
            env, env_id = _make_env(spec, dict(env_kwargs or {}))
            seed = None if cfg.seed is None else mix_seed(cfg.seed, g, m)
            _obs, info = env.reset(seed=seed, options={"index": idx})
            messages = info.get("messages") or [{"role": "user", "content": _obs}]
            key = repr(messages)
            if key not in rendered:
                rendered[key] = chat_prompt_ids(tok, messages, **tkw)
            prompt = rendered[key]  # never mutated: the episode copies it, a next turn replaces it
            ep = Episode(
                group_id=g, member=m, index=idx, env_id=env_id, input_ids=list(prompt),
                loss_mask=[0] * len(prompt), old_logprobs=[0.0] * len(prompt), prompt_len=len(prompt),
                messages=messages, think_in_prompt=_opens_think(tok, prompt),
            )
            live.append(_Live(ep, env, prompt, seed))

    def step(lv: _Live, text: str) -> tuple[Any, ...]:
        return lv.env.step(assistant_turn(text, _opens_think(tok, lv.next_prompt)))

    generate_s = 0.0
    takes_seeds = _takes_seeds(sampler)
    batches = 0
    ready = list(live)
    pending: dict[Future, _Live] = {}
    with ThreadPoolExecutor(max_workers=max(1, grade_workers), thread_name_prefix="thinkgym-grade") as pool:
        while ready or pending:
            if ready:
                batch = sorted(ready, key=lambda x: (x.ep.group_id, x.ep.member))
                ready = []
                t0 = time.perf_counter()
                if takes_seeds:
                    outs = sampler.generate([lv.next_prompt for lv in batch], cfg1, seeds=[_turn_seed(lv) for lv in batch])
                else:
                    # A sampler without per-prompt seeds seeds by batch position: give each batch its
                    # own base seed, or every turn would replay the noise of the first.
                    bcfg = cfg1 if cfg.seed is None else replace(cfg1, seed=mix_seed(cfg.seed, batches))
                    outs = sampler.generate([lv.next_prompt for lv in batch], bcfg)
                batches += 1
                generate_s += time.perf_counter() - t0
                for lv, group in zip(batch, outs):
                    c = group[0]
                    if cfg.logprobs and c.num_sampled and c.logprobs is None:
                        # Zeros in their place would make every importance weight exp(learner logprob).
                        raise RuntimeError(f"the {getattr(sampler, 'backend', type(sampler).__name__)} sampler returned "
                                           "no logprobs although the sampling config asks for them")
                    _append_completion(lv.ep, c)
                    lv.last = c
                    pending[pool.submit(step, lv, c.text)] = lv
            if not pending:
                continue
            # Wait for grades: everything that is done within `regroup_s` joins the next batch.
            done, _ = wait(list(pending), timeout=None if not ready else 0, return_when=FIRST_COMPLETED)
            deadline = time.perf_counter() + regroup_s
            while True:
                for f in done:
                    lv = pending.pop(f)
                    if _after_step(lv, f, tok, suffix, tkw, max_turns, max_context, reward_reduce):
                        ready.append(lv)
                left = deadline - time.perf_counter()
                if not pending or left <= 0:
                    break
                done, _ = wait(list(pending), timeout=left, return_when=FIRST_COMPLETED)
                if not done:
                    break
    for lv in live:
        lv.env.close()
    eps = [lv.ep for lv in live]
    return EpisodeBatch(eps, group_size, elapsed_s=time.perf_counter() - t_start, generate_s=generate_s)


def _opens_think(tok: Any, prompt: Sequence[int]) -> bool:
    """Does the rendered prompt end by opening a think block?"""
    return tok.decode(list(prompt[-4:]), skip_special_tokens=False).rstrip().endswith(THINK_OPEN)


def _takes_seeds(sampler: Any) -> bool:
    import inspect

    try:
        return "seeds" in inspect.signature(sampler.generate).parameters
    except (TypeError, ValueError):
        return False


def _turn_seed(lv: _Live) -> int | None:
    return None if lv.seed is None else mix_seed(lv.seed, lv.ep.num_turns)


def _append_completion(ep: Episode, c: Completion) -> None:
    ep.input_ids += c.token_ids
    ep.loss_mask += [1 if s else 0 for s in c.sampled_mask]
    lps = c.logprobs or [0.0] * len(c.token_ids)
    ep.old_logprobs += [lp if s else 0.0 for lp, s in zip(lps, c.sampled_mask)]
    ep.completion_len += c.num_sampled
    ep.turn_lens.append(c.num_sampled)
    ep.num_turns += 1
    ep.texts.append(c.text)
    ep.text = c.text
    ep.finish_reasons.append(c.finish_reason)
    ep.finish_reason = c.finish_reason
    ep.think_tokens.append(c.think_tokens)


def _after_step(
    lv: _Live, fut: Future, tok: Any, suffix: str, tkw: dict[str, Any],
    max_turns: int | None, max_context: int | None, reward_reduce: str,
) -> bool:
    """Record a finished env step; return True if the episode needs another turn."""
    ep = lv.ep
    try:
        _obs, reward, terminated, truncated, info = fut.result()
        grade = info.get("grade") or {}
        score = grade.get("score", reward)
    except Exception as e:  # noqa: BLE001 - an env crash is an infra error for this episode only
        log.error("env %s step failed on item %d: %s: %s", ep.env_id, ep.index, type(e).__name__, e)
        grade, score, terminated, truncated, info = {"score": None, "reason": f"env error: {e}"}, None, True, False, {}
    ep.grades.append(grade)
    ep.turn_rewards.append(None if score is None else float(score))
    ep.reward = _reduce(ep.turn_rewards, reward_reduce)
    before = ep.messages
    ep.messages = info.get("messages", ep.messages)
    ep.terminated, ep.truncated = bool(terminated), bool(truncated)
    if terminated or truncated:
        return False
    if max_turns is not None and ep.num_turns >= max_turns:
        ep.truncated = True
        return False
    assert lv.last is not None
    bridge = _bridge_ids(tok, before + [{"role": "assistant", "content": lv.last.text}], ep.messages, lv.last, suffix, tkw)
    nxt = ep.input_ids + bridge
    if max_context is not None and len(nxt) + 1 >= max_context:
        ep.truncated = True
        ep.finish_reason = "context"
        return False
    ep.input_ids = nxt
    ep.loss_mask += [0] * len(bridge)
    ep.old_logprobs += [0.0] * len(bridge)
    lv.next_prompt = nxt
    return True


def _reduce(rs: list[float | None], how: str) -> float | None:
    if how == "last":
        return rs[-1]
    if any(r is None for r in rs):
        return None
    vals = [float(r) for r in rs if r is not None]
    return max(vals) if how == "max" else sum(vals)
