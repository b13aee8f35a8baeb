"""HF ``transformers`` sampler: the fallback backend (no vLLM needed).

A batched decode loop with a KV cache over left-padded prompts; rows that finish leave the batch
and the cache. Each request has its own ``torch.Generator`` (on the model's device) seeded from
the request seed, and sampling is one batched exponential race over per-row noise, so a
completion depends only on its prompt, seed and the weights, not on what else is in the batch. Logprobs follow vLLM's
``processed_logprobs``: ``log_softmax`` of the temperature-scaled, top-k/top-p-filtered logits.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from thinkgym.sampler.base import BaseSampler, RawSample, SampleRequest, check_weights, load_checkpoint
from thinkgym.sampler.types import SamplingConfig


class HFSampler(BaseSampler):
    """Sample with a ``transformers`` causal LM (a path or an already-built model)."""

    backend = "hf"

    def __init__(
        self,
        model_path_or_model: Any,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 64,
        num_threads: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        import torch

        if not isinstance(max_batch_size, int) or isinstance(max_batch_size, bool) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 2):
            raise ValueError(f"max_model_len must be None or an integer >= 2, got {max_model_len!r}")

        if num_threads is not None:
            torch.set_num_threads(num_threads)  # process-wide; 1 is fastest for tiny models on CPU
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model_path_or_model, (str, Path)):
            from thinkgym.hub import resolve_model

            path = Path(resolve_model(str(model_path_or_model)))  # a directory or a hub id
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(path))
        else:
            if tokenizer is None:
                raise ValueError("HFSampler(model, tokenizer): a tokenizer is required with a model object")
            self.model = model_path_or_model
            self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.max_batch_size = max_batch_size
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        # The same context window as vLLM's default (the model's own), so both backends stop a
        # completion at the same length and refuse the same prompts.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_model_len: int | None = max_model_len or limit
        if max_model_len is not None and limit and max_model_len > limit:
            raise ValueError(f"max_model_len={max_model_len} exceeds the model's max_position_embeddings={limit}")

    @property
    def vocab_size(self) -> int | None:
        return max(len(self.tokenizer), self.model.config.vocab_size)

    def _sample(self, requests: list[SampleRequest], cfg: SamplingConfig) -> list[RawSample]:
        out: list[RawSample] = []
        for s in range(0, len(requests), self.max_batch_size):
            out += self._sample_batch(requests[s : s + self.max_batch_size], cfg)
        return out

    def _sample_batch(self, reqs: list[SampleRequest], cfg: SamplingConfig) -> list[RawSample]:
        import torch

        if self.max_model_len is not None:
            # Leave room in the context window instead of running past it (as vLLM does).
            reqs = [replace(r, max_tokens=min(r.max_tokens, self.max_model_len - len(r.prompt_ids))) for r in reqs]
        B = len(reqs)
        dev = self.device
        L = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, r in enumerate(reqs):
            ids[b, L - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[b, L - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = []
        for r in reqs:
            g = torch.Generator(device=dev)
            g.manual_seed(r.seed if r.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
            gens.append(g)
        toks: list[list[int]] = [[] for _ in reqs]
        lps: list[list[float]] = [[] for _ in reqs]
        finish: list[str | None] = [None] * B
        rows = list(range(B))  # request index of each row still decoding
        stop_tail = max((len(s) for r in reqs for s in r.stop), default=0) + 8
        with torch.no_grad():
            o = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            past, logits = o.past_key_values, o.logits[:, -1, :]
            drop_rows = _plain_kv_cache(past)
            for _step in range(max(r.max_tokens for r in reqs)):
                nxt, lp = _pick(logits.float(), cfg, [gens[b] for b in rows])  # (n,) each, on dev
                keep = []
                for i, (b, tok, tlp) in enumerate(zip(rows, nxt.tolist(), lp.tolist())):
                    if finish[b] is not None:  # only where the cache cannot drop finished rows
                        continue
                    toks[b].append(tok)
                    lps[b].append(tlp)
                    if tok in self.eos_ids:
                        finish[b] = "stop"
                    elif reqs[b].stop and any(s in self.tokenizer.decode(toks[b][-stop_tail:]) for s in reqs[b].stop):
                        finish[b] = "stop"
                    elif len(toks[b]) >= reqs[b].max_tokens:
                        finish[b] = "length"
                    else:
                        keep.append(i)
                if not keep:
                    break
                if len(keep) < len(rows) and drop_rows:
                    # Finished rows leave the batch (and the KV cache): no compute on padding.
                    sel = torch.tensor(keep, device=dev)
                    past.batch_select_indices(sel)
                    mask, pos, nxt = mask[sel], pos[sel], nxt[sel]
                    rows = [rows[i] for i in keep]
                alive = torch.tensor([finish[b] is None for b in rows], dtype=torch.long, device=dev)
                mask = torch.cat([mask, alive[:, None]], dim=1)
                pos = pos[:, -1:] + 1
                o = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                               past_key_values=past, use_cache=True)
                past, logits = o.past_key_values, o.logits[:, -1, :]
        return [RawSample(t, lp, f or "length") for t, lp, f in zip(toks, lps, finish)]

    def update_weights(self, weights: Mapping[str, Any] | str | Path) -> None:
        """Load a state dict (HF names) or an HF checkpoint dir into the model.

        Weights that do not fit the model (a missing or unknown name, a wrong shape) are refused
        before any is loaded (:class:`~thinkgym.sampler.base.WeightsMismatch`, a KeyError):
        ``load_state_dict`` copies every tensor that fits before it reports the rest, which left
        a refused update half applied."""
        if isinstance(weights, (str, Path)):
            sd = load_checkpoint(weights)
        elif isinstance(weights, Mapping):
            sd = dict(weights)
        else:
            raise TypeError(f"update_weights takes a state dict or a checkpoint dir, got {type(weights).__name__}")
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        check_weights(sd, {k: tuple(v.shape) for k, v in self.model.state_dict().items()}, tied)
        self.model.load_state_dict(sd, strict=False)

    def close(self) -> None:
        self.model = None


def _plain_kv_cache(cache: Any) -> bool:
    """Whether finished rows can be cut from ``cache``: only when every layer holds just keys and
    values (a linear-attention or quantized layer keeps other per-row state)."""
    try:
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    except ImportError:
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _pick(logits: Any, cfg: SamplingConfig, gens: list[Any]) -> tuple[Any, Any]:
    """Sample one token per row of ``logits`` (n, V), row ``i`` with ``gens[i]``; return the tokens
    and their processed logprobs, (n,) each, on the logits' device."""
    import torch

    if cfg.greedy:
        t = torch.argmax(logits, -1)
        return t, torch.log_softmax(logits, -1).gather(1, t[:, None])[:, 0]
    x = logits / cfg.temperature
    if cfg.top_k and cfg.top_k > 0:
        kth = torch.topk(x, min(cfg.top_k, x.shape[-1]), dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sx, si = torch.sort(x, dim=-1, descending=True)
        p = torch.softmax(sx, -1)
        drop = p.cumsum(-1) - p > cfg.top_p  # keep the token that crosses top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(1, si, drop), float("-inf"))
    lp = torch.log_softmax(x, -1)
    # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) picks token i with probability p_i, and
    # each row's noise comes from its own generator (a row's tokens do not depend on its batch).
    q = torch.stack([torch.empty(x.shape[-1], device=x.device).exponential_(generator=g) for g in gens])
    t = torch.argmax(lp.exp() / q, -1)
    return t, lp.gather(1, t[:, None])[:, 0]
