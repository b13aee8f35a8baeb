"""Process-group setup shared by the SFT trainer and the RL learner.

A single process needs the rendezvous variables a launcher would set; they are filled in here.
After this, DeepSpeed engines are built with ``dist_init_required=False``: the process group is
ours, so DeepSpeed never falls back to MPI discovery when a variable is missing.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def setup_distributed() -> tuple[int, int, Any]:
    """Init torch.distributed (gloo on CPU, nccl on GPU) once; returns (rank, world, device)."""
    import deepspeed
    import torch

    for k, v in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not torch.distributed.is_initialized():
        own_port = "MASTER_PORT" not in os.environ
        if own_port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        # An earlier run in this process (e.g. vLLM's teardown) may have destroyed the process
        # group behind DeepSpeed's back; drop DeepSpeed's cached groups before starting anew.
        from deepspeed.utils import groups

        getattr(groups, "_release_process_group_references", lambda *_: None)(None)
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
        if own_port:  # our store holds that port: child processes must not inherit it
            os.environ.pop("MASTER_PORT", None)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device
