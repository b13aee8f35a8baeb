"""From collated episodes to token logprobs: batching, the policy and value forwards, and the
shared-prefix forward.

**Shared prefix.** The ``G`` completions of a group share their prompt token for token, and in a
short-answer task the prompt is half of every sequence. The learner runs the group's common
prefix once, copies its key/value cache to the group's rows, and runs only each row's own suffix
against it. Logprobs and gradients equal the plain forward's (float rounding aside: a test checks
both); the tokens the model sees drop from ``sum(len)`` to ``sum(prefix) + sum(len - prefix)``.
The prefix ends before the first token the loss scores, so every scored position lies in the
suffix. Multi-turn episodes share their first prompt.

**Identical rows.** A sharp policy samples the same completion more than once (about 30% of the
demo's rows at the start of GRPO). Such rows run once and their outputs are copied; each copy
keeps its own place in the loss, and the copy's backward adds their gradients up, so the update
is the plain one (float rounding aside). Dropout, if a model trains with it, then draws one mask
per distinct row: the same expected gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor


def first_rows(gids: Tensor, G: int) -> Tensor:
    """Index of each group's first row. gids: (n,) in 0..G-1 -> (G,)"""
    import torch

    n = len(gids)
    return torch.full((G,), n, dtype=torch.long, device=gids.device).scatter_reduce(
        0, gids, torch.arange(n, device=gids.device), "amin")


def by_group_length(idx: Tensor, gids: Tensor, lengths: Tensor) -> Tensor:
    """``idx`` reordered so whole groups run in order of their longest row. (n,) -> (n,)

    A micro-batch pads every row to its longest one; cutting micro-batches from this order puts
    groups of similar length together (about 10% fewer padded tokens on countdown), while each
    group stays contiguous for the shared-prefix forward. The gradient is a sum over
    micro-batches, so their order changes nothing else. gids, lengths: (N,) indexed by ``idx``.
    """
    import torch

    g = gids[idx]  # (n,)
    glen = torch.zeros(int(gids.max()) + 1, dtype=lengths.dtype).scatter_reduce(
        0, gids, lengths, "amax")  # (G,) each group's longest row
    key = glen[g] * (int(gids.max()) + 1) + g  # (n,) length first, then the group: groups stay whole
    return idx[torch.argsort(key, stable=True)]


def prefix_lengths(input_ids: Tensor, attention_mask: Tensor, mask: Tensor, gids: Tensor) -> Tensor:
    """Tokens each group's rows can share in the cache. -> (G,)

    input_ids, attention_mask: (n, T); mask: (n, T-1) loss mask on shifted labels (position t
    scores token t+1); gids: (n,) group of each row, 0..G-1.
    """
    import torch

    T = input_ids.shape[1]
    G, dev = int(gids.max()) + 1, input_ids.device
    lead = first_rows(gids, G)[gids]  # (n,) the group's first row
    valid = attention_mask.bool()
    same = (input_ids == input_ids[lead]) & valid & valid[lead]  # (n, T)
    lcp = same.long().cumprod(1).sum(1)  # (n,) common prefix with the group's first row
    length = attention_mask.sum(1)  # (n,)
    scored = mask > 0  # (n, T-1)
    t0 = torch.where(scored.any(1), scored.float().argmax(1), length - 1)  # (n,) first scored position
    # The suffix must start at or before the first scored position and hold at least one token.
    per_row = torch.minimum(torch.minimum(lcp, t0), length - 1).clamp(min=0)  # (n,)
    return torch.full((G,), T, dtype=torch.long, device=dev).scatter_reduce(0, gids, per_row, "amin")  # (G,)


def shared_prefix_logits(model: Any, b: dict[str, Tensor]) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """Suffix logits, their labels, and a map from suffix positions back to the (n, T-1) layout.

    ``b`` holds a collated micro-batch (``input_ids``, ``attention_mask`` (n, T), ``mask``
    (n, T-1)) plus ``gids`` (n,). Returns logits (n, S-1, V), labels (n, S-1) and ``to_full``,
    which scatters any (n, S-1) per-token tensor to (n, T-1) with zeros outside the suffix.
    """
    import torch

    ids, attn = b["input_ids"], b["attention_mask"]
    n, T = ids.shape
    _, gids = torch.unique(b["gids"], return_inverse=True)  # (n,) groups renumbered 0..G-1
    pre = prefix_lengths(ids, attn, b["mask"], gids)  # (G,)
    G, Lp = len(pre), int(pre.max())
    rpre = pre[gids]  # (n,) cached tokens of each row
    length = attn.sum(1)  # (n,)
    S = int((length - rpre).max())
    dev = ids.device

    cache = None
    pre_mask = torch.zeros(n, 0, dtype=attn.dtype, device=dev)
    if Lp > 0:
        first = first_rows(gids, G)  # (G,)
        pat = (torch.arange(Lp, device=dev)[None] < pre[:, None]).to(attn.dtype)  # (G, Lp)
        cache = model(input_ids=ids[first, :Lp], attention_mask=pat, use_cache=True).past_key_values
        cache.batch_select_indices(gids)  # (G, ...) -> (n, ...): differentiable indexing
        pre_mask = pat[gids]  # (n, Lp)
    src = rpre[:, None] + torch.arange(S, device=dev)[None]  # (n, S) original position of suffix slot j
    in_row = src < length[:, None]  # (n, S)
    sid = ids.gather(1, src.clamp(max=T - 1)) * in_row  # (n, S)
    # Padding slots of a row with a long prefix would sit past T - 1: out of range for learned
    # position embeddings, and a larger max position rescales dynamic / LongRoPE frequencies.
    logits = model(input_ids=sid, attention_mask=torch.cat([pre_mask, in_row.to(attn.dtype)], 1),
                   position_ids=src.clamp(max=T - 1), past_key_values=cache,
                   use_cache=cache is not None).logits[:, :-1]  # (n, S-1, V)
    labels = sid[:, 1:]  # (n, S-1)
    t = src[:, :-1]  # (n, S-1) the shifted position each suffix logit scores
    keep = in_row[:, 1:]  # (n, S-1) the label is a real token

    def to_full(x: Tensor) -> Tensor:  # (n, S-1) -> (n, T-1)
        out = torch.zeros(n, T - 1, dtype=x.dtype, device=x.device)
        return out.scatter_add(1, t.clamp(max=T - 2), x * keep)

    return logits, labels, to_full


def rope_length_limit(model: Any) -> int | None:
    """Longest sequence up to which the model's RoPE frequencies do not depend on the batch.

    Dynamic NTK and LongRoPE rescale every position once the largest position id in a forward
    passes this length; the prefix and suffix forwards see smaller maxima than the plain forward,
    so beyond it they would disagree. None: the frequencies are fixed.
    """
    cfg = getattr(getattr(model, "module", model), "config", None)  # a DeepSpeed engine wraps the model
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    per_layer = [p for p in rp.values() if isinstance(p, dict)] or [rp]  # {layer_type: params} or params
    limits = [min(p.get("original_max_position_embeddings") or cfg.max_position_embeddings, cfg.max_position_embeddings)
              for p in per_layer if "dynamic" in str(p.get("rope_type", "")) or p.get("rope_type") == "longrope"]
    return int(min(limits)) if limits else None


def collate(episodes: list[Any], pad_id: int, device: Any) -> dict[str, Any]:
    """The sampler's right-padded tensors, shifted so position t scores token t+1. (n, T-1)"""
    from thinkgym.sampler.rollout import pad_episodes

    t = pad_episodes(episodes, pad_id)
    ids = t["input_ids"]
    return {"input_ids": ids.to(device), "attention_mask": t["attention_mask"].to(device), "labels": ids[:, 1:].to(device),
            "mask": t["loss_mask"][:, 1:].to(device), "sampler_lp": t["old_logprobs"][:, 1:].to(device)}


def distinct_rows(b: dict[str, Any]) -> tuple[Any, Any] | None:
    """The first of each set of identical rows, and each row's set. -> (U,), (n,); None if all differ.

    Rows are identical when their tokens, attention and scored positions are (a group's samples
    share their prompt, and a sharp policy often samples the same completion twice)."""
    import torch

    attn = b["attention_mask"]
    if len(attn) < 2:
        return None
    parts = [b["input_ids"] * attn, attn]
    if "mask" in b:  # the shared prefix ends before a row's first scored token
        parts.append(torch.cat([b["mask"] != 0, torch.zeros_like(attn[:, :1], dtype=torch.bool)], 1).to(attn.dtype))
    key = torch.cat(parts, 1)  # (n, 2T or 3T)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # (n,) in 0..U-1
    U, n = int(inverse.max()) + 1, len(inverse)
    if U == n:
        return None
    first, order = first_rows(inverse, U).sort()  # (U,) unique numbers sets by key; keep the batch's row order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(U, device=order.device)
    return first, rank[inverse]


def policy_forward(engine: Any, b: dict[str, Any], temperature: float, entropy: bool | str = False,
                   merge_identical: bool = True) -> tuple[Any, Any]:
    """Token logprobs (n, T-1) under ``engine``; entropies too if ``entropy`` (``"metric"``: no grad).

    Identical rows run once (:func:`distinct_rows`) and their outputs are copied, so each copy's
    loss still counts and the gradient is the same: it flows back through the copy as a sum. A
    batch with ``gids`` runs each group's shared prompt once (:func:`shared_prefix_logits`), unless
    it is longer than :func:`rope_length_limit`. ``merge_identical=False`` runs every row."""
    rows = distinct_rows(b) if merge_identical else None
    if rows is not None:
        first, inverse = rows
        lp, ent = _forward({k: v[first] for k, v in b.items()}, engine, temperature, entropy)
        return lp[inverse], None if ent is None else ent[inverse]
    return _forward(b, engine, temperature, entropy)


def _forward(b: dict[str, Any], engine: Any, temperature: float, entropy: bool | str) -> tuple[Any, Any]:
    from thinkgym.grpo import core

    limit = rope_length_limit(engine)
    if "gids" in b and (limit is None or b["input_ids"].shape[1] <= limit):
        logits, labels, to_full = shared_prefix_logits(engine, b)  # (n, S-1, V): suffixes only
    else:
        # No KV cache: nothing reads it, and checkpointed layers would drop it with a warning.
        logits = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        logits, labels = logits[:, :-1], b["labels"]
        to_full = lambda x: x  # noqa: E731
    logits = logits.float() / temperature
    lp = to_full(core.token_logprobs(logits, labels))
    if not entropy:
        return lp, None
    if entropy == "metric":  # no graph through the (n, T, V) entropy when it is only logged
        import torch

        with torch.no_grad():
            return lp, to_full(core.entropy_from_logits(logits.detach()))
    return lp, to_full(core.entropy_from_logits(logits))


def take(full: dict[str, Any], idx: Any) -> tuple[dict[str, Any], int]:
    """Rows ``idx`` of a collated batch, trimmed to their longest sequence. -> (batch, T-1)"""
    n = int(full["attention_mask"][idx].sum(1).max())
    b = {k: v[idx] if v.dim() == 1 else v[idx, : (n if k in ("input_ids", "attention_mask") else n - 1)]
         for k, v in full.items()}
    return b, n - 1


def value_forward(engine: Any, b: dict[str, Any]) -> Any:
    """Critic values at each position, aligned with the shifted labels. (n, T-1)"""
    return engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits[:, :-1, 0].float()
