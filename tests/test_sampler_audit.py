"""Sampler edge cases: bad sampling settings and prompts, the context window under a thinking
budget (HF backend), hostile or broken replies to the vLLM-server client, and seeds of samplers
that take no per-prompt seeds."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import loopback_server, send_body

from thinkgym.sampler.types import SamplingConfig, check_prompts, request_seed


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"top_k": -3}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"top_k": "5"}, "top_k must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer or None"),
        ({"seed": "7"}, "seed must be an integer or None"),
        ({"n": True}, "n must be a positive integer"),
        ({"max_tokens": True}, "max_tokens must be a positive integer"),
        ({"logprobs": "no"}, "logprobs must be true or false"),
    ],
)
def test_sampling_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingConfig(**kw)


def test_sampling_config_accepts_numpy_integers():
    np = pytest.importorskip("numpy")
    cfg = SamplingConfig(n=np.int64(2), seed=np.int64(3), top_k=np.int32(4))
    assert request_seed(cfg, 0) == request_seed(SamplingConfig(seed=3), 0)


@pytest.mark.parametrize("bad", [1.7, True, "5"])
def test_prompt_token_ids_must_be_integers(bad):
    with pytest.raises(TypeError, match="prompt 1 has a token id that is not an integer"):
        check_prompts([[1, 2], [3, bad]], vocab_size=100)


# -- HF backend: the context window ---------------------------------------------------------


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    pytest.importorskip("torch")
    from thinkgym.sampler import make_sampler

    return make_sampler("hf", tiny_model_dir, num_threads=1)


def _think_prompt(tok, length: int) -> list[int]:
    """A chat prompt of exactly ``length`` tokens (padded in front) that opens a think block."""
    from thinkgym.sampler.types import chat_prompt_ids

    head = chat_prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}])
    head += tok.encode("<think>", add_special_tokens=False)
    return tok.encode("7", add_special_tokens=False)[:1] * (length - len(head)) + head


@pytest.mark.slow
def test_hf_stops_at_the_models_context_like_vllm(hf):
    """vLLM's default context window is the model's; the HF fallback keeps to the same one."""
    limit = hf.model.config.max_position_embeddings
    assert hf.max_model_len == limit
    p = _think_prompt(hf.tokenizer, limit - 10)
    assert len(p) == limit - 10
    c = hf.generate([p], SamplingConfig(n=1, max_tokens=64, seed=0, temperature=1.0))[0][0]
    assert len(c.token_ids) == 10 and c.finish_reason == "length"
    with pytest.raises(ValueError, match=f"does not fit max_model_len={limit}"):
        hf.generate([p + [5] * 10], SamplingConfig(max_tokens=4))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["force", "truncate"])
def test_hf_context_running_out_inside_the_budget_is_a_length_finish(hf, mode):
    """A completion that hits the context window before its think budget is not budget-exhausted:
    it is neither forced (no room for </think> and an answer) nor marked think_budget."""
    limit = hf.model.config.max_position_embeddings
    p = _think_prompt(hf.tokenizer, limit - 12)
    out = hf.generate([p], SamplingConfig(n=3, max_tokens=40, think_budget=30, seed=0, budget_mode=mode))[0]
    for c in out:
        if c.finish_reason == "stop":
            continue  # the model ended on its own within 12 tokens
        assert c.finish_reason == "length" and not c.forced and len(c.token_ids) + len(p) <= limit
    assert any(c.finish_reason == "length" for c in out)


def test_hf_rejects_bad_settings(tiny_model_dir):
    pytest.importorskip("torch")
    from thinkgym.sampler import make_sampler

    with pytest.raises(ValueError, match="max_batch_size must be a positive integer"):
        make_sampler("hf", tiny_model_dir, max_batch_size=0)
    with pytest.raises(ValueError, match="max_model_len=4096 exceeds the model's max_position_embeddings"):
        make_sampler("hf", tiny_model_dir, max_model_len=4096)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_vllm_engine_seed_is_checked_before_the_engine_starts(tiny_model_dir, seed):
    from thinkgym.sampler.vllm_backend import VLLMSampler

    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2\\*\\*32\\)"):
        VLLMSampler(tiny_model_dir, seed=seed)


def test_vllm_abort_is_not_a_finished_sample():
    from thinkgym.sampler.vllm_backend import _finish

    assert _finish("stop") == "stop" and _finish("length") == "length"
    for reason in ("abort", "error", None):
        with pytest.raises(RuntimeError, match="did not finish"):
            _finish(reason)


# -- vLLM-server client against a fake server ------------------------------------------------
# A real vLLM server does not send these replies; a fake OpenAI-compatible server on 127.0.0.1
# stands in for a broken proxy, an old server or a hostile endpoint.


class _Fake(BaseHTTPRequestHandler):
    mode = "ok"
    tokens: list[int] = []

    def log_message(self, *a):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        send_body(self, code, body, ctype)

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny", "max_model_len": 512}]}).encode())

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = type(self).mode
        ids = type(self).tokens[: req["max_tokens"]]
        choice = {"text": "", "token_ids": ids, "finish_reason": "length",
                  "logprobs": {"token_logprobs": [-0.5] * len(ids)}}
        if mode == "slow":
            time.sleep(1.5)
        elif mode == "trickle":  # every byte well inside the 0.5 s timeout, the whole far past it
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        elif mode == "drop":
            self.close_connection = True
            return  # no status line at all
        elif mode == "html":
            return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        elif mode == "no_choices":
            return self._send(200, json.dumps({"error": "overloaded"}).encode())
        elif mode == "no_token_ids":
            del choice["token_ids"]
        elif mode == "abort":
            choice["finish_reason"] = "abort"
        elif mode == "short_logprobs":
            choice["logprobs"]["token_logprobs"] = [-0.5]
        elif mode == "bad_ids":
            choice["token_ids"] = [10**6] * len(ids)
        self._send(200, json.dumps({"choices": [choice]}).encode())


@pytest.fixture(scope="module")
def fake_server(tiny_model_dir):
    from transformers import AutoTokenizer

    _Fake.tokens = AutoTokenizer.from_pretrained(str(tiny_model_dir)).encode("the answer is 5", add_special_tokens=False)
    with loopback_server(_Fake) as url:
        yield url


@pytest.fixture()
def client(fake_server, tiny_model_dir):
    from thinkgym.sampler.server import VLLMServerSampler

    _Fake.mode = "ok"
    s = VLLMServerSampler(fake_server, tokenizer_path=tiny_model_dir, timeout_s=0.5)
    yield s
    s.close()
    _Fake.mode = "ok"


def test_server_client_reads_a_good_reply(client):
    c = client.generate([[1, 2, 3]], SamplingConfig(n=2, max_tokens=3))[0]
    assert [x.token_ids for x in c] == [_Fake.tokens[:3]] * 2
    assert c[0].logprobs == [-0.5] * 3 and c[0].finish_reason == "length"


@pytest.mark.parametrize(
    "mode, msg",
    [
        ("slow", "no complete reply within timeout_s=0.5"),
        ("trickle", "no complete reply within timeout_s=0.5"),
        ("drop", "RemoteDisconnected"),
        ("html", "the reply is not JSON"),
        ("no_choices", "expected one choice"),
        ("no_token_ids", "the reply has no token_ids"),
        ("abort", "did not finish \\(finish_reason='abort'\\)"),
        ("short_logprobs", "expected 3 token logprobs"),
        ("bad_ids", "token_ids are not token ids of this tokenizer"),
    ],
)
def test_server_client_bad_replies_are_server_errors(client, mode, msg):
    """Each a one-line ServerError, and within the timeout: a server trickling its headers a
    byte at a time used to hold the request for as long as it kept sending."""
    from thinkgym.sampler.server import ServerError

    _Fake.mode = mode
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=msg):
        client.generate([[1, 2, 3]], SamplingConfig(n=1, max_tokens=3))
    assert time.monotonic() - t0 < 2.0


def test_server_client_rejects_bad_settings(fake_server, tiny_model_dir):
    from thinkgym.sampler.server import VLLMServerSampler

    for kw, msg in [({"timeout_s": 0}, "timeout_s must be a finite number > 0"),
                    ({"timeout_s": float("nan")}, "timeout_s must be a finite number > 0"),
                    ({"max_concurrency": 0}, "max_concurrency must be a positive integer")]:
        with pytest.raises(ValueError, match=msg):
            VLLMServerSampler(fake_server, tokenizer_path=tiny_model_dir, **kw)
    with pytest.raises(ValueError, match="base_url must be an http"):
        VLLMServerSampler("127.0.0.1:8000", tokenizer_path=tiny_model_dir)
    # credentials would never be sent, and every later error message would print them
    with pytest.raises(ValueError, match="must not carry credentials") as e:
        VLLMServerSampler(fake_server.replace("http://", "http://me:s3cret@"), tokenizer_path=tiny_model_dir)
    assert "s3cret" not in str(e.value)


# -- rollouts with a sampler that takes no per-prompt seeds ----------------------------------


class _PositionSeeded:
    """A sampler with only ``generate(prompts, cfg)`` (the Sampler protocol): it seeds by batch
    position. Records every request seed it uses."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.seeds: list[int | None] = []

    def generate(self, prompts, cfg):
        self.seeds += [request_seed(cfg, i) for i in range(len(prompts))]
        return self.inner.generate(prompts, cfg)


@pytest.mark.slow
def test_rollout_turns_do_not_reuse_seeds_without_per_prompt_seeds(hf):
    from thinkgym.sampler.rollout import collect_rollouts

    s = _PositionSeeded(hf)
    batch = collect_rollouts("thinkgym/CountdownRetry-v0", s, indices=[0, 1], group_size=2, max_turns=3,
                             cfg=SamplingConfig(max_tokens=8, seed=1))
    assert sum(e.num_turns for e in batch) > len(batch)  # some episodes took a second turn
    assert len(s.seeds) == sum(e.num_turns for e in batch)
    assert len(set(s.seeds)) == len(s.seeds)


def test_rollout_rejects_a_nonsense_context(hf):
    from thinkgym.sampler.rollout import collect_rollouts

    with pytest.raises(ValueError, match="max_context must be >= 2"):
        collect_rollouts("thinkgym/Arithmetic-v0", hf, indices=[0], group_size=1, cfg=SamplingConfig(), max_context=0)


# -- templates that open <think> in the generation prompt ------------------------------------


class _Scripted:
    """Stands in for a trained policy (a random tiny model cannot be made to write a given
    reply): returns fixed texts, tokenized by the real tokenizer, one per prompt in order."""

    def __init__(self, tok, texts):
        self.tokenizer, self.texts = tok, texts

    def generate(self, prompts, cfg, seeds=None):
        from thinkgym.sampler.types import Completion

        out = []
        for p, text in zip(prompts, self.texts):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append([Completion(prompt_ids=list(p), token_ids=ids, logprobs=[], text=text, finish_reason="stop")])
        return out


def test_a_template_that_opens_think_grades_the_whole_assistant_turn(tiny_model_dir):
    """R1 / Qwen3-style templates end the prompt with "<think>": the completion continues the
    thinking. A reply that closes it and answers is well-formed; one that never closes it has
    no answer, even with a \\boxed{} mid-thought (it used to be graded as the final section)."""
    from transformers import AutoTokenizer

    from thinkgym.sampler.rollout import collect_rollouts
    from thinkgym.tasks import make_task

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = tok.chat_template.replace("{{ '<|im_start|>assistant\n' }}{%- endif -%}",
                                                  "{{ '<|im_start|>assistant\n<think>\n' }}{%- endif -%}")
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<think>\n")
    gold = make_task("arithmetic", seed=0)[0]["answer"]
    texts = [f"so it is \\boxed{{{gold}}} I think", f"2 steps.\n</think>\n<answer>{gold}</answer>"]
    for grader, want in (("math", [0.0, 1.0]), ("format", [0.0, 1.0])):
        b = collect_rollouts("thinkgym/Arithmetic-v0", _Scripted(tok, texts), indices=[0], group_size=2,
                             cfg=SamplingConfig(max_tokens=32, seed=0), env_kwargs={"grader": grader})
        assert all(e.think_in_prompt for e in b)
        assert [e.reward for e in b] == want, (grader, [e.grades[-1].get("reason") for e in b])
        assert [e.text for e in b] == texts  # the episode keeps what the model wrote
