"""Image quality measurements shared by curation (`filters.image_quality`) and `fada eval`: a pyiqa
metric read from pyiqa's local cache, sharpness, and OpenCV BRISQUE.

- ``iqa`` / ``iqa_metric``: the pyiqa metric named in the settings, only when its weight file is
  already in pyiqa's cache (``$TORCH_HOME/hub/pyiqa``); otherwise NaN and the reason — nothing is
  ever downloaded.
- ``sharpness``: always; the median over frames of the variance of the Laplacian of the grey
  image (Pech-Pacheco et al., ICPR 2000), on a 0–255 scale, measured after a 3×3 median filter so
  that pixel noise is not read as detail.
- ``weight_free_iqa``: a pyiqa no-reference metric whose parameters ship in the installed package
  (`WEIGHT_FREE_IQA`): nothing to download, so it always runs.
- ``full_reference``: PSNR and SSIM through pyiqa (no weights); LPIPS only where its two weight
  files are already local (`lpips_weights_problem`).
- ``brisque``: OpenCV's `cv2.quality.QualityBRISQUE` where the contrib module and its model files
  (`brisque_model_live.yml`, `brisque_range_live.yml`, folder in ``$FADA_BRISQUE_DIR``) exist.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import cv2
import numpy as np

FRAME_STEP = 5  # score every n-th frame
BRISQUE_FILES = ("brisque_model_live.yml", "brisque_range_live.yml")
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
        return f"iqa: weights of {metric} not in pyiqa cache {folder} (it holds no files); copy them there to enable it"
    from pyiqa.archs import _lazy_import_arch
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    if metric not in DEFAULT_CONFIGS:
        return f"iqa: unknown pyiqa metric {metric!r}"
    options = DEFAULT_CONFIGS[metric]["metric_opts"]
    try:
        _lazy_import_arch(options["type"])
        urls = getattr(sys.modules[ARCH_REGISTRY.get(options["type"]).__module__], "default_model_urls", {})
    except (ImportError, KeyError) as exc:
        return f"iqa: pyiqa metric {metric!r} cannot be imported ({exc})"
    keys = [v for v in options.values() if isinstance(v, str) and v in urls] or [k for k in ("url",) if k in urls]
    if not keys:
        return f"iqa: cannot tell which weight file pyiqa metric {metric!r} needs; pick e.g. musiq, niqe, brisque"
    missing = [Path(urls[k]).name for k in keys if not (pyiqa_cache_dir() / Path(urls[k]).name).is_file()]
    if missing:
        return f"iqa: {missing[0]} not in pyiqa cache {pyiqa_cache_dir()}; copy it there to enable {metric}"
    return None


@functools.lru_cache(maxsize=2)
def load_pyiqa(metric: str):
    import pyiqa

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network from here
    return pyiqa.create_metric(metric, device="cpu")


def pyiqa_score(frames: np.ndarray, metric: str) -> float:
    import torch

    model = load_pyiqa(metric)
    images = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # (T, 3, H, W)
    with torch.no_grad():
        return float(model(images).mean())


def iqa_lower_better(metric: str) -> bool:
    """pyiqa's declared direction of ``metric`` (True: lower is better)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return bool(DEFAULT_CONFIGS[metric].get("lower_better", False))


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


def brisque_model_dir() -> Path | None:
    folder = os.environ.get("FADA_BRISQUE_DIR")
    if not folder or not hasattr(cv2, "quality"):
        return None
    return Path(folder) if all((Path(folder) / name).is_file() for name in BRISQUE_FILES) else None
