"""Shared-prefix forward: the same logprobs, entropies and gradients as the plain forward."""

from __future__ import annotations

from itertools import groupby
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from thinkgym.grpo.forward import by_group_length, collate, policy_forward, prefix_lengths, take  # noqa: E402


def batch(groups: list[tuple[list[int], list[list[int]]]], pad: int = 0) -> dict:
    """The learner's collated rows from (prompt, [completions]) groups; loss on completion tokens."""
    rows = [(p, c, g) for g, (p, cs) in enumerate(groups) for c in cs]
    eps = [SimpleNamespace(input_ids=p + c, loss_mask=[0] * len(p) + [1] * len(c), old_logprobs=[0.0] * (len(p) + len(c)))
           for p, c, _ in rows]
    return {**collate(eps, pad, "cpu"), "gids": torch.tensor([g for *_, g in rows])}


def test_prefix_lengths_stop_before_the_first_scored_token():
    b = batch([([5, 6, 7, 8], [[9, 10], [11]]),       # prompt 4: cache 4 tokens, suffix from the last
               ([5, 6, 7], [[9, 9], [9, 9]]),         # identical completions: still capped at the prompt
               ([1, 2], [[3]])])                      # a group of one
    assert prefix_lengths(b["input_ids"], b["attention_mask"], b["mask"], b["gids"]).tolist() == [3, 2, 1]
    # a row whose first scored token comes earlier caps its whole group
    m = b["mask"].clone()
    m[1, 1] = 1.0
    assert prefix_lengths(b["input_ids"], b["attention_mask"], m, b["gids"]).tolist()[0] == 1
    # rows of a group that differ early share only their common prefix
    b2 = batch([([5, 6, 7, 8], [[9]])])
    b2["input_ids"] = torch.cat([b2["input_ids"], torch.tensor([[5, 6, 1, 8, 9]])])
    b2["attention_mask"] = torch.cat([b2["attention_mask"], torch.ones(1, 5, dtype=torch.long)])
    b2["mask"] = torch.cat([b2["mask"], b2["mask"]])
    b2["gids"] = torch.tensor([0, 0])
    assert prefix_lengths(b2["input_ids"], b2["attention_mask"], b2["mask"], b2["gids"]).tolist() == [2]


def test_micro_batches_ordered_by_group_length_keep_groups_whole_and_pad_less():
    g = torch.Generator().manual_seed(0)
    G, size = 12, 4
    gids = torch.arange(G).repeat_interleave(size)[torch.randperm(G * size, generator=g)]  # rows of a group scattered
    lengths = torch.randint(10, 60, (G * size,), generator=g)
    idx = torch.randperm(G * size, generator=g)[:40]  # a minibatch: a subset, in any order
    out = by_group_length(idx, gids, lengths)
    assert sorted(out.tolist()) == sorted(idx.tolist())  # a permutation of the minibatch
    runs = [int(x) for x, _ in groupby(gids[out].tolist())]
    assert len(runs) == len(set(runs))  # every group's rows are contiguous
    longest = [int(lengths[gids == r].max()) for r in runs]
    assert longest == sorted(longest)  # groups in order of their longest row

    def padded(order: torch.Tensor, micro: int) -> int:
        return sum(int(lengths[c].max()) * len(c) for c in order.split(micro))

    plain = torch.cat([idx[gids[idx] == r] for r in gids[idx].unique(sorted=False).tolist()])  # grouped, unsorted
    assert padded(out, 8) < padded(plain, 8)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_matches_the_plain_forward(tiny_model_dir, temperature):
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    r = lambda k: torch.randint(3, 200, (k,), generator=g).tolist()  # noqa: E731
    groups = [(r(12), [r(5), r(9), r(1), r(7)]), (r(20), [r(3), r(3)]), (r(7), [r(11)])]
    dup = groups[1][1][0]
    groups[1][1][1] = list(dup)  # identical completions in one group
    full = batch(groups)
    # Rows in the learner's order: groups shuffled whole, micro-batch smaller than the batch.
    idx = torch.tensor([4, 5, 6, 0, 1, 2])
    b, t = take(full, idx)
    plain = {k: v for k, v in b.items() if k != "gids"}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()

    def run(x):
        model.zero_grad()
        lp, ent = policy_forward(model, x, temperature, entropy=True)
        ((lp + 0.1 * ent) * x["mask"]).sum().backward()
        return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]

    lp0, ent0, g0 = run(plain)
    lp1, ent1, g1 = run(b)
    m = b["mask"] > 0
    assert m.sum() > 20 and lp1.shape == lp0.shape == (6, t)
    torch.testing.assert_close(lp1[m], lp0[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent1[m], ent0[m], atol=1e-4, rtol=1e-4)
    assert (lp1[~m] == 0).all()  # nothing outside the scored suffix
    for a, c in zip(g0, g1):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-3)


def _rows_with_far_padding() -> dict:
    """Group 0 caches a 13-token prompt and keeps short suffixes; group 1 shares nothing and has a
    14-token suffix, so the suffix forward pads group 0's rows 14 slots past their prefix."""
    p = list(range(10, 24))
    return batch([(p, [[40, 41], [42]]), ([5], [[60 + i for i in range(13)], [61, 62]])])


def _assert_shared_equals_plain(model, b: dict) -> None:
    plain = {k: v for k, v in b.items() if k != "gids"}
    with torch.no_grad():
        lp0, _ = policy_forward(model, plain, 1.0)
        lp1, _ = policy_forward(model, b, 1.0)
    m = b["mask"] > 0
    torch.testing.assert_close(lp1[m], lp0[m], atol=1e-5, rtol=1e-5)


def test_shared_prefix_keeps_padding_positions_inside_the_sequence():
    """Learned position embeddings sized to the batch: suffix padding must not index past T - 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    b = _rows_with_far_padding()
    T = b["input_ids"].shape[1]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=T,
                                       bos_token_id=1, eos_token_id=1)).eval()
    assert prefix_lengths(b["input_ids"], b["attention_mask"], b["mask"], b["gids"]).tolist() == [13, 0]
    _assert_shared_equals_plain(model, b)


def _dynamic_rope_model(max_positions: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=max_positions,
                      rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})
    return Qwen2ForCausalLM(cfg).eval()


def test_shared_prefix_matches_plain_with_dynamic_rope():
    # Within the model's context the frequencies are fixed, as long as no position id passes it.
    b = _rows_with_far_padding()
    _assert_shared_equals_plain(_dynamic_rope_model(b["input_ids"].shape[1]), b)
    # Beyond it they follow each forward's largest position: the plain forward is used instead.
    _assert_shared_equals_plain(_dynamic_rope_model(b["input_ids"].shape[1] - 4), b)


def test_rope_length_limit():
    from transformers import Qwen2Config

    from thinkgym.grpo.forward import rope_length_limit

    def model(**kw):
        return SimpleNamespace(config=Qwen2Config(max_position_embeddings=64, **kw))

    assert rope_length_limit(model()) is None
    assert rope_length_limit(model(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                                    "original_max_position_embeddings": 16})) is None
    assert rope_length_limit(model(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})) == 64
    long = {"rope_type": "longrope", "rope_theta": 1e4, "original_max_position_embeddings": 16,
            "short_factor": [1.0] * 32, "long_factor": [2.0] * 32}
    assert rope_length_limit(model(rope_parameters=long)) == 16
    assert rope_length_limit(SimpleNamespace(module=model(rope_parameters=long))) == 16  # a DeepSpeed engine
    assert rope_length_limit(object()) is None


def test_identical_rows_run_once_with_the_same_logprobs_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from thinkgym.grpo.forward import distinct_rows

    g = torch.Generator().manual_seed(1)
    r = lambda k: torch.randint(3, 200, (k,), generator=g).tolist()  # noqa: E731
    p, c = r(9), r(6)
    b = batch([(p, [c, r(4), list(c), list(c)]), (r(5), [r(3), r(3)])])
    first, inverse = distinct_rows(b)
    assert first.tolist() == [0, 1, 4, 5] and inverse[[0, 2, 3]].unique().numel() == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    rows_seen = []
    model.register_forward_pre_hook(lambda _m, args, kw: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    w = torch.arange(1.0, 7.0)[:, None]  # each copy carries its own weight in the loss

    def run(fwd):
        model.zero_grad()
        rows_seen.clear()
        lp, ent = fwd(b)
        ((lp + 0.1 * ent) * b["mask"] * w).sum().backward()
        return lp.detach(), ent.detach(), [q.grad.clone() for q in model.parameters()], sum(rows_seen)

    lp0, ent0, g0, n0 = run(lambda x: policy_forward(model, x, 1.0, entropy=True, merge_identical=False))
    lp1, ent1, g1, n1 = run(lambda x: policy_forward(model, x, 1.0, entropy=True))
    assert n1 < n0  # the copies did not run
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    for a, q in zip(g0, g1):
        torch.testing.assert_close(q, a, atol=1e-5, rtol=1e-3)


def test_rows_with_the_same_tokens_but_other_scored_positions_stay_apart():
    from thinkgym.grpo.forward import distinct_rows

    b = batch([([5, 6, 7], [[8, 9], [8, 9]])])
    assert distinct_rows(b) is not None
    b["mask"][1, 2] = 0.0  # the copy scores one token fewer
    assert distinct_rows(b) is None
    b = batch([([5, 6, 7], [[8, 9], [8, 9, 0]])])  # a pad-id token inside the second row
    assert distinct_rows(b) is None
    b["mask"][1, -1] = 0.0  # ... even where it is not scored: the model still attends to it
    assert distinct_rows(b) is None
