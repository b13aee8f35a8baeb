"""The vLLM-server client against a real OpenAI-compatible vLLM server on 127.0.0.1:
token-id prompts, seeded sampling, logprobs, and weight sync over the dev HTTP endpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from thinkgym.sampler import SamplingConfig, make_sampler  # noqa: E402
from thinkgym.sampler.server import ServerError  # noqa: E402
from thinkgym.sampler.types import chat_prompt_ids  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--logprobs-mode", "processed_logprobs", "--enforce-eager", "--max-model-len", "512"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"vLLM server did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_server_client(server, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    s = make_sampler("vllm-server", tiny_model_dir, base_url=server)
    p = chat_prompt_ids(s.tokenizer, [{"role": "user", "content": "What is 2 + 3?"}])
    cfg = SamplingConfig(n=3, max_tokens=16, seed=3)
    a = s.generate([p, p[:6]], cfg)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in s.generate([p, p[:6]], cfg)[0]]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def forward_lp(c):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([c.prompt_ids + c.token_ids])).logits[0], -1)
        return lp[len(c.prompt_ids) - 1 : -1].gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]

    for c in a[0]:
        assert torch.allclose(forward_lp(c), torch.tensor(c.logprobs), atol=1e-4)

    def greedy():
        return s.generate([p], SamplingConfig(n=1, temperature=0, max_tokens=16))[0][0].token_ids

    def hf_greedy():
        with torch.no_grad():
            return model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16)[0, len(p) :].tolist()

    before = greedy()
    g = torch.Generator().manual_seed(0)
    sd = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd)
    s.update_weights(sd)
    after = greedy()
    assert after != before and after == hf_greedy()[: len(after)]
    # A checkpoint dir on the shared filesystem, saved the HF way (no lm_head for tied models).
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "ckpt")
    s.update_weights(tmp_path / "ckpt")
    assert greedy() == before == hf_greedy()[: len(before)]
    s.close()

    with pytest.raises(ServerError, match="does not serve"):
        make_sampler("vllm-server", tiny_model_dir, base_url=server, model="other-model")
