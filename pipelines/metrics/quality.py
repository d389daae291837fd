"""Image quality measurements shared by curation (`filters.image_quality`) and `fada eval`: BRISQUE, a
learned IQA read from a local cache, sharpness, PIQE, full-reference scores.

- BRISQUE: `pipelines.metrics.brisque` (OpenCV-contrib's BRISQUE with its LIVE model, shipped with
  fada) at the frames' own size, lower is better; named `BRISQUE` as an ``iqa_metric``. `fada eval`
  scores every `FRAME_STEP`-th frame, curation at most `filters.image_quality.BRISQUE_FRAMES` of them.
- learned IQA (`learned_iqa_problem`, `pyiqa_score`): ``qalign`` (Q-Align, the paper's IQA, 1–5,
  higher is better) runs only when its weights (`QALIGN_REPO`) are in the Hugging Face cache; any
  other pyiqa metric only when its weight file is in pyiqa's cache (``$TORCH_HOME/hub/pyiqa``).
  Otherwise the reason why not — nothing is ever downloaded.
- ``sharpness``: always; the median over frames of the variance of the Laplacian of the grey
  image (Pech-Pacheco et al., ICPR 2000), on a 0–255 scale, measured after a 3×3 median filter so
  that pixel noise is not read as detail.
- ``weight_free_iqa``: a pyiqa no-reference metric whose parameters ship in the installed package
  (`WEIGHT_FREE_IQA`): nothing to download, so it always runs (`fada eval`'s PIQE row).
- ``full_reference``: PSNR and SSIM through pyiqa (no weights); LPIPS only where its two weight
  files are already local (`lpips_weights_problem`).

pyiqa is licensed PolyForm Noncommercial 1.0.0; BRISQUE and sharpness do not use it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

FRAME_STEP = 5  # score every n-th frame
BRISQUE = "brisque"  # the default `iqa_metric` of curation and `fada eval`'s `iqa` row (no pyiqa, no weights)
# Q-Align (Wu et al., ICML 2024): pyiqa's `qalign` loads this Hugging Face model (≈ 8 B parameters,
# fp16); the 8/4-bit variants load the same weights quantised (bitsandbytes, CUDA only).
QALIGN_METRICS = ("qalign", "qalign_8bit", "qalign_4bit")
QALIGN_REPO = "q-future/one-align"
# pyiqa 0.1.16's no-reference metrics that need no downloaded file. PIQE (Venkatanath et al., NCC
# 2015) is block statistics only; NIQE, ILNIQE and BRISQUE need a .mat/.pth from the network, and
# `entropy` measures information, not quality (noise raises it).
WEIGHT_FREE_IQA = ("piqe",)
LPIPS_FILES = ("LPIPS_v0.1_alex-df73285e.pth", "alexnet-owt-7be5be79.pth")  # pyiqa cache, torch hub checkpoints


def laplacian_sharpness(frames: np.ndarray) -> float:
    """Median variance of the Laplacian of the grey frames (higher = sharper).

    A 3×3 median filter runs first: it keeps edges but removes pixel noise, which the Laplacian
    would otherwise count as fine detail (a noisy soft clip would outscore a clean sharp one).
    """
    grey = (cv2.medianBlur(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), 3) for f in frames)
    return float(np.median([cv2.Laplacian(g, cv2.CV_64F).var() for g in grey]))


def pyiqa_cache_dir() -> Path:
    """``$TORCH_HOME/hub/pyiqa``, found as `torch.hub.get_dir` finds it, without importing torch."""
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "pyiqa"
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "pyiqa"


@functools.lru_cache(maxsize=4)
def pyiqa_weights_problem(metric: str) -> str | None:
    """Why the pyiqa metric cannot run offline (None when its weight file is in the local cache).

    An empty or missing cache folder answers at once: importing pyiqa to learn the file's name
    costs about 5 CPU seconds per worker process.
    """
    folder = pyiqa_cache_dir()
    if not folder.is_dir() or not any(p.is_file() for p in folder.iterdir()):
        return f"weights of {metric} not in pyiqa cache {folder} (it holds no files); copy them there to enable it"
    from pyiqa.archs import _lazy_import_arch
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    if metric not in DEFAULT_CONFIGS:
        return f"unknown pyiqa metric {metric!r}; pick e.g. qalign, musiq or brisque (fada's own)"
    options = DEFAULT_CONFIGS[metric]["metric_opts"]
    try:
        _lazy_import_arch(options["type"])
        urls = getattr(sys.modules[ARCH_REGISTRY.get(options["type"]).__module__], "default_model_urls", {})
    except (ImportError, KeyError) as exc:
        return f"pyiqa metric {metric!r} cannot be imported ({exc})"
    keys = [v for v in options.values() if isinstance(v, str) and v in urls] or [k for k in ("url",) if k in urls]
    if not keys:
        return f"cannot tell which weight file pyiqa metric {metric!r} needs; pick e.g. qalign or musiq"
    missing = [Path(urls[k]).name for k in keys if not (pyiqa_cache_dir() / Path(urls[k]).name).is_file()]
    if missing:
        return f"{missing[0]} not in pyiqa cache {pyiqa_cache_dir()}; copy it there to enable {metric}"
    return None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, found as `huggingface_hub` finds it (read now, not at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(hf_home)) / "hub"


def hf_cache_problem(repo_id: str) -> str | None:
    """Why the Hugging Face model ``repo_id`` cannot load offline (None when its ``config.json`` and
    every weight file — the shards its index names, or the single file — are in the local cache)."""
    from huggingface_hub import try_to_load_from_cache

    folder = hf_cache_dir()
    cached = lambda name: isinstance(try_to_load_from_cache(repo_id, name, cache_dir=folder), str)  # noqa: E731
    if not cached("config.json"):
        return f"{repo_id} is not in the Hugging Face cache {folder}"
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = try_to_load_from_cache(repo_id, index, cache_dir=folder)
        if isinstance(path, str):
            shards = sorted(set(json.loads(Path(path).read_text()).get("weight_map", {}).values()))
            missing = [shard for shard in shards if not cached(shard)]
            return f"{repo_id}'s {missing[0]} is not in the Hugging Face cache {folder}" if missing else None
    if any(cached(name) for name in ("model.safetensors", "pytorch_model.bin")):
        return None
    return f"{repo_id} has no weight file in the Hugging Face cache {folder}"


def learned_iqa_problem(metric: str) -> str | None:
    """Why the learned IQA ``metric`` cannot run offline (None when its weights are local)."""
    if metric in QALIGN_METRICS:
        problem = hf_cache_problem(QALIGN_REPO)
        if problem is None:
            return None
        return (f"{problem}; download it where there is network (`hf download {QALIGN_REPO}`, an 8 B-parameter "
                f"model) and copy the cache folder here to enable it")  # fmt: skip
    return pyiqa_weights_problem(metric)


@contextlib.contextmanager
def hub_offline():
    """Every Hugging Face Hub request fails inside: loading reads the local cache only.

    ``HF_HUB_OFFLINE`` in the environment is read once, when `huggingface_hub` is imported (by
    diffusers, long before a metric loads), so the flag it sets is switched here instead.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@functools.lru_cache(maxsize=8)
def load_pyiqa(metric: str, device: str = "cpu"):
    """A pyiqa metric on ``device``, built from local files only."""
    import pyiqa

    with hub_offline():
        return pyiqa.create_metric(metric, device=device)


def learned_iqa_load_problem(metric: str, device: str = "cpu") -> str | None:
    """Why a learned IQA ``metric`` whose weights are local still cannot be built (None: it is built
    and kept, `load_pyiqa`'s cache)."""
    try:
        load_pyiqa(metric, device)
    except Exception as exc:  # third-party model code (pyiqa's mPLUG-Owl2 copy …) under this environment: report it
        return f"its weights are local but pyiqa could not build {metric} ({type(exc).__name__}: {str(exc)[:160]})"
    return None


def pyiqa_score(frames: np.ndarray, metric: str, device: str = "cpu") -> float:
    """Mean of pyiqa ``metric`` over ``frames`` (T, H, W, 3) uint8; Q-Align takes one frame per call."""
    import torch

    model = load_pyiqa(metric, device)
    images = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # (T, 3, H, W), moved by pyiqa
    batch = 1 if metric in QALIGN_METRICS else len(images)
    with torch.no_grad():
        return float(torch.cat([model(images[i : i + batch]).flatten().float().cpu()
                                for i in range(0, len(images), batch)]).mean())  # fmt: skip


def iqa_lower_better(metric: str) -> bool:
    """Whether lower is better for IQA ``metric``: BRISQUE yes; a pyiqa metric as pyiqa declares it."""
    if metric == BRISQUE:
        return True
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return bool(DEFAULT_CONFIGS.get(metric, {}).get("lower_better", False))


def weight_free_iqa(frames: np.ndarray, metric: str = "piqe") -> float:
    """Mean of a `WEIGHT_FREE_IQA` metric over ``frames`` (T, H, W, 3) uint8 (direction: `iqa_lower_better`)."""
    if metric not in WEIGHT_FREE_IQA:
        raise ValueError(f"{metric!r} is not a weight-free pyiqa metric; use one of {', '.join(WEIGHT_FREE_IQA)}")
    return pyiqa_score(frames, metric)


def lpips_weights_problem() -> str | None:
    """Why LPIPS cannot run offline (None when both its weight files are local)."""
    import torch.hub

    places = (pyiqa_cache_dir() / LPIPS_FILES[0], Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILES[1])
    missing = [str(path) for path in places if not path.is_file()]
    return f"lpips: {missing[0]} not found; copy it there to enable LPIPS" if missing else None


def full_reference(generated: np.ndarray, reference: np.ndarray, metrics: tuple[str, ...]) -> dict[str, float]:
    """Mean per-frame full-reference scores (pyiqa) of ``generated`` against ``reference``.

    Both (T, H, W, 3) uint8; the reference is resized (area) to the generated frames' size and the
    first min(T) frames of each are compared.
    """
    import torch

    height, width = generated.shape[1:3]
    if reference.shape[1:3] != (height, width):
        reference = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in reference])
    n = min(len(generated), len(reference))
    as_tensor = lambda v: torch.from_numpy(v[:n].astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # noqa: E731
    gen, ref = as_tensor(generated), as_tensor(reference)  # (n, 3, H, W)
    scores = {}
    with torch.no_grad():
        for metric in metrics:
            model = load_pyiqa(metric)
            scores[metric] = float(torch.cat([model(gen[i : i + 16], ref[i : i + 16]).flatten()
                                              for i in range(0, n, 16)]).mean())  # fmt: skip
    return scores
