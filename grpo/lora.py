"""LoRA for the learner's policy (``lora_r > 0``): wrap it, compute the merged weights that the
sampler and the HF export take, and run the frozen base as the KL reference.

The adapter is the only part that trains. The sampler (vLLM, HF) and ``checkpoints/step_N/hf``
get plain weights under the base model's names with ``W + scale * B @ A`` folded in, so nothing
downstream knows about peft; the training model itself is never merged, so its adapter keeps
training. The critic (``advantage: gae``) stays fully fine-tuned.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager, Iterator

from thinkgym.config import ConfigError


def is_peft(module: Any) -> bool:
    """Whether ``module`` is a peft-wrapped model (full fine-tuning never pays for importing peft)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(module, peft.PeftModel)


def add_lora(model: Any, cfg: Any) -> Any:
    """``model`` wrapped with a LoRA adapter (``cfg.lora_*``); only the adapter requires grad."""
    from peft import LoraConfig, get_peft_model

    try:
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    except ValueError as e:  # peft: no module of the model matches the names
        raise ConfigError(f"lora_target_modules {cfg.lora_target_modules}: {e}") from None
    inner = model.get_base_model()
    if getattr(inner.config, "tie_word_embeddings", False):
        # One tensor serves as both: an adapter on one side would change only that side in
        # training, while the merged weights the sampler and hf/ get can hold only one of them.
        tied = {inner.get_input_embeddings(), inner.get_output_embeddings()}
        hit = sorted(n for n, m in inner.named_modules() if m in tied and hasattr(m, "lora_A"))
        if hit:
            raise ConfigError(f"lora_target_modules: {hit} share their weight (tie_word_embeddings); "
                              "leave them out, or untie the model's embeddings first")
    # The policy runs in eval mode (its logprobs must match the sampler's), which would silence
    # lora_dropout without a word: only the adapter's dropout is switched on.
    import torch

    for name, m in model.named_modules():
        if ".lora_dropout." in name and isinstance(m, torch.nn.Dropout):
            m.training = True
    return model


def check_targets(cfg: Any) -> None:
    """``lora_target_modules`` that match no module of ``cfg.model``: a ConfigError before any
    weights load (the model is built on the meta device, from its config alone). A hub id not yet
    downloaded, or a config that does not build here, is left to the same check in ``add_lora``."""
    from thinkgym.hub import local_model_dir

    path = local_model_dir(cfg.model)  # check_model has vetted it; a config check downloads nothing
    if path is None:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError, KeyError):
        return
    add_lora(model, cfg)


def merged_state_dict(model: Any) -> dict[str, Any]:
    """Plain HF weights of a peft ``model`` with its active adapter merged in (detached CPU
    copies; the model is left as it is): the base model's names, no ``lora_*`` keys."""
    import torch
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    adapter = model.active_adapter
    layers = {f"{name}.weight": m for name, m in inner.named_modules()
              if isinstance(m, LoraLayer) and adapter in m.scaling and not m.merged}
    out = {}
    with torch.no_grad():
        for key, v in inner.state_dict().items():
            if ".lora_" in key:
                continue
            key = key.replace(".base_layer.", ".")
            if key in layers:  # one delta at a time: all of them at once would be a second copy of the targets
                v = (v.float() + layers[key].get_delta_weight(adapter).float()).to(v.dtype)  # one rounding
            out[key] = v.detach().to("cpu", copy=True)
    return out


def adapter_disabled(engine: Any) -> ContextManager[Any]:
    """Run ``engine`` as its base model: with LoRA that is the initial policy (the KL reference,
    without a second copy of the weights); without LoRA, the engine as it is."""
    module = engine.module
    return module.disable_adapter() if is_peft(module) else nullcontext()


def lora_dropout_off(engine: Any) -> ContextManager[Any]:
    """The adapter's dropout off, for the no-grad forwards whose logprobs stand for the policy
    (the "old" logprobs of several updates a batch): dropout noise there would read as a policy
    ratio away from 1 before any update."""
    import torch

    drops = [m for n, m in engine.module.named_modules() if ".lora_dropout." in n and isinstance(m, torch.nn.Dropout)]

    @contextmanager
    def off() -> Iterator[None]:
        for m in drops:
            m.training = False
        try:
            yield
        finally:
            for m in drops:
                m.training = True

    return off()


def check_resumed_base(model: Any, hf_dir: Any) -> None:
    """A resumed LoRA policy must sit on the base it was trained on: the DeepSpeed checkpoint holds
    the adapter alone (the base comes from ``model`` again), so a different base (another
    ``model``, or its files changed since) shows as merged weights that differ from the
    checkpoint's ``hf/`` export."""
    import torch
    from safetensors import safe_open

    merged = merged_state_dict(model)
    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k in merged and not torch.allclose(merged[k].float(), st.get_tensor(k).float(), rtol=1e-5, atol=1e-6):
                    raise ConfigError(f"--resume: the base model's {k} differs from the one this adapter was "
                                      f"trained on ({hf_dir} holds their merge); resume with the same model")


def save_adapter(model: Any, path: Any) -> None:
    """The adapter alone (``adapter_config.json`` + weights), loadable with ``PeftModel.from_pretrained``.

    A base model resolved from the hub is recorded by its repo id, not its HF-cache path, so the
    adapter loads on another machine."""
    from thinkgym.hub import hub_id_of

    model.save_pretrained(path, safe_serialization=True)
    f = Path(path) / "adapter_config.json"
    conf = json.loads(f.read_text())
    conf_base = conf.get("base_model_name_or_path") or ""
    repo = hub_id_of(conf_base)
    if repo is not None:
        conf["base_model_name_or_path"] = repo
        conf["revision"] = conf.get("revision") or Path(conf_base).name  # the snapshot's commit
        f.write_text(json.dumps(conf, indent=2, sort_keys=True))
