"""Client sampler for a running vLLM OpenAI-compatible server (multi-GPU / multi-node setups).

Start the server with the dev endpoints (weight reload, prefix-cache reset) and processed
logprobs, so returned logprobs are those of the distribution actually sampled::

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL_DIR --host 127.0.0.1 --port 8000 \\
        --dtype float32 --logprobs-mode processed_logprobs --enforce-eager

(on CPU also ``VLLM_CPU_KVCACHE_SPACE=1``; on GPU use ``--dtype bfloat16`` and drop
``--enforce-eager``). Generation uses ``POST /v1/completions`` with token-id prompts and
``return_token_ids``, one HTTP request per sample, sent concurrently; the server batches them.

Weight sync uses the dev endpoints: ``POST /collective_rpc`` with ``reload_weights`` and a
``weights_path`` the server can read (same machine or a shared filesystem), then
``POST /reset_prefix_cache``. A state dict is first written to ``sync_dir`` as an HF checkpoint.
vLLM's in-place reload does not refresh a tied ``lm_head`` from the embedding, so for tied
models the written checkpoint always carries ``lm_head.weight`` explicitly (a checkpoint dir
without it is re-written to ``sync_dir`` with it). For NCCL weight broadcast from GPU trainers,
vLLM's ``/init_weight_transfer_engine`` + ``/update_weights`` endpoints are the next step; they
need a GPU process group and are not wired here.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from thinkgym import deadline_http
from thinkgym.sampler.base import (
    BaseSampler,
    RawSample,
    SampleRequest,
    check_checkpoint_weights,
    checkpoint_shapes,
    load_checkpoint,
)
from thinkgym.sampler.types import SamplingConfig

log = logging.getLogger("thinkgym.sampler")


class ServerError(RuntimeError):
    """The vLLM server answered with an error (or not at all)."""


_MAX_REPLY_BYTES = 64 << 20  # a completion reply with logprobs; weights travel by file, not here


class VLLMServerSampler(BaseSampler):
    """Sample from a vLLM server at ``base_url``; ``tokenizer_path`` is the model dir.

    Every HTTP exchange, reply included, must finish within ``timeout_s`` (a weight reload
    too: raise it for models that take longer to load)."""

    backend = "vllm-server"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        timeout_s: float = 600.0,
        max_concurrency: int = 64,
        sync_dir: str | Path | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        if isinstance(base_url, str) and "@" in base_url.split("://", 1)[-1].split("/", 1)[0]:
            # Never sent (http.client drops them), and every error message would print them.
            raise ValueError("base_url must not carry credentials (user:password@); the vLLM server client "
                             "sends no authentication")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
        # Written so that NaN fails too; a zero timeout would make every request non-blocking.
        if not (0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        models = self._get("/v1/models")
        served = models.get("data") if isinstance(models, dict) else None
        if not isinstance(served, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in served):
            raise ServerError(f"GET /v1/models: not an OpenAI model list: {str(models)[:200]}")
        if not served:
            raise ServerError(f"{self.base_url} serves no model")
        self.model = model or served[0]["id"]
        if self.model not in {m["id"] for m in served}:
            raise ServerError(f"{self.base_url} does not serve {self.model!r}; it serves {[m['id'] for m in served]}")
        root = next(m for m in served if m["id"] == self.model).get("root") or self.model
        from thinkgym.hub import resolve_model

        # The server reports what it was started with: a directory, or a hub id (fetched here too:
        # the tokenizer, and the config the weight sync writes beside the weights).
        self.tokenizer_path = resolve_model(str(tokenizer_path or root))
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        mml = next(m for m in served if m["id"] == self.model).get("max_model_len")
        if mml is not None and (not isinstance(mml, int) or isinstance(mml, bool) or mml < 2):
            raise ServerError(f"GET /v1/models: max_model_len must be an integer >= 2, got {mml!r}")
        self.max_model_len: int | None = mml
        self._tied = _is_tied(Path(self.tokenizer_path))
        # What update_weights must send: the served checkpoint's names and shapes (None: no
        # safetensors files there, not checked).
        self._shapes = checkpoint_shapes(self.tokenizer_path)
        self._model_vocab = _config(Path(self.tokenizer_path)).get("vocab_size")
        self._own_sync_dir = sync_dir is None
        self.sync_dir = Path(sync_dir or tempfile.mkdtemp(prefix="thinkgym-sync-"))

    @property
    def vocab_size(self) -> int:
        # The model's embedding may be padded past the tokenizer: those ids are still token ids.
        v = self._model_vocab
        return max(len(self.tokenizer), v if isinstance(v, int) else 0)

    # -- HTTP --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        where = f"{method} {self.base_url}{path}"
        try:
            # The whole exchange within timeout_s: a server trickling its reply cannot stall a step.
            status, raw = deadline_http.request(method, self.base_url + path, data, {"Content-Type": "application/json"},
                                                self.timeout_s, _MAX_REPLY_BYTES)
        except deadline_http.BadURL as e:
            raise ServerError(f"{where}: {e}") from None
        except TimeoutError:
            raise ServerError(f"{where}: no complete reply within timeout_s={self.timeout_s}") from None
        except (OSError, http.client.HTTPException) as e:  # refused, reset, closed mid-reply, bad status line
            raise ServerError(f"{where}: {type(e).__name__}: {e}") from None
        if status >= 300:
            detail = raw.decode(errors="replace")[:2000]
            hint = " (start the server with VLLM_SERVER_DEV_MODE=1)" if status == 404 and path in ("/collective_rpc", "/reset_prefix_cache") else ""
            raise ServerError(f"{method} {path}: HTTP {status}: {detail}{hint}")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"{method} {path}: the reply is not JSON: {raw[:200]!r}") from None

    def _get(self, path: str) -> Any:
        return self._request("GET", path)

    def _post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    # -- generation --------------------------------------------------------------------------

    def _sample(self, requests: list[SampleRequest], cfg: SamplingConfig) -> list[RawSample]:
        def one(r: SampleRequest) -> RawSample:
            body: dict[str, Any] = {
                "model": self.model, "prompt": r.prompt_ids, "max_tokens": r.max_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": r.seed, "n": 1,
                "stop": r.stop, "include_stop_str_in_output": True, "return_token_ids": True,
                "skip_special_tokens": True,
            }
            if cfg.top_k:
                body["top_k"] = cfg.top_k
            if cfg.logprobs:
                body["logprobs"] = 0
            if self.max_model_len:
                # Leave room in the context window instead of failing the request.
                body["max_tokens"] = min(r.max_tokens, self.max_model_len - len(r.prompt_ids))
            return self._parse_choice(self._post("/v1/completions", body), cfg)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(requests)))) as pool:
            return list(pool.map(one, requests))

    def _parse_choice(self, reply: Any, cfg: SamplingConfig) -> RawSample:
        """One sample from a ``/v1/completions`` reply; a reply that is not a complete sample is a
        :class:`ServerError`, never an empty or cut completion."""
        where = "POST /v1/completions"
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            raise ServerError(f"{where}: expected one choice, got {str(reply)[:200]}")
        ch = choices[0]
        ids = ch.get("token_ids")
        if not isinstance(ids, list):
            raise ServerError(f"{where}: the reply has no token_ids (a vLLM server with return_token_ids "
                              "support is needed)")
        vocab = self.vocab_size
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
            raise ServerError(f"{where}: token_ids are not token ids of this tokenizer: {str(ids)[:200]}")
        reason = ch.get("finish_reason")
        if reason not in ("stop", "length"):
            # "abort" / "error" / none: the sample is cut short and must not be graded as finished.
            raise ServerError(f"{where}: the request did not finish (finish_reason={reason!r})")
        lps: list[float] = []
        if cfg.logprobs:
            lp = ch.get("logprobs")
            got = lp.get("token_logprobs") if isinstance(lp, dict) else None
            if not isinstance(got, list) or len(got) != len(ids):
                raise ServerError(f"{where}: expected {len(ids)} token logprobs, got {str(got)[:200]}")
            try:
                lps = [float(x) for x in got]
            except (TypeError, ValueError):
                raise ServerError(f"{where}: token logprobs are not numbers: {str(got)[:200]}") from None
            if not all(-math.inf < x <= 0.0 for x in lps):  # also false for NaN
                raise ServerError(f"{where}: token logprobs must be finite and <= 0, got {str(got)[:200]}")
        return RawSample(list(ids), lps, reason)

    # -- weights -----------------------------------------------------------------------------

    def update_weights(self, weights: Mapping[str, Any] | str | Path) -> None:
        """Reload the server's weights from a state dict or an HF checkpoint dir.

        Weights whose names or shapes differ from the served checkpoint are refused before the
        server sees them (:class:`~thinkgym.sampler.base.WeightsMismatch`): its in-place reload
        would load a partial set silently, and stops half-way on an unknown name or a wrong
        shape, which leaves the server unable to generate."""
        if isinstance(weights, (str, Path)):
            path = Path(weights)
            if not path.is_dir() or not any(path.glob("*.safetensors")):
                raise FileNotFoundError(f"{path}: no HF checkpoint (*.safetensors) found")
            if self._tied:
                weights = load_checkpoint(path)  # re-written below with an explicit lm_head
            else:
                if self._shapes is not None:
                    check_checkpoint_weights(checkpoint_shapes(path) or {}, self._shapes, False)
                self._reload(path)
                return
        if not isinstance(weights, Mapping):
            raise TypeError(f"update_weights takes a state dict or a checkpoint dir, got {type(weights).__name__}")
        if self._shapes is not None:
            check_checkpoint_weights(weights, self._shapes, self._tied)
        from safetensors.torch import save_file

        sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
        if self._tied and "model.embed_tokens.weight" in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
        out = self.sync_dir / "weights"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        save_file(sd, str(out / "model.safetensors"))
        shutil.copy(Path(self.tokenizer_path) / "config.json", out / "config.json")
        self._reload(out)

    def _reload(self, path: Path) -> None:
        self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(path.resolve())}})
        res = self._post("/reset_prefix_cache")
        if isinstance(res, dict) and not res.get("success", True):
            log.warning("vLLM server did not reset its prefix cache (requests still running?)")

    def close(self) -> None:
        if self._own_sync_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)


def _config(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / "config.json"
    return json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}


def _is_tied(model_dir: Path) -> bool:
    cfg = _config(model_dir)
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))
