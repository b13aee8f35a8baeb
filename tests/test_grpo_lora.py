"""LoRA for the GRPO learner: config checks and the merge (fast), and one real LoRA run (vLLM on
CPU, DeepSpeed, tiny model) that several checks share: frozen base, reference = initial policy,
merged weights in the sampler, the HF and adapter exports, and resume."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_grpo_train import hf_logprobs, tiny_cfg, write_cfg

from thinkgym.config import ConfigError, load_config
from thinkgym.grpo.train import GRPOConfig, check_config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, msg", [
    ({"lora_r": -4}, r"lora_r must be >= 0"),
    ({"lora_r": 8, "lora_alpha": 0}, r"lora_alpha must be >= 1"),
    ({"lora_r": 8, "lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ({"lora_r": 8, "lora_target_modules": []}, r"lora_target_modules must not be empty"),
    ({"lora_r": 8, "zero_stage": 3}, r"LoRA with ZeRO-3 is not supported"),
])
def test_bad_lora_config_rejected(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(GRPOConfig, write_cfg(tmp_path, model="m", **kw))


def test_lora_defaults_match_sft():
    from thinkgym.sft_coldstart.train import SFTConfig

    g, s = GRPOConfig(), SFTConfig()
    assert (g.lora_r, g.lora_alpha, g.lora_dropout, g.lora_target_modules) == \
        (s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_target_modules) == (0, 16, 0.0, TARGETS)


def test_resume_refuses_another_adapter(tmp_path):
    """The DeepSpeed checkpoint holds the adapter's tensors and their optimizer state: another
    rank or other target modules cannot load it (a bare KeyError deep in DeepSpeed otherwise)."""
    from test_grpo_resume_config import saved_run

    from thinkgym.grpo.checks import check_resume

    def saved(out: Path, **kw) -> GRPOConfig:
        return saved_run(tmp_path, out, **kw)

    full = saved(tmp_path / "full")
    with pytest.raises(ConfigError, match=r"saved with lora_r 0; .*got lora_r 8"):
        check_resume(replace(full, lora_r=8))
    check_resume(replace(full, lora_target_modules=["q_proj"], lora_alpha=32))  # ignored without LoRA
    lora = saved(tmp_path / "lora", lora_r=8)
    with pytest.raises(ConfigError, match=r"saved with lora_r 8.*got lora_r 4"):
        check_resume(replace(lora, lora_r=4))
    with pytest.raises(ConfigError, match=r"got lora_r 8, lora_alpha 16, lora_target_modules \['q_proj'\]"):
        check_resume(replace(lora, lora_target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match=r"got lora_r 0\)"):
        check_resume(replace(lora, lora_r=0))
    with pytest.raises(ConfigError, match=r"saved with lora_r 8, lora_alpha 16.*got lora_r 8, lora_alpha 32"):
        check_resume(replace(lora, lora_alpha=32))  # would rescale the trained adapter
    check_resume(replace(lora, lora_target_modules=list(reversed(TARGETS))))  # the same adapter


# ---------------------------------------------------------------------------------------------
# The merge, on CPU
# ---------------------------------------------------------------------------------------------


def _lora_model(model_dir: Path, **kw):
    """The tiny model with a LoRA adapter whose B is random (a fresh adapter is the identity)."""
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.grpo.lora import add_lora

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = GRPOConfig(model=str(model_dir), lora_r=4, lora_alpha=8, **kw)
    model = add_lora(base, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_adapter_names_a_hub_base_by_its_repo_id(tiny_model_dir, tmp_path):
    """A hub model runs from its HF-cache snapshot; the exported adapter names the repo and commit,
    not that cache path, so it loads on another machine. A local base keeps its path."""
    import shutil

    from thinkgym.grpo.lora import save_adapter
    from thinkgym.hub import hub_id_of

    snap = tmp_path / "hub" / "models--acme--tiny-reasoner" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, snap)
    assert hub_id_of(snap) == "acme/tiny-reasoner" and hub_id_of(tiny_model_dir) is None
    assert hub_id_of(tmp_path / "models--x" / "other" / "abc") is None
    for base, want, rev in ((snap, "acme/tiny-reasoner", "0123abc"), (tiny_model_dir, str(tiny_model_dir), None)):
        out = tmp_path / f"adapter-{rev}"
        save_adapter(_lora_model(base), out)
        conf = json.loads((out / "adapter_config.json").read_text())
        assert (conf["base_model_name_or_path"], conf.get("revision")) == (want, rev)


def test_merged_state_dict_equals_peft_merge_and_unload(tiny_model_dir):
    import torch

    from thinkgym.grpo.lora import adapter_disabled, merged_state_dict

    model = _lora_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = merged_state_dict(model)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    assert not any("lora" in k or "base_layer" in k or k.startswith("base_model") for k in got)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the training model is untouched: still an unmerged adapter over the same weights
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    # the merged weights are the adapted model's function; with the adapter off, the base model's
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        base = plain(input_ids=ids).logits
        plain.load_state_dict(got)
        merged = plain(input_ids=ids).logits
        with adapter_disabled(type("Engine", (), {"module": model})()):
            off = model(input_ids=ids).logits
    assert torch.allclose(merged, adapted, atol=1e-5) and not torch.allclose(merged, base, atol=1e-3)
    assert torch.equal(off, base)


def test_hf_sampler_takes_the_merged_weights(tiny_model_dir):
    """The HF backend's sync refuses names it does not know: the merged dict must pass as is."""
    from thinkgym.grpo.lora import merged_state_dict
    from thinkgym.sampler import make_sampler
    from thinkgym.sampler.types import SamplingConfig

    model = _lora_model(tiny_model_dir)
    sampler = make_sampler("hf", tiny_model_dir, num_threads=1)
    try:
        sampler.update_weights(merged_state_dict(model))
        prompt = [1, 5, 9, 14]
        c = sampler.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=8, seed=0))[0][0]
    finally:
        sampler.close()
    assert max(abs(a - b) for a, b in zip(hf_logprobs(model, prompt, c.token_ids), c.logprobs)) < 1e-4


def test_unknown_target_modules_are_a_config_error_before_the_model_loads(tiny_model_dir, tmp_path):
    msg = r"lora_target_modules \['qproj'\]: .*not found"
    cfg = load_config(GRPOConfig, None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path / "out"),
                                         "sampler_backend": "hf", "lora_r": 4, "lora_target_modules": ["qproj"]})
    with pytest.raises(ConfigError, match=msg):
        check_config(cfg)
    assert check_config(replace(cfg, lora_target_modules=["q_proj"])) > 0
    with pytest.raises(ConfigError, match=msg):  # the same check where the policy is wrapped
        _lora_model(tiny_model_dir, lora_target_modules=["qproj"])


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens"])
def test_an_adapter_on_tied_embeddings_is_refused(tiny_model_dir, target):
    """The tiny model ties lm_head to embed_tokens: an adapter on one side trains that side alone,
    and no merged weights (the sampler's, hf/) can hold both."""
    with pytest.raises(ConfigError, match=rf"{target}'\] share their weight \(tie_word_embeddings\)"):
        _lora_model(tiny_model_dir, lora_target_modules=["q_proj", target])


def test_lora_dropout_is_off_for_the_old_logprobs(tiny_model_dir):
    import torch

    from thinkgym.grpo.lora import lora_dropout_off

    model = _lora_model(tiny_model_dir, lora_dropout=0.5)  # as the learner runs it: eval mode, the adapter's dropout on
    engine = type("Engine", (), {"module": model})()
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2]])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        with lora_dropout_off(engine):
            c, d = model(input_ids=ids).logits, model(input_ids=ids).logits
        e = model(input_ids=ids).logits
    assert not torch.equal(a, b) and torch.equal(c, d) and not torch.equal(c, e)  # back on afterwards


# ---------------------------------------------------------------------------------------------
# One real LoRA run: 2 steps, then a resume to step 3
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """Train 2 LoRA steps (kl_coef > 0, vLLM), resume for a 3rd; per-step checks run in on_step."""
    import torch
    from transformers import AutoModelForCausalLM

    from thinkgym.grpo.forward import policy_forward
    import thinkgym.grpo.train as loop
    from thinkgym.grpo.lora import adapter_disabled, merged_state_dict
    from thinkgym.sampler.types import SamplingConfig

    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = tiny_cfg(tiny_model_dir, out, max_steps=2, save_every=1, lora_r=4, lora_alpha=8, lr=1e-2, tensorboard=False)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 2, 11]])
    seq = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 1:]}
    seen: dict = {"engine": None, "loaded": None, "ref_diff": [], "policy_diff": [], "sync_diff": []}

    def on_step(step, engine, sampler, row):
        seen["engine"] = engine
        with torch.no_grad():
            want = policy_forward(initial, seq, cfg.temperature)[0]
            with adapter_disabled(engine):
                ref = policy_forward(engine, seq, cfg.temperature)[0]
            pol = policy_forward(engine, seq, cfg.temperature)[0]
        seen["ref_diff"].append(float((ref - want).abs().max()))
        seen["policy_diff"].append(float((pol - want).abs().max()))
        # the sampler serves the merged weights: its logprobs equal a plain HF model's on them
        merged = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        merged.load_state_dict(merged_state_dict(engine.module))
        prompt = sampler.tokenizer.apply_chat_template([{"role": "user", "content": "2 + 3 ="}],
                                                       add_generation_prompt=True, tokenize=True, return_dict=False)
        prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
        c = sampler.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=12, seed=0))[0][0]
        seen["sync_diff"].append(max(abs(a - b) for a, b in zip(hf_logprobs(merged, prompt, c.token_ids), c.logprobs)))

    load_engines = loop.load_engines

    def spy_load(ck, engines, c):  # what DeepSpeed restored into the fresh peft wrapper
        load_engines(ck, engines, c)
        seen["loaded"] = {k: v.detach().clone() for k, v in engines["policy"].module.state_dict().items()}

    first = loop.train(cfg, on_step=on_step)
    step2 = {k: v.detach().clone() for k, v in seen["engine"].module.state_dict().items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "load_engines", spy_load)
        resumed = loop.train(replace(cfg, max_steps=3), resume=True, on_step=on_step)
    return {"cfg": cfg, "out": out, "first": first, "resumed": resumed, "step2": step2, **seen}


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_run_trains_the_adapter_only(lora_run, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    first = lora_run["first"]
    assert first["stopped"] == "max_steps" and [r["step"] for r in first["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in first["history"])
    assert first["history"][-1]["kl"] > 0  # the reference (adapter off) and the policy differ
    model = lora_run["engine"].module
    base = load_file(tiny_model_dir / "model.safetensors")
    inner = {k.replace(".base_layer.", "."): v for k, v in model.get_base_model().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(inner[k], base[k]) for k in base)  # the base weights never moved
    lora_b = [v for k, v in model.named_parameters() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # the adapter did (B starts at 0)
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    opt = lora_run["engine"].optimizer
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) < sum(v.numel() for v in base.values()) / 5


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_reference_is_the_initial_policy_and_the_sampler_serves_merged_weights(lora_run):
    # 3 steps: 2, then 1 resumed
    assert lora_run["ref_diff"] == [0.0, 0.0, 0.0], lora_run["ref_diff"]
    assert all(d > 1e-4 for d in lora_run["policy_diff"]), lora_run["policy_diff"]
    assert len(lora_run["sync_diff"]) == 3 and all(d < 2e-3 for d in lora_run["sync_diff"]), lora_run["sync_diff"]


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_checkpoint_is_a_merged_hf_model_plus_the_adapter(lora_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ck = lora_run["out"] / "checkpoints" / "step_000003"
    hf, base = load_file(ck / "hf" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    # the base model's names only (no lora_A / lora_B / base_layer / base_model.model.); the tied
    # lm_head is written out, as a full fine-tuning export does
    assert base.keys() <= hf.keys() and hf.keys() - base.keys() <= {"lm_head.weight"}
    changed = [k for k in base if not torch.equal(base[k], hf[k])]
    assert changed and all(any(t in k for t in TARGETS) for k in changed)
    model = AutoModelForCausalLM.from_pretrained(ck / "hf")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in hf.items())
    # the DeepSpeed checkpoint holds the adapter alone: the frozen base is the model's, and hf/ its merge
    states = torch.load(ck / "ds" / "policy" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    frozen = {k for k in states["module"] if "lora_" not in k}
    assert len(states["module"]) > len(frozen) and frozen <= {"base_model.model.lm_head.weight"}, frozen  # DeepSpeed keeps a tied head
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ck / "adapter")
    assert adapted.peft_config["default"].r == 4
    for k, v in adapted.merge_and_unload().state_dict().items():
        assert torch.allclose(v, hf[k], atol=1e-6), k


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_resume_continues_from_the_saved_adapter(lora_run):
    import torch
    from safetensors.torch import load_file

    resumed, out = lora_run["resumed"], lora_run["out"]
    assert resumed["stopped"] == "max_steps" and [r["step"] for r in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == lora_run["first"]["history"]
    # DeepSpeed restored step 2's adapter (and the untouched base) into the fresh peft wrapper
    loaded, step2 = lora_run["loaded"], lora_run["step2"]
    assert loaded.keys() == step2.keys() and all(torch.equal(loaded[k], step2[k]) for k in step2)
    hf2 = load_file(out / "checkpoints" / "step_000002" / "hf" / "model.safetensors")
    hf3 = load_file(out / "checkpoints" / "step_000003" / "hf" / "model.safetensors")
    assert any(not torch.equal(hf2[k], hf3[k]) for k in hf2)
    with pytest.raises(ConfigError, match="saved with lora_r 4"):
        check_config(replace(lora_run["cfg"], lora_r=8), resume=True)


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_resume_on_another_base_is_refused(lora_run, tiny_model_dir, tmp_path):
    """The checkpoint does not hold the base: resumed on other base weights, the adapter would
    train on a model it was never fitted to."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import thinkgym.grpo.train as loop

    out = tmp_path / "run"
    shutil.copytree(lora_run["out"], out)
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    w = load_file(other / "model.safetensors")
    key = next(k for k in w if "q_proj.weight" in k)
    w[key] = w[key] + 0.01 * torch.ones_like(w[key])
    save_file(w, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=rf"{key} differs from the one this adapter was trained on"):
        loop.train(replace(lora_run["cfg"], model=str(other), output_dir=str(out), max_steps=4,
                           resume_allow_changes=["model"]), resume=True)
