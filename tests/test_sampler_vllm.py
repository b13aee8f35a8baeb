"""The in-process vLLM sampler on the tiny model: seeding, stop strings, thinking budget,
logprobs against a teacher-forced HF forward, and in-place weight sync."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from thinkgym.sampler import SamplingConfig, make_sampler  # noqa: E402
from thinkgym.sampler.types import chat_prompt_ids  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def sampler(tiny_model_dir):
    s = make_sampler("vllm", tiny_model_dir, max_model_len=512, num_threads=1)
    yield s
    s.close()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(sampler):
    tok = sampler.tokenizer
    a = chat_prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}])
    b = chat_prompt_ids(tok, [{"role": "user", "content": "Solve for x: 2x + 3 = 11."}])
    return [a, b]


def teacher_forced_logprobs(model, prompt_ids, token_ids, temperature=1.0):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits / temperature, -1)
    P = len(prompt_ids)
    return lp[P - 1 : -1].gather(1, torch.tensor(token_ids)[:, None])[:, 0]


def test_seeded_reproducible(sampler, prompts):
    cfg = SamplingConfig(n=4, max_tokens=24, seed=7)
    a = sampler.generate(prompts, cfg)
    b = sampler.generate(prompts, cfg)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert len(a) == 2 and all(len(g) == 4 for g in a)
    # samples in a group differ, and another seed gives other tokens
    assert len({tuple(c.token_ids) for c in a[0]}) > 1
    c = sampler.generate(prompts, SamplingConfig(n=4, max_tokens=24, seed=8))
    assert [x.token_ids for x in c[0]] != [x.token_ids for x in a[0]]
    # the same prompt in another batch position and batch size still gets the same tokens
    solo = sampler.generate([prompts[0]], cfg)
    assert [x.token_ids for x in solo[0]] == [x.token_ids for x in a[0]]
    for comp in a[0]:
        assert comp.prompt_ids == prompts[0]
        assert len(comp.logprobs) == len(comp.token_ids) and all(lp <= 0 for lp in comp.logprobs)
        assert comp.finish_reason in ("stop", "length")
        assert comp.text == sampler.tokenizer.decode(comp.token_ids, skip_special_tokens=True)


def test_stop_string(sampler, prompts):
    full = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=40))[0][0]
    assert full.finish_reason == "length" and len(full.text) > 12
    stop = full.text[8:11]  # a string the greedy continuation is known to produce
    assert stop.strip()
    cut = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=40, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop"
    assert stop in cut.text and full.text.startswith(cut.text.split(stop)[0] + stop)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)


@pytest.mark.parametrize("mode", ["force", "truncate"])
def test_think_budget(sampler, prompts, mode):
    tok = sampler.tokenizer
    # A prompt that opens the think block: every sampled token is a thinking token until
    # the model writes </think>, which the random model essentially never does.
    p = prompts[0] + tok.encode("<think>", add_special_tokens=False)
    close_id = tok.convert_tokens_to_ids("</think>")
    cfg = SamplingConfig(n=3, max_tokens=64, seed=3, think_budget=6, answer_budget=5, budget_mode=mode)
    group = sampler.generate([p], cfg)[0]
    budgeted = [c for c in group if c.think_tokens is None or c.forced]
    assert budgeted, "expected at least one completion to exhaust the thinking budget"
    for c in group:
        assert len(c.sampled_mask) == len(c.token_ids) == len(c.logprobs)
        if mode == "truncate":
            assert c.finish_reason == "think_budget" or c.think_tokens is not None
            if c.finish_reason == "think_budget":
                assert len(c.token_ids) == 6 and all(c.sampled_mask) and c.forced_ids == []
        else:
            if c.forced:
                assert c.forced_ids == [close_id]
                assert c.token_ids[6] == close_id and c.sampled_mask[6] is False and c.logprobs[6] == 0.0
                assert sum(c.sampled_mask) == len(c.token_ids) - 1 <= 6 + 5
                assert c.think_tokens == 6 and "</think>" in c.text
                assert c.finish_reason in ("stop", "length")
    # Answer tokens after the forced close are the model's own continuation of the forced
    # prefix: their logprobs match a teacher-forced forward over the whole sequence.
    if mode == "force":
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(sampler.model_path, dtype=torch.float32).eval()
        c = next(c for c in group if c.forced)
        ref = teacher_forced_logprobs(m, c.prompt_ids, c.token_ids)
        got = torch.tensor(c.logprobs)
        keep = torch.tensor(c.sampled_mask)
        assert torch.allclose(ref[keep], got[keep], atol=1e-4)


def test_budget_zero_forces_immediately(sampler, prompts):
    p = prompts[1] + sampler.tokenizer.encode("<think>", add_special_tokens=False)
    c = sampler.generate([p], SamplingConfig(n=1, seed=0, think_budget=0, answer_budget=4))[0][0]
    assert c.forced and c.sampled_mask[0] is False and c.think_tokens == 0
    assert 1 < len(c.token_ids) <= 5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_hf_forward(sampler, hf_model, prompts, temperature):
    cfg = SamplingConfig(n=2, max_tokens=32, seed=11, temperature=temperature)
    for p, group in zip(prompts, sampler.generate(prompts, cfg)):
        for c in group:
            ref = teacher_forced_logprobs(hf_model, p, c.token_ids, temperature)
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4), (ref - torch.tensor(c.logprobs)).abs().max()


def test_bad_input_is_rejected(sampler):
    with pytest.raises(TypeError):
        sampler.generate(["a string prompt"], SamplingConfig())
    with pytest.raises(ValueError):
        sampler.generate([[]], SamplingConfig())
    with pytest.raises(ValueError):
        sampler.generate([[10**7]], SamplingConfig())
    with pytest.raises(ValueError):
        SamplingConfig(n=0)
    with pytest.raises(ValueError):
        SamplingConfig(budget_mode="cut")
    with pytest.raises(FileNotFoundError):
        sampler.update_weights("/nonexistent/checkpoint")


def _perturbed(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("how", ["state_dict", "path"])
def test_weight_sync(sampler, tiny_model_dir, prompts, tmp_path, how):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    before = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=24))[0][0]
    assert before.token_ids == _hf_greedy(model, prompts[0], 24)[: len(before.token_ids)]

    sd = _perturbed(model, 0.5, seed={"state_dict": 1, "path": 2}[how])
    model.load_state_dict(sd)
    if how == "path":
        model.save_pretrained(tmp_path / "ckpt")
        sampler.update_weights(tmp_path / "ckpt")
    else:
        sampler.update_weights(sd)
    try:
        after = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=24))[0][0]
        assert after.token_ids != before.token_ids, "new weights must change the greedy output"
        assert after.token_ids == _hf_greedy(model, prompts[0], 24)[: len(after.token_ids)]
        sampled = sampler.generate(prompts, SamplingConfig(n=2, max_tokens=24, seed=5))
        for p, group in zip(prompts, sampled):
            for c in group:
                ref = teacher_forced_logprobs(model, p, c.token_ids)
                # Larger perturbed weights: float32 summation-order noise reaches ~1e-4.
                assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-3)
    finally:
        sampler.update_weights(tiny_model_dir)  # back to the original weights for other tests
    again = sampler.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_tokens=24))[0][0]
    assert again.token_ids == before.token_ids


def test_large_seeded_batch(sampler):
    """More prompt tokens than one engine step takes: seeded sampling must survive the split
    (vLLM on CPU cannot rewind a generator for a partially prefilled request)."""
    tok = sampler.tokenizer
    from thinkgym.sampler.types import chat_prompt_ids

    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: {i} + {2 * i + 1} = ? " * 4}]) for i in range(48)]
    assert sum(len(p) for p in prompts) * 8 > 4096
    cfg = SamplingConfig(n=8, max_tokens=4, seed=9)
    a = sampler.generate(prompts, cfg)
    assert [len(g) for g in a] == [8] * 48
    assert [c.token_ids for c in a[5]] == [c.token_ids for c in sampler.generate(prompts[:6], cfg)[5]]


@pytest.mark.parametrize("mode", ["force", "truncate"])
def test_context_running_out_inside_the_budget_is_a_length_finish(sampler, mode):
    """A completion that reaches max_model_len before its think budget ends as a plain length
    finish: no forced </think> (there is no room to answer) and no think_budget reason. The
    rest of the batch is sampled as usual."""
    tok = sampler.tokenizer
    head = chat_prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}]) + tok.encode("<think>", add_special_tokens=False)
    long = tok.encode("7", add_special_tokens=False)[:1] * (sampler.max_model_len - 12 - len(head)) + head
    cfg = SamplingConfig(n=3, max_tokens=40, think_budget=30, seed=0, budget_mode=mode)
    out = sampler.generate([long, head], cfg)
    ended = [c for c in out[0] if c.finish_reason != "stop"]
    assert ended, "the tiny model does not stop within 12 tokens in every sample"
    for c in ended:
        assert c.finish_reason == "length" and not c.forced and len(long) + len(c.token_ids) == sampler.max_model_len
    # The short prompt still has its budget enforced.
    assert any(c.finish_reason == "think_budget" if mode == "truncate" else c.forced for c in out[1])
