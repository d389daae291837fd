"""Device and dtype selection: `--device auto|cpu|cuda[:N]|mps`, `--dtype fp32|bf16|fp16`.

No silent fallback: asking for a device that is not there is an error (SPEC §1).
"""

from __future__ import annotations

import torch

from pipelines.errors import DeviceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a `--device` value into a `torch.device`, checking that it exists."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("--device mps was asked for but MPS is not available here; use --device cpu or auto.")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto."
            )
        index = 0 if name == "cuda" else _parse_index(name)
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here; pick an index below that."
            )
        return torch.device("cuda", index)
    raise DeviceError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps.")


def _parse_index(name: str) -> int:
    try:
        return int(name.split(":", 1)[1])
    except ValueError:
        raise DeviceError(f"--device {name!r} has no valid index; write it as cuda:0, cuda:1, …") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a `--dtype` value into a `torch.dtype` usable on `device`."""
    key = name.strip().lower()
    if key not in DTYPES:
        raise DeviceError(f"unknown --dtype {name!r}; use one of {', '.join(DTYPES)}.")
    dtype = DTYPES[key]
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("--dtype fp16 is not supported on CPU; use fp32 or bf16.")
    return dtype
