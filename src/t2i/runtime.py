"""Device and process-group setup in one place, so the same code runs alone, on a GPU, or under torchrun.

`torchrun --nproc_per_node K t2i train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; `init()` then joins the group
(NCCL on CUDA, gloo on CPU). Without those variables everything is a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td

from t2i.errors import UserError


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend)


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def world_size() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        td.barrier()


def device() -> torch.device:
    """CUDA (this rank's GPU) when present, else CPU. The only place t2i picks a device."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The autocast context for `precision` on `device`: bf16 where `autocast_dtype` says it pays, else a
    disabled one (fp32)."""
    amp = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where it pays (CPUs with AVX-512 BF16 / AMX, Ampere+ GPUs), else fp32."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise UserError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cap = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if "AVX512" in cap.upper() or "AMX" in cap.upper() else None
