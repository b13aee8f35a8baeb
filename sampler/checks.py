"""Checks on a sampler's settings, made before anything heavy loads (a policy, DeepSpeed, vLLM).

``make_sampler(backend, model, **kwargs)`` fails on a bad keyword only when it builds the
sampler; an entry point calls :func:`check_sampler` first, so a typo costs no model load.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from typing import Any

from thinkgym.config import ConfigError

_SAMPLER_CLASSES = {
    "vllm": ("thinkgym.sampler.vllm_backend", "VLLMSampler"),
    "hf": ("thinkgym.sampler.hf_backend", "HFSampler"),
    "vllm-server": ("thinkgym.sampler.server", "VLLMServerSampler"),
}


def sampler_kwarg_names(backend: str) -> set[str]:
    """The keys ``sampler_kwargs`` may hold for ``backend``, read from the sampler's signature
    (the sampler modules import nothing heavy at module level)."""
    module, name = _SAMPLER_CLASSES[backend]
    params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters.values())
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if backend == "vllm-server":
        # make_sampler takes base_url (and model) from the kwargs and passes the model dir itself.
        return set(named) - {"tokenizer_path"}
    return set(named[1:])  # the first argument is the model dir, which make_sampler passes


def _vllm_engine_arg_names() -> set[str]:
    """Keywords ``vllm.LLM`` accepts: its own arguments and every ``EngineArgs`` field (its
    ``**kwargs`` go there). Importing vLLM takes seconds, so only asked for unusual keys."""
    import dataclasses

    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    own = {p.name for p in inspect.signature(LLM.__init__).parameters.values()
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return (own | {f.name for f in dataclasses.fields(EngineArgs)}) - {"self", "model"}


def check_sampler(backend: str, kwargs: dict[str, Any]) -> None:
    """``make_sampler(backend, model, **kwargs)`` would accept these kwargs: checked without
    building the sampler, which only happens after the policy and DeepSpeed are up."""
    import difflib

    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("sampler_backend: 'vllm' needs the vllm package (pip install 'thinkgym[vllm]'), "
                          "or use sampler_backend: hf")
    bad = [k for k in kwargs if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"sampler_kwargs: keys must be strings, got {bad!r}")
    for k, v in kwargs.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"sampler_kwargs.{k} must be a finite number, got {v}")
    known = sampler_kwarg_names(backend)
    unknown = [k for k in kwargs if k not in known]
    if unknown and backend == "vllm":  # VLLMSampler passes further keywords on to vllm.LLM
        known |= _vllm_engine_arg_names()
        unknown = [k for k in unknown if k not in known]
    if unknown:
        def guess(k: str) -> list[str]:  # vLLM's names are long: a prefix ("gpu_mem") counts too
            return difflib.get_close_matches(k, known, 1) or sorted(n for n in known if n.startswith(k))[:1]

        hint = "; ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := guess(k)) else "") for k in unknown)
        raise ConfigError(f"sampler_kwargs: unknown key(s) for sampler_backend {backend!r}: {hint}")
    if backend == "vllm-server":
        url = kwargs.get("base_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError("sampler_backend 'vllm-server' needs sampler_kwargs.base_url, the server's URL "
                              f"(e.g. http://127.0.0.1:8000), got {url!r}")
