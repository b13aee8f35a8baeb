"""Unit tests for thinkgym.grpo.core against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from thinkgym.grpo import core

NAN = float("nan")


def t(*x):
    return torch.tensor(x, dtype=torch.float32)


def test_masked_sum_mean_ignore_masked_nan():
    x = t(1.0, 2.0, NAN, 4.0)
    m = t(1, 1, 0, 0)
    assert core.masked_sum(x, m).item() == 3.0
    assert core.masked_mean(x, m).item() == 1.5
    x2 = torch.tensor([[1.0, 3.0, 5.0], [2.0, 0.0, 0.0]])
    m2 = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert core.masked_mean(x2, m2, dim=1).tolist() == [2.0, 2.0]
    assert core.masked_mean(x2, torch.zeros_like(m2)).item() == 0.0


def test_masked_var_and_whiten():
    x = t(1.0, 3.0, 100.0)
    m = t(1, 1, 0)
    assert core.masked_var(x, m).item() == pytest.approx(1.0)  # population var of {1, 3}
    w = core.masked_whiten(x, m, eps=0.0)
    assert w.tolist() == pytest.approx([-1.0, 1.0, 0.0])


def test_rewards_tensor_maps_none_to_nan():
    r = core.rewards_tensor([1.0, None, 0])
    assert r[0] == 1.0 and math.isnan(r[1]) and r[2] == 0.0


def test_group_advantages_std_and_dr_grpo():
    # group 0: [1, 0, 0, 1] -> mean .5, sample std sqrt(1/3); group 1: [1, 1] -> std 0
    r = t(1, 0, 0, 1, 1, 1)
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = core.group_advantages(r, g, std_normalize=True, eps=0.0)
    s = math.sqrt(1 / 3)
    assert a[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s])
    a = core.group_advantages(r, g, std_normalize=True, eps=1e-6)
    assert a[4:].tolist() == [0.0, 0.0]  # identical rewards: 0/(0+eps)
    d = core.group_advantages(r, g, std_normalize=False)
    assert d.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.0, 0.0])


def test_group_advantages_exclude_none_rewards():
    # the NaN is an infra error: group stats over {1, 0} only, its own advantage 0
    r = t(1, NAN, 0)
    g = torch.tensor([0, 0, 0])
    a = core.group_advantages(r, g, std_normalize=False)
    assert a.tolist() == pytest.approx([0.5, 0.0, -0.5])
    a = core.group_advantages(r, g, std_normalize=True, eps=0.0)
    s = math.sqrt(0.5)  # sample std of {1, 0}
    assert a.tolist() == pytest.approx([0.5 / s, 0.0, -0.5 / s])
    assert not torch.isnan(a).any()


def test_group_ids_need_not_be_sorted():
    r = t(2, 10, 4, 20)
    g = torch.tensor([0, 1, 0, 1])
    assert core.group_advantages(r, g, std_normalize=False).tolist() == pytest.approx([-1, -5, 1, 5])


def test_rloo_advantages():
    # group [1, 0, 0]: baselines 0, .5, .5 ; singleton -> 0 ; NaN -> 0 and not in baseline
    r = t(1, 0, 0, 7, 3, NAN, 1)
    g = torch.tensor([0, 0, 0, 1, 2, 2, 2])
    a = core.rloo_advantages(r, g)
    assert a.tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0, 2.0, 0.0, -2.0])


def test_degenerate_groups():
    r = t(1, 1, 0, 1, 0.5, NAN, 1, NAN)
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # group 0 all equal; group 1 differs; group 2 one valid; group 3 one valid
    assert core.degenerate_groups(r, g).tolist() == [True, True, False, False, True, True, True, True]


def test_overlong_penalty():
    lengths = torch.tensor([10, 12, 14, 16, 20])
    p = core.overlong_penalty(lengths, max_len=16, buffer_len=4, penalty=1.0)
    assert p.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    p = core.overlong_penalty(lengths, max_len=16, buffer_len=0, penalty=0.5)
    assert p.tolist() == pytest.approx([0, 0, 0, 0, -0.5])


def test_truncation_mask():
    assert core.truncation_mask(["stop", "length", "think_budget"]).tolist() == [1.0, 0.0, 1.0]
    assert core.truncation_mask(["length", "think_budget"], truncated=("length", "think_budget")).tolist() == [0, 0]
    # multi-turn episodes: a turn cut anywhere masks the episode, not only a cut last turn
    turns = [["length", "stop"], ["stop", "stop"], ["stop", "length"], []]
    assert core.truncation_mask(turns).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_token_level_rewards_on_last_trainable_token():
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]])
    out = core.token_level_rewards(t(2.0, 3.0, 5.0), mask)
    assert out.tolist() == [[0, 0, 2, 0], [0, 0, 0, 3], [0, 0, 0, 0]]
    out = core.token_level_rewards(t(NAN, 1.0, 0.0), mask)
    assert out[0].tolist() == [0, 0, 0, 0]


def test_gae_hand_computed():
    # one sequence, 3 tokens, reward 1 at the end, gamma .9, lam .5
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.2, 0.4]])
    m = torch.ones(1, 3)
    adv, ret = core.gae(r, v, m, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.4
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4])


def test_gae_skips_masked_positions():
    # masked feedback token in the middle and padding at the end must not change the result
    r = torch.tensor([[0.0, 9.0, 0.0, 1.0, 7.0]])
    v = torch.tensor([[0.5, 3.0, 0.2, 0.4, 8.0]])
    m = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    adv, ret = core.gae(r, v, m, gamma=0.9, lam=0.5)
    ref_adv, _ = core.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]]), torch.ones(1, 3), 0.9, 0.5)
    assert adv[0, [0, 2, 3]].tolist() == pytest.approx(ref_adv[0].tolist())
    assert adv[0, 1].item() == 0.0 and adv[0, 4].item() == 0.0 and ret[0, 4].item() == 0.0


def test_gae_gamma1_lam1_is_return_minus_value():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.3, 0.6, 0.9]])
    adv, ret = core.gae(r, v, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.7, 0.4, 0.1])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_token_logprobs_and_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [1/4, 3/4]
    labels = torch.tensor([[1]])
    assert core.token_logprobs(logits, labels).item() == pytest.approx(math.log(0.75))
    # temperature 2: logits [0, log3/2] -> p1 = sqrt3 / (1 + sqrt3)
    s3 = math.sqrt(3.0)
    assert core.token_logprobs(logits, labels, 2.0).item() == pytest.approx(math.log(s3 / (1 + s3)))


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]]])
    h = core.entropy_from_logits(logits)
    assert h[0, 0].item() == pytest.approx(math.log(4))
    assert h[0, 1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-5)


def test_kl_estimators():
    lp = t(math.log(0.5))
    ref = t(math.log(0.25))  # log p/q = log 2
    assert core.kl_estimate(lp, ref, "k1").item() == pytest.approx(math.log(2))
    assert core.kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert core.kl_estimate(lp, ref, "k3").item() == pytest.approx(0.5 - 1 - math.log(0.5))
    assert core.kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        core.kl_estimate(lp, ref, "k4")  # type: ignore[arg-type]


def test_kl_k3_is_unbiased_estimate_of_true_kl():
    torch.manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True)
    k3 = core.kl_estimate(p.log()[x], q.log()[x], "k3").mean().item()
    k1 = core.kl_estimate(p.log()[x], q.log()[x], "k1").mean().item()
    assert k3 == pytest.approx(true_kl, rel=0.03) and k1 == pytest.approx(true_kl, rel=0.03)


def test_kl_penalized_rewards():
    r = torch.tensor([[0.0, 1.0, 0.0]])
    kl = torch.tensor([[0.5, 0.25, 9.0]])
    m = torch.tensor([[1, 1, 0]])
    assert core.kl_penalized_rewards(r, kl, 0.1, m).tolist() == [[pytest.approx(-0.05), pytest.approx(0.975), 0.0]]


def test_truncated_is_weights():
    old = t(math.log(0.5), math.log(0.9), math.log(0.1))
    samp = t(math.log(0.5), math.log(0.3), math.log(0.2))
    w = core.truncated_is_weights(old, samp, cap=2.0)
    assert w.tolist() == pytest.approx([1.0, 2.0, 0.5])  # 0.9/0.3 = 3 -> capped at 2


def test_clipped_surrogate_asymmetric_clip():
    old = torch.zeros(4)
    # ratios 1.5, 0.5, 1.1, 0.7 ; advantages +1, -1, +1, +1
    lp = torch.log(t(1.5, 0.5, 1.1, 0.7))
    adv = t(1, -1, 1, 1)
    loss, clipped = core.clipped_surrogate(lp, old, adv, clip_low=0.2, clip_high=0.28)
    # +A, r=1.5 -> clip 1.28 -> loss -1.28 (clipped); -A, r=.5 -> max(.5, .8) = .8 (clipped)
    # +A, r=1.1 -> -1.1 ; +A, r=.7 -> min(.7, .8)... loss = max(-.7, -.8) = -.7 (not clipped)
    assert loss.tolist() == pytest.approx([-1.28, 0.8, -1.1, -0.7])
    assert clipped.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_clipped_surrogate_gradient_zero_when_clipped():
    lp = torch.log(t(1.5, 1.1)).requires_grad_()
    loss, _ = core.clipped_surrogate(lp, torch.zeros(2), t(1, 1), 0.2, 0.2)
    loss.sum().backward()
    assert lp.grad.tolist() == pytest.approx([0.0, -1.1])  # d(-A r)/dlogp = -A r


def test_clipped_surrogate_dual_clip():
    lp = torch.log(t(5.0))
    loss, _ = core.clipped_surrogate(lp, torch.zeros(1), t(-1.0), 0.2, 0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)  # would be 5 without dual clip


def test_sequence_level_ratio_gives_gspo_gradient_and_clips_whole_sequences():
    """GSPO: s_i = exp(mean_t(log pi - log pi_old)) over the sequence's own tokens; the loss
    -A_i * s_i (seq_mean) has gradient -A_i * s_i / |y_i| on each of them, padding excluded, and a
    sequence whose s_i is clipped gets none, whatever its single tokens' ratios."""
    g = torch.Generator().manual_seed(0)
    old = torch.randn(3, 5, generator=g) * 0.1 - 1.0
    lp0 = old + torch.randn(3, 5, generator=g) * 0.01
    lp0[2] = old[2] + torch.tensor([0.9, -0.4, 0.9, 0.0, 0.0])  # mean 0.35 -> s = 1.42, clipped; token 2 alone: 0.67
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    lp0[1, 2:] = 50.0  # padding: no effect on anything
    adv = t(1.0, -2.0, 0.5)[:, None]  # (N,1)
    lp = lp0.clone().requires_grad_()
    seq_old = core.sequence_level_old(lp, old, mask)
    pg, clipped = core.clipped_surrogate(lp, seq_old, adv, 0.2, 0.28)
    core.aggregate(pg, mask, "seq_mean").backward()
    n = mask.sum(1)
    s = torch.exp(((lp0 - old) * mask).sum(1) / n)  # (N,)
    want = -adv * (s / n)[:, None] * mask / 3  # d/dlp of mean_i(-A_i s_i)
    want[2] = 0.0  # s_2 > 1.28 with A > 0: clipped as a whole
    assert torch.allclose(lp.grad, want, atol=1e-6), (lp.grad, want)
    assert (clipped[2] * mask[2]).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert not (clipped[:2] * mask[:2]).any()
    # every token reads its sequence's ratio
    r = torch.exp(lp0 - seq_old.detach())
    assert r[0].tolist() == pytest.approx([float(s[0])] * 5) and r[1, :2].tolist() == pytest.approx([float(s[1])] * 2)


def test_clipped_value_loss():
    v, old, ret = t(1.0, 0.0), t(0.0, 0.0), t(0.0, 1.0)
    # tok0: (1-0)^2 = 1 ; clipped v = 0.2 -> 0.04 ; max = 1 -> 0.5
    # tok1: (0-1)^2 = 1 ; clipped v = 0 -> 1 -> 0.5
    assert core.clipped_value_loss(v, old, ret, clip=0.2).tolist() == pytest.approx([0.5, 0.5])
    v = t(0.5)
    # (0.5-1)^2=.25 ; clipped .2 -> .64 -> max .64 -> .32
    assert core.clipped_value_loss(v, t(0.0), t(1.0), clip=0.2).item() == pytest.approx(0.32)
    assert core.clipped_value_loss(v, t(0.0), t(1.0), clip=None).item() == pytest.approx(0.125)


def test_aggregate_modes():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert core.aggregate(loss, mask, "token_mean").item() == pytest.approx(8 / 5)
    assert core.aggregate(loss, mask, "seq_mean").item() == pytest.approx((1 + 4) / 2)
    assert core.aggregate(loss, mask, "constant", constant=8).item() == pytest.approx(8 / (2 * 8))
    # global denominators for minibatch accumulation
    assert core.aggregate(loss, mask, "token_mean", num_tokens=10).item() == pytest.approx(0.8)
    assert core.aggregate(loss, mask, "seq_mean", num_seqs=4).item() == pytest.approx(5 / 4)
    with pytest.raises(ValueError, match="constant"):
        core.aggregate(loss, mask, "constant")
    with pytest.raises(ValueError, match="unknown aggregation"):
        core.aggregate(loss, mask, "sum")  # type: ignore[arg-type]


def test_shift_for_causal_lm():
    ids = torch.tensor([[5, 6, 7, 8]])
    m = torch.tensor([[0, 0, 1, 1]])
    labels, lm = core.shift_for_causal_lm(ids, m)
    assert labels.tolist() == [[6, 7, 8]] and lm.tolist() == [[0, 1, 1]]
