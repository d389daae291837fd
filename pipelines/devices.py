"""Device and dtype selection: `--device auto|cpu|cuda[:N]|mps`, `--dtype auto|fp32|bf16|fp16`.

No silent fallback: asking for a device that is not there is an error (DESIGN §1).
"""

from __future__ import annotations

import os

import torch

from pipelines.errors import DeviceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"no": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # accelerate's names


def launcher_local_rank() -> int | None:
    """This process's rank on its machine under a multi-process launcher (``LOCAL_RANK``), else None."""
    rank = os.environ.get("LOCAL_RANK")
    return int(rank) if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a `--device` value into a `torch.device`, checking that it exists.

    ``cuda`` (and ``auto`` on a CUDA machine) is the process's own GPU under a launcher (``LOCAL_RANK``;
    GPU 0 when the launcher shows each process one GPU), else GPU 0.
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return resolve_device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("`device` mps was asked for but MPS is not available here; use `device` cpu or auto.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"`device` {name} was asked for but CUDA is not available here; use `device` cpu or auto."
            )
        index = _local_gpu() if name == "cuda" else _parse_index(name)
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"`device` {name}: only {torch.cuda.device_count()} CUDA device(s) here; pick an index below that."
            )
        return torch.device("cuda", index)
    raise DeviceError(f"unknown `device` {name!r}; use auto, cpu, cuda, cuda:N or mps.")


def _local_gpu() -> int:
    """The GPU of this process: its local rank under a launcher (or 0 when it sees one GPU only), else 0."""
    local_rank = launcher_local_rank()
    if local_rank is None or torch.cuda.device_count() == 1:
        return 0
    return local_rank


def _parse_index(name: str) -> int:
    try:
        return int(name.split(":", 1)[1])
    except ValueError:
        raise DeviceError(f"`device` {name!r} has no valid index; write it as cuda:0, cuda:1, …") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a `--dtype` value into a `torch.dtype` usable on `device`; ``auto`` is bf16 on a GPU that runs it,
    else fp32."""
    key = name.strip().lower()
    if key == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else torch.float32
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise DeviceError(f"unknown `dtype` {name!r}; use auto or one of {', '.join(DTYPES)}.")
    dtype = DTYPES[key]
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("`dtype` fp16 is not supported on CPU; use fp32 or bf16.")
    return dtype


def enable_tf32(device: torch.device) -> bool:
    """Let float32 matmuls and convolutions use TF32 tensor cores on an Ampere-or-newer CUDA GPU.

    TF32 keeps fp32's range with a 10-bit mantissa in the multiply (NVIDIA's "TF32 Tensor Cores";
    PyTorch's default since 1.12 is off for matmuls). Returns whether it was turned on; a no-op on
    CPU, MPS and older GPUs.
    """
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` (CPU: yes; CUDA: Ampere or newer; MPS: no)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported()
