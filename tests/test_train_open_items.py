"""Data parallelism in the trainers: every SFT example trains in every epoch whatever the process
count, PPO's advantages are whitened over every rank's tokens, and the learner's config-check
memos stay small in a long-lived process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import free_port

from thinkgym.grpo import core

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- SFT: epoch coverage


def _sft_cfg(**kw):
    from thinkgym.sft_coldstart.train import SFTConfig

    return SFTConfig(**{"datasets": ["unused.jsonl"], "pack_length": 12, **kw})


def _examples(n):
    # Lengths 2..7: packing into 12-token rows makes bins of one to several examples.
    return [{"input_ids": [1] * (2 + i % 6), "labels": [1] * (2 + i % 6)} for i in range(n)]


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("n,mbs", [(7, 1), (9, 2), (5, 3), (1, 1)])
def test_every_rank_runs_as_many_micro_batches_and_an_epoch_trains_every_example(packing, n, mbs):
    """Each rank's share of an epoch has ceil(M / world) micro-batches (the loop's n_micro: the
    ranks step in lockstep), and together they hold every example; only the padding that fills
    the last round repeats any. Shares rounded down never trained up to world - 1 micro-batches of
    every epoch."""
    from thinkgym.sft_coldstart.train import _epoch_micro_batches

    cfg, ex = _sft_cfg(packing=packing, micro_batch_size=mbs), _examples(n)
    for epoch in (0, 1):
        whole = _epoch_micro_batches(cfg, ex, epoch, 0, 1)
        assert Counter(i for mb in whole for unit in mb for i in unit) == Counter(range(n))  # one process: once each
        for world in (2, 3, 4):
            shares = [_epoch_micro_batches(cfg, ex, epoch, rank, world) for rank in range(world)]
            assert [len(s) for s in shares] == [math.ceil(len(whole) / world)] * world
            ran = [mb for s in shares for mb in s]
            assert ran[: len(whole)] == whole  # the epoch's order, then the padding
            assert {i for mb in ran for unit in mb for i in unit} == set(range(n))
            assert len(ran) - len(whole) < world


def test_a_checkpoint_of_another_micro_batch_layout_does_not_resume():
    """The data cursor counts micro-batches of one layout: a multi-process checkpoint from when
    the tail of each epoch was dropped must not resume on the padded one. One process (and
    shares that divide evenly) kept the layout, and their checkpoints still resume."""
    from thinkgym.sft_coldstart.train import _data_order

    cfg, ex = _sft_cfg(), _examples(5)
    assert _data_order(cfg, ex, 1, 5) == _data_order(cfg, ex, 1, 4)
    assert _data_order(cfg, ex, 2, 4) == _data_order(cfg, ex, 2, 6)
    assert _data_order(cfg, ex, 2, 5) != _data_order(cfg, ex, 2, 4)


# ----------------------------------------------------------------------------- PPO: global whitening


def _shards(seed=0):
    """Two ranks' GAE advantages (N_r, T_r) and masks, of different shapes and scales: whitened
    per rank, each would get its own zero point and scale."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, t, scale, shift in ((3, 5, 1.0, 0.0), (4, 7, 5.0, 3.0)):
        x = torch.randn(n, t, generator=g) * scale + shift  # (N_r, T_r)
        m = (torch.rand(n, t, generator=g) < 0.7).float()  # (N_r, T_r)
        m[0, 0] = 1.0
        x[m == 0] = float("nan")  # masked positions must not leak into the statistics
        out.append((x, m))
    return out


def _concat(shards):
    """The shards as one batch, right-padded to the longest T with masked positions. (sum N_r, T)"""
    t = max(x.shape[1] for x, _ in shards)
    pad = lambda a: torch.nn.functional.pad(a, (0, t - a.shape[1]))  # noqa: E731
    return torch.cat([pad(x) for x, _ in shards]), torch.cat([pad(m) for _, m in shards])


def _lockstep_sums(world):
    """One ``all_sum`` per thread: each call returns the sum of every thread's tensor (a collective)."""
    barrier, slots = threading.Barrier(world), [None] * world

    def make(rank):
        def all_sum(t):
            slots[rank] = t
            barrier.wait()
            total = sum(slots[1:], slots[0])
            barrier.wait()  # nobody overwrites a slot before everyone has read it
            return total

        return all_sum

    return [make(r) for r in range(world)]


def test_whitening_with_all_sum_uses_the_statistics_of_every_ranks_tokens():
    shards = _shards()
    x, m = _concat(shards)
    want = core.masked_whiten(x, m)  # (sum N_r, T): one process holding the whole batch
    sums, got = _lockstep_sums(len(shards)), [None] * len(shards)

    def run(r):
        got[r] = core.masked_whiten(*shards[r], all_sum=sums[r])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(shards))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    merged = _concat([(g, sm) for g, (_, sm) in zip(got, shards)])[0]
    torch.testing.assert_close(merged, want, rtol=1e-5, atol=1e-6)
    assert core.masked_mean(merged, m).abs() < 1e-5 and core.masked_var(merged, m) == pytest.approx(1.0, rel=1e-4)
    per_rank = _concat([(core.masked_whiten(*s), s[1]) for s in shards])[0]
    assert not torch.allclose(per_rank, want, atol=1e-2)  # the data tells the two apart


def test_whitening_in_one_process_is_unchanged():
    """Without other ranks the result is bit for bit the plain masked mean / variance one."""
    from thinkgym.grpo.engine import all_sum

    x, m = _shards()[1]
    mean, var = core.masked_mean(x, m), core.masked_var(x, m)
    want = torch.where(m.bool(), (x - mean) * torch.rsqrt(var + 1e-8), torch.zeros_like(x))
    assert torch.equal(core.masked_whiten(x, m), want)
    assert torch.equal(core.masked_whiten(x, m, all_sum=all_sum), want)
    assert torch.equal(core.masked_whiten(x, m, shift_mean=False), torch.where(m.bool(), want + mean, 0.0))


_GAE_RANKS = '''
import os, sys
import torch
import torch.distributed as dist
from thinkgym.grpo.train import GRPOConfig, gae_estimator

dist.init_process_group("gloo")
rank = dist.get_rank()
x = torch.load(sys.argv[1])[rank]
adv, returns = gae_estimator(GRPOConfig(advantage="gae"), *x)
torch.save({"adv": adv, "returns": returns}, os.path.join(os.path.dirname(sys.argv[1]), f"rank{rank}.pt"))
dist.destroy_process_group()
'''


def _gae_inputs(seed):
    """(rewards (N,), gids (N,), mask (N,T), values (N,T), kl (N,T)) of one rank."""
    g = torch.Generator().manual_seed(seed)
    n, t = 4, 6 + seed
    mask = torch.ones(n, t)
    mask[:, :2] = 0  # the prompt
    mask[1, 4 + seed:] = 0  # a short completion
    values = torch.randn(n, t, generator=g) * (1 + 3 * seed)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0]) * (1 + seed)
    return rewards, torch.tensor([0, 0, 1, 1]), mask, values, torch.zeros(n, t)


@pytest.mark.slow
def test_gae_advantages_are_whitened_over_both_ranks(tmp_path):
    """torchrun, two gloo ranks: each rank's PPO advantages equal those of one process whitening
    both ranks' batches together (before, each rank whitened its own)."""
    from thinkgym.grpo.train import GRPOConfig, gae_estimator

    cfg = GRPOConfig(advantage="gae")
    inputs = [_gae_inputs(0), _gae_inputs(1)]
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "ranks.py").write_text(_GAE_RANKS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(tmp_path / "ranks.py"), str(tmp_path / "inputs.pt")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1)]

    # One process, both batches: GAE runs per sequence, so right-padding the shorter one changes
    # nothing but the whitening statistics, which now span both.
    t = max(x[2].shape[1] for x in inputs)
    pad = lambda a: torch.nn.functional.pad(a, (0, t - a.shape[-1])) if a.dim() == 2 else a  # noqa: E731
    both = [torch.cat([pad(x[i]) for x in inputs]) for i in range(5)]
    want, want_ret = gae_estimator(cfg, *both)
    torch.testing.assert_close(torch.cat([pad(g["adv"]) for g in got]), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([pad(g["returns"]) for g in got]), want_ret)
    alone = torch.cat([pad(gae_estimator(cfg, *x)[0]) for x in inputs])
    assert not torch.allclose(alone, want, atol=1e-2)  # per-rank whitening gives other advantages


# ----------------------------------------------------------------------------- config-check memos


def test_contamination_memo_keeps_only_the_latest_configs(tmp_path, monkeypatch, capsys):
    """Each config checked adds a memo entry (the CLI and train() check the same one: it reports
    once); a process that checks config after config (a sweep) kept every report for good."""
    from thinkgym.config import load_config
    from thinkgym.grpo import checks
    from thinkgym.grpo.train import GRPOConfig

    for k in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(checks, "_contamination_seen", type(checks._contamination_seen)())
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    kw = {"task_params": {"n_numbers": 2, "max_number": 3, "target": [1, 9]}, "size": 60}
    cfgs = [load_config(GRPOConfig, None, dict(model=str(model), output_dir=str(tmp_path / "o"), sampler_backend="hf",
                                               envs=["thinkgym/Countdown-v0"], env_kwargs=kw, eval_prompts=5 + i,
                                               max_steps=1, prompts_per_step=2, group_size=2, micro_batch_size=4))
            for i in range(20)]
    reports = [checks.check_eval_contamination(c, 60) for c in cfgs]
    assert len(checks._contamination_seen) <= checks.MEMO_SIZE < len(cfgs)
    capsys.readouterr()
    assert checks.check_eval_contamination(cfgs[-1], 60) is reports[-1]  # recent: remembered, not reported again
    assert "held-out contamination" not in capsys.readouterr().out
    assert checks.check_eval_contamination(cfgs[0], 60) == reports[0]  # evicted: checked again
    assert "held-out contamination" in capsys.readouterr().out
    assert len(checks._contamination_seen) <= checks.MEMO_SIZE


def test_resume_memo_is_bounded_least_recently_used_first():
    from thinkgym.grpo import checks

    memo = type(checks._resume_seen)()
    for k in range(3 * checks.MEMO_SIZE):
        checks._remember(memo, k, True)
        if k:
            checks._remember(memo, 0, True)  # used again: stays
    assert len(memo) == checks.MEMO_SIZE and 0 in memo and 3 * checks.MEMO_SIZE - 1 in memo and 1 not in memo
