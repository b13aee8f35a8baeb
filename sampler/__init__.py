"""Rollouts: vLLM and HF samplers, rollout collection over envs, and eval.

Importing this package is light (no torch, no vLLM); backends load their engines when built::

    from thinkgym.sampler import SamplingConfig, make_sampler
    sampler = make_sampler("vllm", "path/to/hf-model")
    groups = sampler.generate([prompt_ids], SamplingConfig(n=8, max_tokens=256))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinkgym.sampler.types import Completion, Sampler, SamplingConfig

BACKENDS = ("vllm", "vllm-server", "hf")

__all__ = ["BACKENDS", "Completion", "Sampler", "SamplingConfig", "make_sampler"]


def make_sampler(backend: str, model_path: str | Path | Any, **kw: Any) -> Sampler:
    """Build a sampler: ``"vllm"`` (in-process engine), ``"vllm-server"`` or ``"hf"``.

    For ``vllm-server``, ``model_path`` is the tokenizer / model dir and ``base_url`` is
    required in ``kw``.
    """
    if backend == "vllm":
        from thinkgym.sampler.vllm_backend import VLLMSampler

        return VLLMSampler(model_path, **kw)
    if backend == "hf":
        from thinkgym.sampler.hf_backend import HFSampler

        return HFSampler(model_path, **kw)
    if backend == "vllm-server":
        from thinkgym.sampler.server import VLLMServerSampler

        if "base_url" not in kw:
            raise ValueError("backend 'vllm-server' needs base_url=... (e.g. http://127.0.0.1:8000)")
        base_url = kw.pop("base_url")
        return VLLMServerSampler(base_url, model=kw.pop("model", None), tokenizer_path=model_path, **kw)
    raise ValueError(f"unknown sampler backend {backend!r}; choose one of {list(BACKENDS)}")


def __getattr__(name: str) -> Any:
    # Lazy access to the heavy classes: `from thinkgym.sampler import VLLMSampler`.
    lazy = {
        "VLLMSampler": "thinkgym.sampler.vllm_backend",
        "HFSampler": "thinkgym.sampler.hf_backend",
        "VLLMServerSampler": "thinkgym.sampler.server",
        "collect_rollouts": "thinkgym.sampler.rollout",
        "Episode": "thinkgym.sampler.rollout",
        "EpisodeBatch": "thinkgym.sampler.rollout",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'thinkgym.sampler' has no attribute {name!r}")
