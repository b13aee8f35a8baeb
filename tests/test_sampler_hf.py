"""The HF transformers sampler: seeding independent of batch, greedy equal to HF generate,
logprobs equal to a teacher-forced forward, stop strings, thinking budget and weight sync."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from thinkgym.sampler import SamplingConfig, make_sampler  # noqa: E402
from thinkgym.sampler.types import chat_prompt_ids  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    return make_sampler("hf", tiny_model_dir, num_threads=1)


@pytest.fixture(scope="module")
def prompts(sampler):
    tok = sampler.tokenizer
    return [
        chat_prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}]),
        chat_prompt_ids(tok, [{"role": "system", "content": "Think first."}, {"role": "user", "content": "Solve 2x + 3 = 11."}]),
    ]


def forward_logprobs(model, prompt, tokens, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    lp = torch.log_softmax(logits / temperature, -1)[len(prompt) - 1 : -1]
    return lp.gather(1, torch.tensor(tokens)[:, None])[:, 0]


def test_seeded_and_batch_independent(sampler, prompts):
    cfg = SamplingConfig(n=3, max_tokens=16, seed=4, temperature=0.8)
    a = sampler.generate(prompts, cfg)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in sampler.generate(prompts, cfg)[0]]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1
    # Each request has its own generator: batch size and left padding don't change tokens.
    solo = sampler.generate(prompts[:1], cfg)
    assert [c.token_ids for c in solo[0]] == [c.token_ids for c in a[0]]
    for p, g in zip(prompts, a):
        for comp in g:
            ref = forward_logprobs(sampler.model, p, comp.token_ids, 0.8)
            assert torch.allclose(ref, torch.tensor(comp.logprobs), atol=1e-4)


def test_greedy_matches_generate_and_stop(sampler, prompts):
    out = sampler.generate(prompts, SamplingConfig(n=1, temperature=0, max_tokens=20))
    for p, g in zip(prompts, out):
        with torch.no_grad():
            ref = sampler.model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=20)[0, len(p):].tolist()
        assert g[0].token_ids == ref[: len(g[0].token_ids)]
    full = out[0][0]
    stop = full.text[6:9]
    cut = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=20, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop" and stop in cut.text and len(cut.token_ids) < len(full.token_ids)


def test_think_budget_force(sampler, prompts):
    tok = sampler.tokenizer
    p = prompts[0] + tok.encode("<think>", add_special_tokens=False)
    g = sampler.generate([p], SamplingConfig(n=2, seed=1, max_tokens=50, think_budget=4, answer_budget=3))[0]
    forced = [c for c in g if c.forced]
    assert forced
    for c in forced:
        assert c.token_ids[4] == tok.convert_tokens_to_ids("</think>") and c.sampled_mask[4] is False
        assert len(c.token_ids) <= 4 + 1 + 3 and c.think_tokens == 4
    t = sampler.generate([p], SamplingConfig(n=2, seed=1, max_tokens=50, think_budget=4, budget_mode="truncate"))[0]
    assert any(c.finish_reason == "think_budget" and len(c.token_ids) == 4 for c in t)


def test_weight_sync(sampler, tiny_model_dir, prompts, tmp_path):
    before = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=16))[0][0]
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in sampler.model.state_dict().items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    from transformers import AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ref_model.load_state_dict(sd)
    ref_model.save_pretrained(tmp_path / "ckpt")
    sampler.update_weights(tmp_path / "ckpt")
    after = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=16))[0][0]
    assert after.token_ids != before.token_ids
    with torch.no_grad():
        ref = ref_model.generate(torch.tensor([prompts[0]]), do_sample=False, max_new_tokens=16)[0, len(prompts[0]):].tolist()
    assert after.token_ids == ref[: len(after.token_ids)]
    sampler.update_weights(tiny_model_dir)
    assert sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=16))[0][0].token_ids == before.token_ids
    with pytest.raises(KeyError):
        sampler.update_weights({"not.a.weight": torch.zeros(1)})


def test_think_closed_within_budget_continues(sampler):
    """A completion that writes </think> inside its budget is not forced: it goes on to
    max_tokens (phase 2 continues it), with its own logprobs all the way."""
    tok = sampler.tokenizer
    think = tok.encode("<think>", add_special_tokens=False)
    ps = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + 7?"}]) + think for i in range(8)]
    out = sampler.generate(ps, SamplingConfig(n=16, max_tokens=40, seed=0, think_budget=16, answer_budget=4))
    closed = [c for g in out for c in g if c.think_tokens is not None and not c.forced]
    assert closed, "the tiny model closes its think block early in some of 128 samples"
    close_id = tok.convert_tokens_to_ids("</think>")
    for c in closed:
        assert c.think_tokens <= 16 and c.token_ids.index(close_id) == c.think_tokens
        assert all(c.sampled_mask) and (len(c.token_ids) == 40 or c.finish_reason == "stop")
    c = max(closed, key=lambda c: len(c.token_ids))
    assert torch.allclose(forward_logprobs(sampler.model, c.prompt_ids, c.token_ids), torch.tensor(c.logprobs), atol=1e-4)
    for g in out:
        for c in g:
            if c.forced:
                assert len(c.token_ids) <= 16 + 1 + 4 and c.think_tokens == 16


@pytest.mark.parametrize("kw, keep", [({}, 5), ({"top_k": 2}, 2), ({"top_p": 0.7}, 2)])
def test_batched_sampling_follows_the_filtered_distribution(kw, keep):
    """The batched exponential race draws each token with its (temperature-scaled, top-k/top-p
    filtered) probability; one generator per row, 20k rows."""
    from thinkgym.sampler.hf_backend import _pick

    logits = torch.tensor([[2.0, 1.5, 0.5, 0.0, -1.0]]).repeat(20_000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(20_000)]
    cfg = SamplingConfig(n=1, temperature=0.7, max_tokens=1, **kw)
    tok, lp = _pick(logits, cfg, gens)
    x = logits[0] / 0.7
    p = torch.softmax(x, -1)
    want = torch.zeros(5)
    want[:keep] = p[:keep] / p[:keep].sum()  # top_p=0.7 keeps the two tokens that reach 0.7
    freq = torch.bincount(tok, minlength=5).float() / len(tok)
    assert torch.allclose(freq, want, atol=0.012), (freq, want)
    assert torch.allclose(lp, want.log()[tok], atol=1e-5)  # processed logprobs of the drawn tokens
    assert torch.equal(_pick(logits[:3], cfg, [torch.Generator().manual_seed(i) for i in range(3)])[0], tok[:3])


def test_finished_rows_leave_the_batch_without_changing_results(sampler, prompts, monkeypatch):
    """Rows that stop early are cut from the batch and the KV cache; the other rows' tokens and
    logprobs are those of a decode that keeps every row to the end."""
    from thinkgym.sampler import hf_backend

    assert hf_backend._plain_kv_cache(sampler.model(torch.tensor([prompts[0]]), use_cache=True).past_key_values)
    cfg = SamplingConfig(n=6, max_tokens=24, seed=11, temperature=1.0, stop=["a"])
    cut = sampler.generate(prompts, cfg)
    lengths = {len(c.token_ids) for g in cut for c in g}
    assert len(lengths) > 1  # some rows did finish before others
    monkeypatch.setattr(hf_backend, "_plain_kv_cache", lambda cache: False)
    full = sampler.generate(prompts, cfg)
    for a, b in zip(cut, full):
        for x, y in zip(a, b):
            assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)
