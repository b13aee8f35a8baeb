"""Pure loss and advantage math for GRPO / PPO-style RLVR. No model, no I/O, no state.

Shapes: ``N`` completions (``B`` prompts x ``G`` samples, flattened), ``T`` tokens (the learner
batch is right-padded), ``V`` vocabulary. ``mask`` is 1 on tokens the policy sampled (the ones
that get a loss) and 0 on prompt, environment feedback and padding tokens.

Rewards come in as floats with ``NaN`` for a grader infrastructure error (``score=None``): such
completions get advantage 0, count in no group statistic, and are masked out of the loss.

References: PPO (Schulman et al. 2017), GRPO (Shao et al. 2024), RLOO (Ahmadian et al. 2024),
DAPO (Yu et al. 2025: clip-higher, dynamic sampling, token-mean loss, overlong shaping),
Dr. GRPO (Liu et al. 2025: no std normalisation, constant normaliser), KL estimators k1/k2/k3
(Schulman 2020), truncated importance sampling for sampler/learner mismatch (Yao et al. 2025).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "seq_mean", "constant"]
KLEstimator = Literal["k1", "k2", "k3"]


# ---------------------------------------------------------------------------------------------
# Masked reductions
# ---------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1 (``x`` may hold NaN/inf at masked positions)."""
    x = torch.where(mask.bool(), x, torch.zeros_like(x))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1; 0 where nothing is unmasked."""
    m = mask.to(x.dtype)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance of ``x`` over the unmasked positions (scalar)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True,
                  all_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalise ``x`` to zero mean / unit variance over the unmasked positions (PPO advantages).
    (N,T), (N,T) -> (N,T)

    ``all_sum`` sums a tensor over the data-parallel ranks: the mean and variance are then those
    of every rank's unmasked tokens together, as if one process held the whole batch. Whitened per
    rank, each rank's advantages would get their own zero point and scale, and a token's
    advantage would depend on which rank it landed on. Two passes (sum and count, then squared
    deviations from the global mean) rather than one of sums of squares: no cancellation, and
    without ``all_sum`` the arithmetic is exactly the one-process one.
    """
    total = all_sum or (lambda t: t)
    m = mask.to(x.dtype)
    s, n = total(torch.stack([masked_sum(x, m), m.sum()])).unbind()  # () each: sum, token count
    n = n.clamp(min=1.0)
    mean = s / n
    var = total(masked_sum((x - mean) ** 2, m)) / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------


def rewards_tensor(rewards: Sequence[float | None]) -> Tensor:
    """List of rewards with ``None`` for grader errors -> float tensor with NaN for them. (N,)"""
    return torch.tensor([float("nan") if r is None else float(r) for r in rewards], dtype=torch.float32)


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, added to the reward. (N,) -> (N,)

    0 up to ``max_len - buffer_len`` tokens, then linearly down to ``-penalty`` at ``max_len``,
    and ``-penalty`` beyond it.
    """
    if buffer_len <= 0:
        return torch.where(lengths > max_len, -penalty, 0.0).to(torch.float32)
    start = max_len - buffer_len
    lin = (start - lengths.to(torch.float32)) / buffer_len * penalty  # (N,) in [-penalty, 0]
    return torch.clamp(lin, min=-penalty, max=0.0)


def truncation_mask(finish_reasons: Sequence[str | Sequence[str]], truncated: Sequence[str] = ("length",)) -> Tensor:
    """1 for completions that ended normally, 0 for truncated ones (DAPO overlong filtering). (N,)

    An entry is one finish reason, or a multi-turn episode's list of them: a turn cut anywhere
    masks the whole sequence, since its later turns answer feedback on a cut-off reply."""
    def cut(f: str | Sequence[str]) -> bool:
        return f in truncated if isinstance(f, str) else any(t in truncated for t in f)

    return torch.tensor([0.0 if cut(f) else 1.0 for f in finish_reasons], dtype=torch.float32)


def degenerate_groups(rewards: Tensor, group_ids: Tensor, atol: float = 1e-6) -> Tensor:
    """Per-completion flag: its group has < 2 valid rewards or all valid rewards equal. (N,) bool

    Such groups give zero group-relative advantage everywhere; DAPO's dynamic sampling drops them.
    """
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).float()
    n_groups = int(group_ids.max().item()) + 1 if group_ids.numel() else 0
    big, dev = torch.finfo(torch.float32).max, rewards.device
    gmax = torch.full((n_groups,), -big, device=dev).scatter_reduce(0, group_ids, torch.where(valid, r, -big), "amax")
    gmin = torch.full((n_groups,), big, device=dev).scatter_reduce(0, group_ids, torch.where(valid, r, big), "amin")
    cnt = torch.zeros(n_groups, device=dev).index_add(0, group_ids, valid.float())
    degenerate = (cnt < 2) | ((gmax - gmin) <= atol)  # (n_groups,)
    return degenerate[group_ids]


# ---------------------------------------------------------------------------------------------
# Advantage estimators (outcome rewards -> one advantage per completion)
# ---------------------------------------------------------------------------------------------


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-group count, sum and sum of squares of the valid rewards, and the valid mask."""
    valid = ~torch.isnan(rewards)  # (N,)
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).double()
    n_groups = int(group_ids.max().item()) + 1 if group_ids.numel() else 0
    z = torch.zeros(n_groups, dtype=torch.float64, device=rewards.device)
    cnt = z.index_add(0, group_ids, valid.double())
    s1 = z.index_add(0, group_ids, r)
    s2 = z.index_add(0, group_ids, r * r)
    return cnt, s1, s2, valid


def group_advantages(
    rewards: Tensor, group_ids: Tensor, *, std_normalize: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO: ``(r - mean_group) / (std_group + eps)``; Dr. GRPO: ``std_normalize=False``. (N,) -> (N,)

    ``std`` is the unbiased sample std (as in the GRPO paper's reference code and TRL).
    NaN rewards are excluded from the group statistics and get advantage 0.
    """
    cnt, s1, s2, valid = _group_stats(rewards, group_ids)
    mean = s1 / cnt.clamp(min=1)  # (n_groups,)
    adv = rewards.double() - mean[group_ids]  # (N,)
    if std_normalize:
        var = (s2 - cnt * mean * mean) / (cnt - 1).clamp(min=1)
        std = var.clamp(min=0).sqrt()
        adv = adv / (std[group_ids] + eps)
    return torch.where(valid, adv, torch.zeros_like(adv)).to(torch.float32)


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: ``r_i - mean(r_j, j != i)`` within the group; 0 for singletons and NaN rewards. (N,)"""
    cnt, s1, _, valid = _group_stats(rewards, group_ids)
    c = cnt[group_ids]  # (N,)
    r = torch.where(valid, rewards.double(), torch.zeros_like(rewards, dtype=torch.float64))
    loo_mean = (s1[group_ids] - r) / (c - 1).clamp(min=1)
    adv = torch.where(valid & (c > 1), r - loo_mean, torch.zeros_like(r))
    return adv.to(torch.float32)


def token_level_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Place each completion's outcome reward on its last trainable token. (N,), (N,T) -> (N,T)"""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), idx, torch.full_like(idx, -1)).amax(dim=1)  # (N,)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    has = last >= 0
    scores = scores.to(mask.device)
    s = torch.where(torch.isnan(scores), torch.zeros_like(scores), scores).to(torch.float32)
    out[has.nonzero(as_tuple=True)[0], last[has]] = s[has]
    return out


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the trainable tokens. (N,T) x3 -> advantages, returns (N,T)

    Positions with ``mask == 0`` (padding, environment feedback between turns) are skipped: the
    recursion links each trainable token to the next trainable one, so multi-turn episodes with
    masked feedback in between are handled like one contiguous trajectory.
    """
    N, T = token_rewards.shape
    m = mask.to(torch.float32)
    adv = torch.zeros(N, T, dtype=torch.float32, device=values.device)
    next_value = torch.zeros(N, dtype=torch.float32, device=values.device)
    last_gae = torch.zeros(N, dtype=torch.float32, device=values.device)
    for t in reversed(range(T)):
        mt = m[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        g = delta + gamma * lam * last_gae
        last_gae = mt * g + (1 - mt) * last_gae
        next_value = mt * values[:, t] + (1 - mt) * next_value
        adv[:, t] = mt * g
    returns = (adv + values) * m
    return adv, returns


# ---------------------------------------------------------------------------------------------
# Log-probabilities, entropy, KL
# ---------------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """``log p(labels)`` under ``logits / temperature``, in float32. (N,T,V), (N,T) -> (N,T)"""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (N,T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position. (N,T,V) -> (N,T)"""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(policy || ref) from samples of the policy. (N,T) -> (N,T)

    k1 = log(p/q) (unbiased, high variance, can be negative); k2 = log(p/q)^2 / 2 (its gradient
    is the gradient of the reverse KL); k3 = q/p - 1 - log(q/p) (unbiased, always >= 0; GRPO).
    """
    log_ratio = logprobs.float() - ref_logprobs.float()  # log p/q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # Clamp so one very unlikely token cannot make exp() overflow to inf.
        lr = torch.clamp(-log_ratio, min=-20.0, max=20.0)
        return torch.exp(lr) - 1.0 - lr
    raise ValueError(f"unknown KL estimator {estimator!r} (use k1, k2 or k3)")


def kl_penalized_rewards(token_rewards: Tensor, kl: Tensor, beta: float, mask: Tensor) -> Tensor:
    """KL in the reward (classic RLHF PPO): ``r_t - beta * kl_t`` on trainable tokens. (N,T) -> (N,T)"""
    return (token_rewards - beta * kl.detach()) * mask.to(token_rewards.dtype)


# ---------------------------------------------------------------------------------------------
# Policy / value losses and aggregation
# ---------------------------------------------------------------------------------------------


def truncated_is_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, cap: float = 2.0) -> Tensor:
    """Truncated importance weight ``min(pi_old / pi_sampler, cap)`` per token, no gradient. (N,T)

    The sampler (vLLM, other kernels, maybe lower precision) and the learner disagree slightly on
    the same weights; this corrects the policy gradient for that off-policy gap.
    """
    w = torch.exp((old_logprobs.float() - sampler_logprobs.float()).clamp(max=20.0))
    return torch.clamp(w, max=cap).detach()


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped objective as a per-token loss (to minimise), and per-token "was clipped". (N,T)

    ``ratio`` is clipped to ``[1 - clip_low, 1 + clip_high]``; DAPO's clip-higher uses
    ``clip_high > clip_low`` so low-probability tokens can grow. ``dual_clip`` (> 1) bounds the
    loss for negative advantages (Ye et al. 2020). ``advantages`` broadcasts: (N,1) or (N,T).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)  # (N,T)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    clipped = (loss2 > loss1).float()
    if dual_clip is not None:
        loss3 = -advantages * dual_clip
        loss = torch.where(advantages < 0, torch.minimum(loss, loss3), loss)
    return loss, clipped


def sequence_level_old(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """The "old" logprobs that turn :func:`clipped_surrogate` into GSPO's sequence-level objective
    (Zheng et al. 2025; TRL's ``importance_sampling_level="sequence"``). (N,T) -> (N,T)

    Every token's log ratio becomes its sequence's length-normalised one, ``mean_t(log pi - log
    pi_old)``, so clipping keeps or drops whole sequences; the gradient through each token is its
    own ``grad log pi`` scaled by the sequence ratio (GSPO-token, which equals GSPO when a
    sequence's tokens share one advantage and the loss averages within sequences: ``seq_mean``).
    """
    m = mask.to(logprobs.dtype)
    lp = logprobs.detach()
    seq = masked_sum(lp - old_logprobs, m, dim=1) / m.sum(1).clamp(min=1.0)  # (N,)
    return lp - seq[:, None]  # logprobs - this = logprobs - sg(logprobs) + seq


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = 0.2
) -> Tensor:
    """PPO value loss ``0.5 * max((v - R)^2, (clip(v) - R)^2)`` per token. (N,T) -> (N,T)"""
    loss = (values - returns) ** 2
    if clip is not None:
        v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (v_clip - returns) ** 2)
    return 0.5 * loss


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: Aggregation = "token_mean",
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    constant: float | None = None,
) -> Tensor:
    """Reduce a per-token loss (N,T) to a scalar.

    - ``token_mean`` (DAPO): sum over all tokens / number of trainable tokens. Long answers get
      weight proportional to their length.
    - ``seq_mean`` (original GRPO): mean over tokens within each sequence, then over sequences.
    - ``constant`` (Dr. GRPO): sum over all tokens / (num_seqs * constant), where ``constant`` is
      usually the generation budget: no length bias either way.

    ``num_tokens`` / ``num_seqs`` override the denominators so that micro-batches accumulated into
    one optimiser step normalise over the whole minibatch rather than each micro-batch (and, with
    gradients averaged over data-parallel ranks, ``num_tokens`` is the mean count per rank).
    """
    m = mask.to(loss.dtype)
    if mode == "token_mean":
        denom = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=loss.dtype)
        return masked_sum(loss, m) / denom.clamp(min=1.0)
    n = loss.shape[0] if num_seqs is None else num_seqs
    if mode == "seq_mean":
        per_seq = masked_sum(loss, m, dim=1) / m.sum(1).clamp(min=1.0)  # (N,)
        return per_seq.sum() / max(n, 1)
    if mode == "constant":
        if constant is None or constant <= 0:
            raise ValueError("aggregate(mode='constant') needs a positive `constant` (e.g. max_tokens)")
        return masked_sum(loss, m) / (max(n, 1) * constant)
    raise ValueError(f"unknown aggregation {mode!r} (use token_mean, seq_mean or constant)")


def shift_for_causal_lm(input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Labels and loss mask aligned with logits[:, :-1]: position t predicts token t+1. (N,T-1)"""
    return input_ids[:, 1:], mask[:, 1:]
