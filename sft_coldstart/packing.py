"""Packing: several examples in one row, with no attention or position leakage between them.

A packed row carries ``position_ids`` that restart at 0 for each example and no 2-D
``attention_mask``. transformers (``masking_utils.find_packed_sequence_indices``) turns such
position ids into a block-diagonal causal mask for the eager/sdpa/flex paths, and the
flash-attention path turns them into ``cu_seqlens`` (varlen kernels), so each token attends
only to earlier tokens of its own example. ``use_cache=False`` is required: with a KV cache
the detection is skipped. For models without that detection, :func:`block_causal_mask` builds
the equivalent 4-D mask explicitly.

Targets are shifted per example before packing (``targets[t]`` is the label of token
``t+1`` of the same example, -100 at each example's last token), so the loss never asks the
last token of one example to predict the first token of the next.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

IGNORE_INDEX = -100


def shift_targets(labels: Sequence[int]) -> list[int]:
    """Next-token targets within one example: ``labels[1:] + [-100]``."""
    return list(labels[1:]) + [IGNORE_INDEX]


def pack_examples(examples: Sequence[dict[str, list[int]]], pack_length: int, seed: int | None = 0) -> list[list[int]]:
    """Group example indices into bins of at most ``pack_length`` tokens (first-fit decreasing).

    Returns the list of bins (lists of example indices). Bins are shuffled with ``seed`` so that
    length does not correlate with position in an epoch; ``seed=None`` keeps FFD order.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    too_long = [i for i, n in enumerate(lengths) if n > pack_length]
    if too_long:
        raise ValueError(f"example {too_long[0]} has {lengths[too_long[0]]} tokens > pack_length {pack_length}")
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for b, room in enumerate(free):
            if room >= n:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(pack_length - n)
    if seed is not None:
        random.Random(seed).shuffle(bins)
    return bins


def collate_packed(examples: Sequence[dict[str, list[int]]], bins: Sequence[Sequence[int]], pad_id: int,
                   pad_to: int | None = None, one_row: bool = False) -> dict[str, Any]:
    """Build a packed batch: one row per bin, right-padded to the longest row (or ``pad_to``).

    Padding gets its own position run (0, 1, …), so it forms a separate segment that no real
    token attends to; its targets are -100. ``one_row`` concatenates all bins into a single row
    instead: transformers' flash-attention path finds packed examples in the position ids only
    for a batch of one row, and attends across the whole row otherwise.
    """
    import torch

    if one_row:
        bins = [[i for b in bins for i in b]]
    rows = []
    for b in bins:
        ids, tgt, pos = [], [], []
        for i in b:
            e = examples[i]
            ids += e["input_ids"]
            tgt += shift_targets(e["labels"])
            pos += list(range(len(e["input_ids"])))
        rows.append((ids, tgt, pos))
    width = max(pad_to or 0, max(len(r[0]) for r in rows))
    for ids, tgt, pos in rows:
        n = width - len(ids)
        ids += [pad_id] * n
        tgt += [IGNORE_INDEX] * n
        pos += list(range(n))
    return {
        "input_ids": torch.tensor([r[0] for r in rows], dtype=torch.long),
        "targets": torch.tensor([r[1] for r in rows], dtype=torch.long),
        "position_ids": torch.tensor([r[2] for r in rows], dtype=torch.long),
    }


def collate_padded(examples: Sequence[dict[str, list[int]]], indices: Sequence[int], pad_id: int) -> dict[str, Any]:
    """Classic padded batch: one example per row, right-padded, with a 2-D attention mask."""
    import torch

    sel = [examples[i] for i in indices]
    width = max(len(e["input_ids"]) for e in sel)
    ids = [e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in sel]
    tgt = [shift_targets(e["labels"]) + [IGNORE_INDEX] * (width - len(e["labels"])) for e in sel]
    att = [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in sel]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "targets": torch.tensor(tgt, dtype=torch.long),
        "attention_mask": torch.tensor(att, dtype=torch.long),
    }


def block_causal_mask(position_ids: Any, dtype: Any = None) -> Any:
    """Explicit 4-D additive mask ``(batch, 1, L, L)``: causal within each example (a new
    example starts wherever a position id does not follow its predecessor), -inf elsewhere."""
    import torch

    dtype = dtype or torch.float32
    first = position_ids[:, :1] - 1
    seg = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    L = position_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def model_inputs(batch: dict[str, Any], explicit_mask: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``model(**...)`` from a packed or padded batch."""
    kw = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        kw["position_ids"] = batch["position_ids"]
        if explicit_mask:
            kw["attention_mask"] = block_causal_mask(batch["position_ids"])
    else:
        kw["attention_mask"] = batch["attention_mask"]
    return kw


def token_loss(logits: Any, targets: Any, reduction: str = "sum") -> Any:
    """Cross-entropy of (already shifted) targets, -100 ignored; float32 for stability."""
    import torch.nn.functional as F

    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
    )
