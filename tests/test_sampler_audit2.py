"""Sampler audit, part 2: the thinking budget (stop strings across its two phases, a close
exactly at the budget, the same greedy token structure from vLLM and HF), logprobs of top-k /
top-p sampling, weight syncs that do not fit the model (refused before anything loads, engine
still usable), the prefix cache after a sync, a model vocabulary padded past the tokenizer, numpy
sampling values, and the vLLM-server client against a loopback stub."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import loopback_server, send_body

torch = pytest.importorskip("torch")

from thinkgym.sampler import SamplingConfig, make_sampler  # noqa: E402
from thinkgym.sampler.types import chat_prompt_ids  # noqa: E402


class _Engine:
    """The module's in-process vLLM engine, built on first use. Two in-process engines cannot
    overlap (closing one tears down the process-wide parallel state the other uses): a test that
    needs its own engine closes this one first, and the next user builds it again."""

    sampler = None

    @classmethod
    def get(cls, path):
        if cls.sampler is None:
            cls.sampler = make_sampler("vllm", path, max_model_len=512, num_threads=1)
        return cls.sampler

    @classmethod
    def close(cls):
        if cls.sampler is not None:
            cls.sampler.close()
            cls.sampler = None


@pytest.fixture(scope="module")
def _engine_closed_after_module():
    yield
    _Engine.close()


@pytest.fixture()
def vllm_sampler(tiny_model_dir, _engine_closed_after_module):
    pytest.importorskip("vllm")
    return _Engine.get(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_sampler(tiny_model_dir):
    return make_sampler("hf", tiny_model_dir, num_threads=1)


@pytest.fixture()
def sampler(request):
    return request.getfixturevalue(f"{request.param}_sampler")


def _hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n)
    return out[0, len(prompt):].tolist()


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # the tiny model ties them
    return sd


# -- stop strings across the thinking-budget phases ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [pytest.param("vllm", marks=pytest.mark.vllm), "hf"], indirect=True)
def test_a_stop_string_across_the_budget_boundary_stops_the_completion(sampler):
    """A completion that closes </think> inside its budget is continued by a second request, whose
    prompt holds the first B tokens. A stop string that begins in those tokens and ends in the
    continuation was invisible to the engine (it matches only text it generates): the completion
    ran on to max_tokens with the stop string inside it, finish_reason "length"."""
    tok = sampler.tokenizer
    B = 16
    think = tok.encode("<think>", add_special_tokens=False)
    ps = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + 7?"}]) + think for i in range(8)]
    seeds = [100 + i for i in range(8)]  # per-prompt seeds: a rerun of one prompt alone gets the same tokens
    base = SamplingConfig(n=16, max_tokens=40, seed=0, think_budget=B, answer_budget=4)
    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    found = []
    for i, group in enumerate(sampler.generate(ps, base, seeds=seeds)):
        for j, c in enumerate(group):
            if c.think_tokens is None or c.forced or len(c.token_ids) < B + 4:
                continue  # not one that closed </think> in the budget and went on
            ids = c.token_ids
            stop = text(ids[B - 1 : B + 1])  # the text of the last phase-1 token and the first phase-2 one
            if (text(ids[B - 1 : B]).strip() and text(ids[B : B + 1]).strip() and "\ufffd" not in stop
                    and stop not in text(ids[:B]) and text(ids).find(stop) == len(text(ids[: B - 1]))):
                found.append((i, j, stop, c))
    assert found, "some of 128 samples close their think block early and continue"
    for i, j, stop, c in found[:2]:
        cut = sampler.generate([ps[i]], replace(base, stop=[stop]), seeds=[seeds[i]])[0][j]
        assert cut.finish_reason == "stop" and stop in cut.text, (stop, cut.text)
        assert cut.token_ids == c.token_ids[: B + 1]  # ends on the token that completes the stop
        assert len(cut.logprobs) == len(cut.sampled_mask) == B + 1 and all(cut.sampled_mask)
        assert torch.allclose(torch.tensor(cut.logprobs), torch.tensor(c.logprobs[: B + 1]), atol=1e-4)
        assert cut.think_tokens == c.think_tokens


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [pytest.param("vllm", marks=pytest.mark.vllm), "hf"], indirect=True)
def test_closing_think_exactly_at_the_budget_is_not_forced(sampler):
    """A sample that writes </think> as its t-th token, rerun with think_budget=t (same seeds, so
    the same first t tokens): the budget is met, not exceeded. It goes on to max_tokens unforced."""
    tok = sampler.tokenizer
    close_id = tok.convert_tokens_to_ids("</think>")
    think = tok.encode("<think>", add_special_tokens=False)
    ps = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + 7?"}]) + think for i in range(8)]
    seeds = [100 + i for i in range(8)]
    out = sampler.generate(ps, SamplingConfig(n=16, max_tokens=40, seed=0), seeds=seeds)
    hits = [(i, j, c.token_ids.index(close_id) + 1) for i, g in enumerate(out) for j, c in enumerate(g)
            if close_id in c.token_ids[:-2]]
    assert hits, "some of 128 samples write </think>"
    for i, j, t in hits[:3]:
        cfg = SamplingConfig(n=16, max_tokens=40, seed=0, think_budget=t, answer_budget=2)
        c = sampler.generate([ps[i]], cfg, seeds=[seeds[i]])[0][j]
        assert c.token_ids[:t] == out[i][j].token_ids[:t] and c.token_ids[t - 1] == close_id
        assert not c.forced and all(c.sampled_mask) and c.think_tokens == t - 1
        assert c.finish_reason == "stop" or len(c.token_ids) == 40


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("kw", [
    {"think_budget": 5, "answer_budget": 4},
    {"think_budget": 5, "budget_mode": "truncate"},
    {"think_budget": 0, "answer_budget": 3},
    {"think_budget": 30, "max_tokens": 10},  # max_tokens runs out first: a plain length finish
    {"think_budget": 6, "stop": ["e"]},
])
def test_vllm_and_hf_give_the_same_greedy_token_structure(vllm_sampler, hf_sampler, kw):
    tok = vllm_sampler.tokenizer
    think = tok.encode("<think>", add_special_tokens=False)
    ps = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + 7?"}]) + think for i in range(3)]
    cfg = SamplingConfig(n=2, temperature=0, **{"max_tokens": 20, **kw})
    a, b = vllm_sampler.generate(ps, cfg), hf_sampler.generate(ps, cfg)
    for ga, gb in zip(a, b):
        for x, y in zip(ga, gb):
            assert (x.token_ids, x.sampled_mask, x.forced_ids, x.finish_reason, x.think_tokens) == \
                   (y.token_ids, y.sampled_mask, y.forced_ids, y.finish_reason, y.think_tokens)
            assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4)
            # the forced </think> is inserted once, masked out of the loss, with logprob 0
            assert [lp for lp, m in zip(x.logprobs, x.sampled_mask) if not m] == [0.0] * len(x.forced_ids)


# -- logprobs of filtered sampling -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [pytest.param("vllm", marks=pytest.mark.vllm), "hf"], indirect=True)
def test_logprobs_are_those_of_the_filtered_distribution_sampled_from(sampler, tiny_model_dir):
    """With temperature != 1 and top-k / top-p, a sample's logprob is log of its probability under
    the distribution it was drawn from: softmax(logits / T) kept to the top-k / nucleus and
    renormalized (vLLM's processed_logprobs; the HF backend the same), checked against a
    teacher-forced forward."""
    model = _hf_model(tiny_model_dir)
    tok = sampler.tokenizer
    ps = [chat_prompt_ids(tok, [{"role": "user", "content": f"Problem {i}: what is {i} + 7?"}]) for i in range(2)]
    cfg = SamplingConfig(n=3, max_tokens=16, seed=5, temperature=0.7, top_p=0.8, top_k=20)
    for p, group in zip(ps, sampler.generate(ps, cfg)):
        for c in group:
            with torch.no_grad():
                x = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1 : -1].float() / cfg.temperature
            kth = torch.topk(x, cfg.top_k, -1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
            sx, si = torch.sort(x, -1, descending=True)
            pr = torch.softmax(sx, -1)
            x = x.masked_fill(torch.zeros_like(x, dtype=torch.bool).scatter(1, si, pr.cumsum(-1) - pr > cfg.top_p), float("-inf"))
            ref = torch.log_softmax(x, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)


# -- weight syncs that do not fit the model --------------------------------------------------


def _bad_weights(sd, how):
    sd = dict(sd)
    if how == "missing":
        del sd["model.layers.0.self_attn.k_proj.weight"]
    elif how == "unexpected":
        sd["model.layers.0.self_attn.k_proj.lora_A.weight"] = torch.zeros(4, 128)
    elif how == "shape":
        sd["model.layers.0.mlp.down_proj.weight"] = sd["model.layers.0.mlp.down_proj.weight"].t().contiguous()
    return sd


def _serves_new_weights(s, model, sd, p, before, original, drop=()):
    """Sync ``sd`` (less ``drop``) into sampler ``s``: greedy answers to ``p`` change from ``before``
    to the HF model's on ``sd``; then the ``original`` checkpoint brings ``before`` back."""
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=12)
    model.load_state_dict(sd)
    s.update_weights({k: v for k, v in sd.items() if k not in drop})
    try:
        after = s.generate([p], greedy)[0][0].token_ids
        assert after != before and after == _hf_greedy(model, p, 12)[: len(after)]
    finally:
        s.update_weights(original)
    assert s.generate([p], greedy)[0][0].token_ids == before


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("how", ["missing", "unexpected", "shape"])
def test_vllm_refuses_weights_that_do_not_fit_and_keeps_generating(vllm_sampler, tiny_model_dir, how):
    """vLLM's in-place reload loaded a partial state dict silently (old and new weights mixed),
    and an unknown name or a wrong shape stopped it half-way with layers left on the meta device:
    every later generate failed or hung. Now nothing reaches the engine."""
    s = vllm_sampler
    p = chat_prompt_ids(s.tokenizer, [{"role": "user", "content": "What is 2 + 3?"}])
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=12)
    before = s.generate([p], greedy)[0][0].token_ids
    model = _hf_model(tiny_model_dir)
    sd = _perturbed(model, seed=7)
    with pytest.raises(ValueError, match={"missing": "missing .*k_proj", "unexpected": "unexpected .*lora_A",
                                               "shape": r"wrong shape .*down_proj.weight \(384, 128\) \(model: \(128, 384\)\)"}[how]):
        s.update_weights(_bad_weights(sd, how))
    assert s.generate([p], greedy)[0][0].token_ids == before  # untouched, and still generating
    # A fitting update still works afterwards (a tied model's state dict may leave lm_head out).
    _serves_new_weights(s, model, sd, p, before, tiny_model_dir, drop=("lm_head.weight",))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["missing", "unexpected", "shape"])
def test_hf_refused_weights_leave_the_model_untouched(hf_sampler, how):
    """load_state_dict copies every tensor that fits before it reports the rest: a refused update
    used to raise with the new weights already in the model."""
    s = hf_sampler
    orig = {k: v.clone() for k, v in s.model.state_dict().items()}
    with pytest.raises(KeyError, match=how.replace("shape", "wrong shape")):
        s.update_weights(_bad_weights(_perturbed(s.model, seed=3), how))
    now = s.model.state_dict()
    assert [k for k in orig if not torch.equal(now[k], orig[k])] == []


@pytest.mark.slow
def test_a_checkpoint_dir_is_the_files_its_index_names(hf_sampler, tiny_model_dir, tmp_path):
    """A repo that ships the model twice (Mistral-style consolidated.safetensors beside the HF
    shards, in other names): only the files the index names are the checkpoint, as for vLLM's and
    HF's own loaders. Every safetensors file used to be read, and the extra names refused (HF) or
    sent to vLLM's reload, which stops half-way on them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = _hf_model(tiny_model_dir)
    model.load_state_dict(_perturbed(model, seed=2))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "model.safetensors" for k in names}}))
    save_file({"tok_embeddings.weight": torch.zeros(4, 2)}, str(tmp_path / "consolidated.safetensors"))
    s = hf_sampler
    try:
        s.update_weights(tmp_path)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in s.model.state_dict().items())
    finally:
        s.update_weights(tiny_model_dir)

    from thinkgym.sampler.base import check_checkpoint_weights, checkpoint_shapes

    assert set(checkpoint_shapes(tmp_path)) == set(names)
    # The check a vLLM sync makes: rotary caches vLLM drops are neither needed nor refused, and a
    # tied model's lm_head may come or not.
    sd = dict(model.state_dict())
    check_checkpoint_weights({**sd, "model.rotary_emb.inv_freq": torch.ones(1)}, checkpoint_shapes(tmp_path), tied=True)
    check_checkpoint_weights({k: v for k, v in sd.items() if k != "lm_head.weight"}, checkpoint_shapes(tmp_path), tied=True)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_sync_does_not_serve_stale_cached_prefixes(vllm_sampler, tiny_model_dir):
    """vLLM on CPU caches whole 128-token blocks, so short prompts never test the prefix-cache
    reset: a prompt of several blocks is sampled, the weights change, and the same prompt must be
    answered by the new weights (without the reset it gets the old ones)."""
    s = vllm_sampler
    p = chat_prompt_ids(s.tokenizer, [{"role": "user", "content": "Solve for x: 2x + 3 = 11. " * 16}])
    assert len(p) > 2 * 128
    greedy = SamplingConfig(n=1, temperature=0, max_tokens=12)
    before = s.generate([p], greedy)[0][0].token_ids
    model = _hf_model(tiny_model_dir)
    _serves_new_weights(s, model, _perturbed(model, seed=5), p, before, tiny_model_dir)


# -- a model whose embedding is padded past the tokenizer -------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_takes_the_token_ids_of_a_padded_embedding(tiny_model_dir, tmp_path, _engine_closed_after_module):
    """Qwen-style checkpoints have more embedding rows than tokenizer entries; the engine samples
    those ids, and a multi-turn prompt carries earlier completions. The vLLM sampler refused them
    ("outside the vocabulary [0, len(tokenizer))") where vLLM itself, the HF and the vLLM-server
    samplers take them."""
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    model = _hf_model(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model.resize_token_embeddings(len(tok) + 64)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompt = chat_prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}]) + [len(tok) + 5]
    _Engine.close()
    s = make_sampler("vllm", tmp_path, max_model_len=256, num_threads=1)
    try:
        c = s.generate([prompt], SamplingConfig(n=1, temperature=0, max_tokens=4))[0][0]
        assert len(c.token_ids) == 4 or c.finish_reason == "stop"
        assert s.vocab_size == len(tok) + 64
        with pytest.raises(ValueError, match="outside the vocabulary"):
            s.generate([[len(tok) + 64]], SamplingConfig(max_tokens=2))
    finally:
        s.close()


# -- numpy sampling values -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
def test_numpy_sampling_values_reach_vllm_as_python_numbers(vllm_sampler):
    """SamplingConfig accepts numpy integers, but vLLM's SamplingParams refused a numpy n or top_k
    ("top_k must be an integer, got int64") mid-generate."""
    np = pytest.importorskip("numpy")
    cfg = SamplingConfig(n=np.int64(2), max_tokens=np.int64(6), top_k=np.int64(5), seed=np.int64(1),
                         temperature=np.float32(0.8), think_budget=np.int64(3), answer_budget=np.int64(2))
    out = vllm_sampler.generate([[1, 2, 3]], cfg)
    assert all(type(getattr(cfg, k)) is int for k in ("n", "max_tokens", "top_k", "seed", "think_budget", "answer_budget"))
    plain = SamplingConfig(n=2, max_tokens=6, top_k=5, seed=1, temperature=float(np.float32(0.8)), think_budget=3, answer_budget=2)
    assert [c.token_ids for c in out[0]] == [c.token_ids for c in vllm_sampler.generate([[1, 2, 3]], plain)[0]]


# -- the vLLM-server client against a loopback stub ------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible completions endpoint on 127.0.0.1. ``mode``: ``ok`` answers every
    request after a random short delay (replies come back out of order), echoing the prompt's
    first token; ``fail_one`` answers HTTP 500 to the prompt [13]; ``hang`` never answers in time."""

    mode = "ok"
    bodies: list[dict] = []
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        send_body(self, code, body, ctype)

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "max_model_len": 512}]}).encode())

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with type(self).lock:
            type(self).bodies.append(req if self.path == "/v1/completions" else {"path": self.path, **req})
        if self.path != "/v1/completions":  # the dev endpoints of a weight sync
            return self._send(200, b"{}")
        mode = type(self).mode
        if mode == "hang":
            time.sleep(3)
            return self._send(200, b"{}")
        time.sleep(random.uniform(0, 0.05))
        if mode == "fail_one" and req["prompt"] == [13]:
            return self._send(500, b'{"error": "boom"}')
        ids = [req["prompt"][0]] * min(2, req["max_tokens"])
        choice = {"token_ids": ids, "finish_reason": "length", "logprobs": {"token_logprobs": [-0.25] * len(ids)}}
        self._send(200, json.dumps({"choices": [choice]}).encode())


@pytest.fixture(scope="module")
def stub_url():
    with loopback_server(_Stub) as url:
        yield url


@pytest.fixture()
def stub(stub_url):
    _Stub.mode, _Stub.bodies = "ok", []
    yield _Stub
    _Stub.mode = "ok"


def _client(url, tiny_model_dir, **kw):
    from thinkgym.sampler.server import VLLMServerSampler

    return VLLMServerSampler(url, tokenizer_path=tiny_model_dir, **kw)


def test_server_client_keeps_prompt_order_and_sends_plain_json(stub, stub_url, tiny_model_dir):
    """Replies arrive out of order; every completion still belongs to its own prompt. Numpy
    sampling values used to fail json.dumps ("Object of type int64 is not JSON serializable")."""
    np = pytest.importorskip("numpy")
    s = _client(stub_url, tiny_model_dir, max_concurrency=8)
    prompts = [[t, 5, 6] for t in range(20, 60)]
    out = s.generate(prompts, SamplingConfig(n=np.int64(2), max_tokens=np.int64(3), top_k=np.int64(4)))
    assert [[c.token_ids for c in g] for g in out] == [[[p[0]] * 2] * 2 for p in prompts]
    assert all(c.logprobs == [-0.25, -0.25] and c.prompt_ids == p for p, g in zip(prompts, out) for c in g)
    assert {b["top_k"] for b in stub.bodies} == {4} and len(stub.bodies) == 80
    s.close()


def test_server_client_one_failed_request_fails_the_batch(stub, stub_url, tiny_model_dir):
    from thinkgym.sampler.server import ServerError

    stub.mode = "fail_one"
    s = _client(stub_url, tiny_model_dir, max_concurrency=4)
    with pytest.raises(ServerError, match="HTTP 500: .*boom"):
        s.generate([[20], [13], [21]], SamplingConfig(n=2, max_tokens=2))
    stub.mode = "ok"
    assert len(s.generate([[20], [21]], SamplingConfig(n=2, max_tokens=2))) == 2  # the client is fine
    s.close()


def test_server_client_does_not_send_the_rest_of_a_failed_batch(stub, stub_url, tiny_model_dir):
    """With a hung server every request times out: the requests still queued are dropped at the
    first error, not each sent in turn to wait out its own timeout."""
    from thinkgym.sampler.server import ServerError

    s = _client(stub_url, tiny_model_dir, timeout_s=0.5, max_concurrency=2)
    stub.mode = "hang"
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="no complete reply within timeout_s=0.5"):
        s.generate([[20 + i] for i in range(24)], SamplingConfig(n=1, max_tokens=2))
    assert time.monotonic() - t0 < 3.0  # two rounds of timeouts at most, not twelve
    assert len(stub.bodies) <= 4  # the two in flight, and at most the two their workers took next
    s.close()


def test_server_client_refuses_weights_that_do_not_fit_before_the_server_sees_them(stub, stub_url, tiny_model_dir):
    """The server's in-place reload has the in-process engine's failure modes (a partial set loaded
    silently; an unknown name or a wrong shape leaves it unable to generate): such weights are
    refused here, with nothing written for or sent to the server."""
    s = _client(stub_url, tiny_model_dir)
    sd = _perturbed(_hf_model(tiny_model_dir), seed=1)
    for how in ("missing", "unexpected", "shape"):
        with pytest.raises(ValueError, match=how.replace("shape", "wrong shape")):
            s.update_weights(_bad_weights(sd, how))
    assert stub.bodies == [] and not (s.sync_dir / "weights").exists()
    s.update_weights({k: v for k, v in sd.items() if k != "lm_head.weight"})  # tied: lm_head is added
    assert [b["path"] for b in stub.bodies] == ["/collective_rpc", "/reset_prefix_cache"]
    from safetensors import safe_open

    with safe_open(str(s.sync_dir / "weights" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("lm_head.weight"), sd["model.embed_tokens.weight"])
    s.close()
