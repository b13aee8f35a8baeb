"""Cold-start SFT: chat-template data, assistant-only loss, packing, LoRA, and the tiny model kit.

- ``data``: conversations from task sources' worked solutions or JSONL / HF chat datasets;
  ``render`` gives ``input_ids`` and ``labels`` (-100 except on assistant tokens).
- ``packing``: first-fit-decreasing packing with per-example position ids (no cross-attention).
- ``train``: ``SFTConfig`` and ``train(cfg)``, the DeepSpeed trainer (one file, top to bottom).
- ``tiny``: ``build_tiny_model(out_dir, TinyConfig(), corpus)``, a from-scratch model + tokenizer.

Modules here import torch / transformers / deepspeed only inside functions.
"""
