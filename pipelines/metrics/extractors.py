"""Learned feature extractors for eval, loaded only from files the user names (nothing downloads).

Each TorchScript extractor has a declared contract — the input one sample must have, the keyword
arguments every call passes, and the feature width it must return — checked once at load time on
a zero input, so a wrong file fails with a sentence instead of a shape error mid-run. Every loaded
extractor records the sha256 of its file; results carry it.

- ``--inception-weights``: ``m(x, return_features=True)``, x float ``(N, 3, 299, 299)`` RGB in
  [0, 255] → ``(N, 2048)`` pool3 features.
- ``--i3d-weights``: ``m(x, rescale=False, resize=False, return_features=True)``, x float
  ``(N, 3, 16, 224, 224)`` RGB in [-1, 1] → ``(N, 400)``.
- ``--r3d-weights``: ``m(x)``, x float ``(N, 3, 16, 112, 112)``, RGB in [0, 1] then Kinetics
  mean/std → ``(N, D)``, any D.
- ``--expression-weights``: ``m(x)``, x float ``(N, 3, 224, 224)`` RGB in [0, 1] → ``(N, 257)``
  (expression = columns 80:144) or ``(N, 64)``.

Where the files come from, and how frames are prepared:

- Inception: clean-fid's / StyleGAN2-ADA's ``inception-2015-12-05.pt`` (the TF FID network). Frames
  are resized to 299 as clean-fid's "clean" mode does — PIL bicubic on each channel in float
  (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022) —
  so the network's own resize is the identity.
- I3D: StyleGAN-V's ``i3d_torchscript.pt`` (Skorokhodov et al., CVPR 2022), Kinetics-400 logits
  before the softmax, as FVD uses (Unterthiner et al., 2019). Frames resized to 224 as above.
- 3D ResNet (FVD-R): e.g. ``torchvision.models.video.r3d_18`` (Tran et al., CVPR 2018) with
  ``fc = Identity()`` scripted: 512-d features. Square face crops are resized to 112 (not torchvision's
  128×171 + centre crop, which would cut the face's sides), normalised with Kinetics mean/std.
- Expression: Deep3DFaceRecon's ReconNet (Deng et al., CVPRW 2019) scripted; its 257 coefficients
  are id(80) | exp(64) | tex(80) | angle(3) | gamma(27) | trans(3); E-FID uses exp. The clip's
  face-centred square frame is resized to 224 (no 5-point re-alignment).
- SyncNet: the ``syncnet_v2.model`` state dict through ``syncnet_python``'s model, read with
  ``torch.load(weights_only=True)`` (tensors only, no pickled code); scoring is `filters.sync`'s.

Clips for FVD are the non-overlapping 16-frame windows of each video.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.errors import InputFileError
from pipelines.metrics import lip_sync

CLIP_FRAMES = 16  # frames per FVD clip (I3D and 3D ResNet)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision R3D_18_Weights.KINETICS400_V1 transforms
KINETICS_STD = (0.22803, 0.22145, 0.216989)
EXPRESSION_SLICE = slice(80, 144)  # Deep3DFaceRecon coefficient layout: the 64 expression coefficients


def resize_clean(frames: np.ndarray, size: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 → ``(T, size, size, 3)`` float32 in [0, 255]: PIL bicubic per channel in float."""
    out = np.empty((len(frames), size, size, 3), dtype=np.float32)
    for t, frame in enumerate(frames):
        for c in range(3):
            channel = Image.fromarray(frame[..., c].astype(np.float32), mode="F")
            out[t, ..., c] = np.asarray(channel.resize((size, size), resample=Image.Resampling.BICUBIC))
    return np.clip(out, 0.0, 255.0)


def video_clips(frames: np.ndarray, length: int = CLIP_FRAMES) -> np.ndarray:
    """Non-overlapping windows of ``length`` frames: ``(T, H, W, 3)`` → ``(T // length, length, H, W, 3)``."""
    n = len(frames) // length
    return frames[: n * length].reshape(n, length, *frames.shape[1:])


def _inception_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(resize_clean(frames, 299)).permute(0, 3, 1, 2)  # (N, 3, 299, 299) in [0, 255]


def _i3d_input(clips: np.ndarray) -> torch.Tensor:
    n, length = clips.shape[:2]
    frames = resize_clean(clips.reshape(-1, *clips.shape[2:]), 224) / 127.5 - 1.0  # (N·16, 224, 224, 3) in [-1, 1]
    return torch.from_numpy(frames).reshape(n, length, 224, 224, 3).permute(0, 4, 1, 2, 3)  # (N, 3, 16, 224, 224)


def _r3d_input(clips: np.ndarray) -> torch.Tensor:
    n, length = clips.shape[:2]
    frames = resize_clean(clips.reshape(-1, *clips.shape[2:]), 112) / 255.0
    frames = (frames - np.array(KINETICS_MEAN, np.float32)) / np.array(KINETICS_STD, np.float32)
    return torch.from_numpy(frames).reshape(n, length, 112, 112, 3).permute(0, 4, 1, 2, 3)  # (N, 3, 16, 112, 112)


def _expression_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(resize_clean(frames, 224) / 255.0).permute(0, 3, 1, 2)  # (N, 3, 224, 224) in [0, 1]


def _expression_output(features: torch.Tensor) -> torch.Tensor:
    return features[:, EXPRESSION_SLICE] if features.shape[1] == 257 else features


@dataclass(frozen=True)
class ExtractorContract:
    """What a TorchScript feature extractor takes and returns."""

    metric: str  # the metric it serves: fid | fvd | fvd_r | e_fid
    option: str  # the CLI option that names its file
    name: str  # recorded with every result
    sample_shape: tuple[int, ...]  # one input sample, e.g. (3, 299, 299)
    call_kwargs: tuple[tuple[str, bool], ...]  # keyword arguments of every call
    output_dims: tuple[int, ...]  # accepted output widths; () = any
    clips: bool  # True: inputs are 16-frame clips (N, 16, H, W, 3); False: frames (N, H, W, 3)
    prepare: Callable[[np.ndarray], torch.Tensor]  # uint8 frames or clips → network input
    select: Callable[[torch.Tensor], torch.Tensor] = lambda features: features  # network output → features


INCEPTION = ExtractorContract(
    "fid", "--inception-weights", "inception-v3 pool3 (clean-fid torchscript)", (3, 299, 299),
    (("return_features", True),), (2048,), False, _inception_input,
)  # fmt: skip
I3D = ExtractorContract(
    "fvd", "--i3d-weights", "i3d kinetics-400 logits (stylegan-v torchscript)", (3, CLIP_FRAMES, 224, 224),
    (("rescale", False), ("resize", False), ("return_features", True)), (400,), True, _i3d_input,
)  # fmt: skip
R3D = ExtractorContract(
    "fvd_r", "--r3d-weights", "3d-resnet (torchscript)", (3, CLIP_FRAMES, 112, 112), (), (), True, _r3d_input,
)  # fmt: skip
EXPRESSION = ExtractorContract(
    "e_fid", "--expression-weights", "3dmm expression coefficients (deep3dfacerecon torchscript)", (3, 224, 224),
    (), (257, 64), False, _expression_input, _expression_output,
)  # fmt: skip
CONTRACTS = {contract.metric: contract for contract in (INCEPTION, I3D, R3D, EXPRESSION)}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(path: Path, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{option} {path}: file not found; pass the path of the weights file.")
    return path


@dataclass(frozen=True)
class Extractor:
    """A loaded TorchScript extractor and where it came from."""

    contract: ExtractorContract
    path: Path  # the file loaded
    sha256: str  # of that file
    module: torch.jit.ScriptModule
    device: torch.device
    feature_dim: int  # width of `features` rows

    @property
    def name(self) -> str:
        return self.contract.name

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The network's raw output as ``(N, D_out)`` float."""
        with torch.no_grad():
            output = self.module(inputs.to(self.device), **dict(self.contract.call_kwargs))
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"returned {type(output).__name__}, not a tensor")
        return output.reshape(output.shape[0], -1).float()

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.contract.select(self._forward(inputs))  # (N, feature_dim)

    def features(self, samples: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """``(N, D)`` float64 features of uint8 frames ``(N, H, W, 3)`` or clips ``(N, 16, H, W, 3)``."""
        chunks = [
            self._run(self.contract.prepare(samples[i : i + batch_size])).cpu().double().numpy()
            for i in range(0, len(samples), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.feature_dim))


def load_torchscript(path: Path, contract: ExtractorContract, device: torch.device | str = "cpu") -> Extractor:
    """Load a TorchScript extractor with `torch.jit.load` and check its contract on a zero input."""
    path = _check_file(path, contract.option)
    device = torch.device(device)
    try:
        with warnings.catch_warnings():  # torch 2.14 flags TorchScript as deprecated; it is the format we read
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise InputFileError(
            f"{contract.option} {path} is not a TorchScript file ({' '.join(str(exc).split())[:120]}); "
            "export the network with torch.jit.script(model).save(PATH)."
        ) from exc
    extractor = Extractor(contract, path, file_sha256(path), module, device, feature_dim=0)
    kwargs = ", ".join(f"{key}={value}" for key, value in contract.call_kwargs)
    expected = (
        f"m(x{', ' + kwargs if kwargs else ''}) with x of shape (N, {', '.join(map(str, contract.sample_shape))})"
    )
    try:
        probe = extractor._forward(torch.zeros(2, *contract.sample_shape))  # (2, D_out)
    except (RuntimeError, TypeError) as exc:
        raise InputFileError(
            f"{contract.option} {path} does not follow the contract {expected} "
            f"({' '.join(str(exc).split())[:160]}); see pipelines/metrics/extractors.py for how to export it."
        ) from exc
    allowed = contract.output_dims
    if probe.shape[0] != 2 or (allowed and probe.shape[1] not in allowed):
        raise InputFileError(
            f"{contract.option} {path} returns features of shape {tuple(probe.shape)} for 2 inputs; "
            f"{contract.name} must return (N, {' or '.join(map(str, allowed))}) for {expected}."
        )
    width = int(contract.select(probe).shape[1])
    return Extractor(contract, path, extractor.sha256, module, device, feature_dim=width)


@dataclass(frozen=True)
class SyncNetExtractor:
    """SyncNet weights checked loadable; clips are scored by `metrics.lip_sync` (LSE-D, LSE-C, offset)."""

    path: Path  # the `syncnet_v2.model` file
    sha256: str  # of that file
    name: str = "syncnet v2 (syncnet_python)"


def load_syncnet(path: Path) -> SyncNetExtractor:
    """Check that a SyncNet state dict loads into `syncnet_python`'s model (tensors only, no pickled code)."""
    path = _check_file(path, "`syncnet_weights`")
    try:
        lip_sync.load_syncnet(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, AttributeError) as exc:
        raise InputFileError(
            f"`syncnet_weights` {path} is not a SyncNet state dict ({' '.join(str(exc).split())[:160]}); "
            "pass syncnet_v2.model from the SyncNet release."
        ) from exc
    return SyncNetExtractor(path, file_sha256(path))
