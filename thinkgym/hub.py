"""A model reference, a local HF model directory or a hub repo id, resolved to a local directory.

Every entry point that takes ``model`` (SFT, GRPO, eval, the samplers) accepts both, as
``from_pretrained`` does. A hub id is fetched once into the HF cache (``HF_HOME`` /
``HF_HUB_CACHE``) and the learner, vLLM and the weight sync then work on that snapshot
directory, the same code path as a local model. With ``HF_HUB_OFFLINE=1`` only the cache is read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A hub repo id: [ORG/]NAME (letters, digits, "-", "_", "."; "gpt2" has no org), not a filesystem path.
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")

#: Files a model needs: weights (safetensors), config, tokenizer, chat template. Other weight
#: formats a repo may also carry (``*.bin``, GGUF, ONNX) are fetched only when it has no safetensors.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


class ModelNotFound(FileNotFoundError):
    """``model`` is neither an HF model directory nor a hub repo id that resolves."""


def hf_offline() -> bool:
    """Whether HF offline mode is on (the variables huggingface_hub and transformers read)."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def local_model_dir(model: str) -> Path | None:
    """``model`` as a local HF model directory; None when it reads as a hub repo id.

    Raises :class:`ModelNotFound` for a directory without ``config.json`` and for a path that is
    neither (``runs/sft/fnal`` looks like ``ORG/NAME``, but ``runs/`` is a local folder: offline,
    asking the hub would cost a minute of retries).
    """
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"{model!r} is a directory without config.json, not an HF model directory")
        return p
    first = model.split("/", 1)[0]
    if not p.exists() and "/" in model and first and Path(first).expanduser().is_dir():
        raise ModelNotFound(f"{model!r} is not an HF model directory ({model!r}: no such directory; "
                            f"and not a hub id: {first}/ is a local folder)")
    if p.exists() or not HUB_ID.fullmatch(model):
        raise ModelNotFound(f"{model!r} is not an HF model directory (no such directory) or a hub id ([ORG/]NAME)")
    return None


def check_model(model: str) -> None:
    """Raise :class:`ModelNotFound` unless ``model`` is a local HF model directory or a hub id,
    without downloading anything: a config check. In offline mode a hub id must be in the cache."""
    if not isinstance(model, str) or not model:
        raise ModelNotFound(f"model must be a directory or a hub id, got {model!r}")
    if local_model_dir(model) is None and hf_offline():
        resolve_model(model)


def hub_id_of(path: str | Path) -> str | None:
    """The hub repo id whose HF-cache snapshot ``path`` is (``.../models--ORG--NAME/snapshots/<rev>``
    gives ``ORG/NAME``); None for any other directory. Exports name their base model by it, so they
    do not point into one machine's cache."""
    p = Path(path)
    repo = p.parent.parent.name
    if p.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    name = repo[len("models--"):].replace("--", "/")
    return name if HUB_ID.fullmatch(name) else None


def resolve_model(model: str, revision: str | None = None) -> str:
    """A local directory holding ``model``: the directory itself, or the HF-cache snapshot of hub
    repo ``model`` (downloaded first unless offline mode is on). Raises :class:`ModelNotFound`
    with a one-line reason."""
    if not isinstance(model, str) or not model:
        raise ModelNotFound(f"model must be a directory or a hub id, got {model!r}")
    local = local_model_dir(model)
    if local is not None:
        return str(local)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model, revision=revision, allow_patterns=MODEL_FILES))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(model, revision=revision, allow_patterns=[*MODEL_FILES, "*.bin"]))
    except LocalEntryNotFoundError:
        why = ("HF offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)" if hf_offline()
               else "the hub cannot be reached")
        raise ModelNotFound(f"{model!r} is not a local directory, and {why} while it is not in the local HF cache") from None
    except (HfHubHTTPError, OSError, ValueError) as e:  # no such repo, gated, a bad revision
        raise ModelNotFound(f"{model!r}: cannot fetch it from the hub: {' '.join(str(e).split())[:300]}") from None
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{model!r}: the hub snapshot {path} has no config.json (not a transformers model)")
    return str(path)
