"""Process-group setup shared by the SFT trainer and the RL learner.

A single process needs the rendezvous variables a launcher would set; they are filled in here.
After this, DeepSpeed engines are built with ``dist_init_required=False``: the process group is
ours, so DeepSpeed never falls back to MPI discovery when a variable is missing.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


def _held_open(path: str) -> bool | None:
    """Whether a live process holds ``path`` open; None where ``/proc`` cannot tell."""
    if not os.path.isdir("/proc"):
        return None
    target, unsure = os.path.realpath(path), False
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:  # another user's process
            unsure = True
            continue
        except OSError:  # exited meanwhile
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    return True
            except OSError:
                continue
    return None if unsure else False


def clear_stale_build_locks() -> list[str]:
    """Remove the ``lock`` files of torch extension builds that died midway; returns them.

    DeepSpeed compiles its CPU ops (the shared-memory all-reduce) on first use, under a lock
    file that the building process holds open. A build killed midway (Ctrl-C during the first
    run's compile) leaves the file behind, and every later run waits on it forever without a
    word. A lock no live process holds is removed; one this process cannot check is reported.
    """
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    removed = []
    for lock in glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock")):
        held = _held_open(lock)
        if held is False:
            try:
                os.remove(lock)
            except FileNotFoundError:  # the build finished meanwhile
                continue
            log.warning("removed a stale torch extension build lock no process holds: %s", lock)
            removed.append(lock)
        elif held is None:
            log.warning("torch extension build lock %s exists; if no build is running, delete it "
                        "(a build killed midway leaves it, and later builds wait on it forever)", lock)
    return removed


def setup_distributed() -> tuple[int, int, Any]:
    """Init torch.distributed (gloo on CPU, nccl on GPU) once; returns (rank, world, device)."""
    import deepspeed
    import torch

    clear_stale_build_locks()  # DeepSpeed's op build below would otherwise wait on one forever
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
