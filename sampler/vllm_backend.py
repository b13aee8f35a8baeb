"""In-process vLLM sampler (``vllm.LLM``): the default rollout backend.

Weight sync goes through vLLM's in-place reload (``Worker.reload_weights``) followed by a
prefix-cache reset, which is mandatory: cached KV blocks were computed with the old weights.
With the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) a state dict is handed to
the worker as a weights iterator: no file is written (~0.04 s for the tiny model). With a
multiprocess engine the weights go through a temporary safetensors dir that the worker reads.
A checkpoint dir is read here and sent the same way, so a tied ``lm_head`` can be filled in.
Each reload made vLLM warn "RotaryEmbedding: Failed to load weights": a rotary embedding's
cos/sin cache is computed, never loaded, so the warning is dropped (:class:`_RotaryReloadFilter`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

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


def _finish(reason: str | None) -> str:
    """vLLM's finish reason of a finished sample: ``stop`` or ``length``. An aborted or failed
    request is cut short, so it is an error rather than a completion to grade."""
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"vLLM did not finish a request (finish_reason={reason!r})")


class VLLMSampler(BaseSampler):
    """Sample with an in-process ``vllm.LLM``.

    ``logprobs_mode="processed_logprobs"`` is set so returned logprobs are those of the
    distribution actually sampled from (after temperature), as the learner's ratio needs.
    ``max_model_len=None`` takes the model's own context length.

    ``num_threads`` sets torch's intra-op threads before the engine starts (on CPU, vLLM's
    worker then freezes ``torch.set_num_threads`` for the whole process). On small models and
    busy CPUs ``num_threads=1`` (or ``OMP_NUM_THREADS=1``) is far faster than the default: on a
    loaded 2-core machine the tiny model samples ~30x more tokens/s with one thread than with
    two, which spin-wait on each other (see bench/bench_sampler.py).
    """

    backend = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "float32",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        enforce_eager: bool = True,
        num_threads: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            # vLLM seeds numpy with it, which takes only [0, 2**32): checked before the engine starts.
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        from thinkgym.hub import resolve_model

        model_path = Path(resolve_model(str(model_path)))  # a directory or a hub id: the weight sync needs files
        from transformers import AutoTokenizer
        from vllm import LLM

        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        import json

        cfg = json.loads((model_path / "config.json").read_text())
        limit = cfg.get("max_position_embeddings")
        if max_model_len is not None and limit and max_model_len > limit:
            log.warning("max_model_len %d > the model's max_position_embeddings %d; using %d", max_model_len, limit, limit)
            max_model_len = int(limit)
        if num_threads is not None:
            # Must happen before the engine starts: the CPU worker then disables
            # torch.set_num_threads for the whole process.
            import torch

            torch.set_num_threads(num_threads)
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        engine_kwargs.setdefault("enable_prefix_caching", True)
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vLLM 0.32 on CPU: a seeded request whose prefill is split across steps makes the
            # worker rewind a CPU torch.Generator, which CPU generators cannot do (the engine
            # dies: "CPU Generator does not use offset"). Whole-prompt prefills avoid it.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        _RotaryReloadFilter.install()  # before the engine starts: a forked engine process inherits it
        self.llm = LLM(
            model=self.model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enforce_eager=enforce_eager,
            **engine_kwargs,
        )
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._model_vocab = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._tied = bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))
        # What update_weights must be handed: the started checkpoint's names and shapes (None for a
        # checkpoint without safetensors files: not checked).
        self._shapes = checkpoint_shapes(model_path)
        self._closed = False

    @property
    def vocab_size(self) -> int:
        # The model's embedding may be padded past the tokenizer (Qwen2.5: 151936 rows for 151665
        # tokens). The engine samples those ids and takes them in prompts (a multi-turn prompt
        # holds earlier completions), as the HF and vLLM-server samplers do.
        return max(len(self.tokenizer), self._model_vocab)

    # -- generation -----------------------------------------------------------------------

    def _sample(self, requests: list[SampleRequest], cfg: SamplingConfig) -> list[RawSample]:
        from vllm import SamplingParams

        for r in requests:
            if len(r.prompt_ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt of {len(r.prompt_ids)} tokens does not fit max_model_len={self.max_model_len}"
                )
        params = [
            SamplingParams(
                n=1,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                # Leave room in the context window instead of failing the whole batch.
                max_tokens=min(r.max_tokens, self.max_model_len - len(r.prompt_ids)),
                seed=r.seed,
                stop=r.stop or None,
                # Text is decoded once from the ids (BaseSampler.decode); vLLM's per-step
                # incremental detokenization is only needed to match stop strings.
                detokenize=bool(r.stop),
                include_stop_str_in_output=True,
                logprobs=0 if cfg.logprobs else None,
                skip_special_tokens=True,
            )
            for r in requests
        ]
        prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        raws = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps: list[float] = []
            if cfg.logprobs and c.logprobs is not None:
                lps = [float(pos[t].logprob) for pos, t in zip(c.logprobs, ids)]
            raws.append(RawSample(ids, lps, _finish(c.finish_reason)))
        return raws

    # -- weights ---------------------------------------------------------------------------

    def update_weights(self, weights: Mapping[str, Any] | str | Path) -> None:
        """Load new weights (HF parameter names, or an HF checkpoint dir) in place, then
        reset the prefix cache.

        Weights whose names or shapes differ from the model's checkpoint are refused
        (:class:`~thinkgym.sampler.base.WeightsMismatch`) before the engine sees any of them:
        vLLM's reload would load a partial set silently, and stops half-way on an unknown name or
        a wrong shape, which leaves the engine unable to generate."""
        if isinstance(weights, (str, Path)):
            weights = load_checkpoint(weights)
        if not isinstance(weights, Mapping):
            raise TypeError(f"update_weights takes a state dict or a checkpoint dir, got {type(weights).__name__}")
        if self._shapes is not None:
            check_checkpoint_weights(weights, self._shapes, self._tied)
        items = _cpu_items(weights)
        if self._tied:
            # vLLM's in-place reload does not keep a tied lm_head in step with the embedding
            # (0.32: the reloaded embedding gets fresh storage), so the head is always sent
            # explicitly. HF checkpoints of tied models omit it; a state dict may carry it.
            d = dict(items)
            if "model.embed_tokens.weight" in d:
                d["lm_head.weight"] = d["model.embed_tokens.weight"]
            items = list(d.items())
        if _in_process():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        else:
            # Across processes, a checkpoint on local disk is the portable path.
            with tempfile.TemporaryDirectory(prefix="thinkgym-weights-") as d:
                _save_hf_dir(items, self.model_path, d)
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": d})
        if not self.llm.reset_prefix_cache():
            log.warning("vLLM did not reset the prefix cache (requests still running?)")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self.llm = None
        import gc

        gc.collect()


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "<X>RotaryEmbedding: Failed to load weights" warning of an in-place reload.

    Rotary embeddings hold a cos/sin cache computed from the config, which no checkpoint
    carries (HF's ``rotary_emb.inv_freq`` is a buffer, not a weight), so vLLM's reload finds
    nothing to load into them on every weight sync and puts the cache back as it was. The same
    warning about any other layer is a real load failure and still shows."""

    LOGGER = "vllm.model_executor.model_loader.reload.layerwise"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "%s: Failed to load weights" and len(args) == 1
                    and isinstance(args[0], str) and args[0].endswith("RotaryEmbedding"))

    @classmethod
    def install(cls) -> None:
        """Add the filter to vLLM's reload logger, once per process (an engine process started
        by spawn, not fork, logs without it)."""
        logger = logging.getLogger(cls.LOGGER)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


def _in_process() -> bool:
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"


def _cpu_items(state_dict: Mapping[str, Any]) -> list[tuple[str, Any]]:
    import torch

    items = []
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        items.append((k, v.detach().to("cpu").contiguous()))
    return items


def _save_hf_dir(items: list[tuple[str, Any]], config_from: str, out: str) -> None:
    """Write ``items`` as an HF checkpoint dir (safetensors + config) vLLM can load."""
    import shutil

    from safetensors.torch import save_file

    # Tied weights share storage; safetensors refuses shared tensors, so clone them.
    save_file({k: v.clone() for k, v in items}, str(Path(out) / "model.safetensors"))
    shutil.copy(Path(config_from) / "config.json", Path(out) / "config.json")
