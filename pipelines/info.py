"""`fada info`: what a checkpoint folder is and how it would be sampled, without loading its weights.

Stage(s), mode, preset, step, sampler and NFE per clip (the default steps × CFG branches), the
checkpoint's own hash (`checkpoint_hash`), the teacher and manifest hashes it recorded (and
whether the recorded teacher folder still hashes the same), and every weight file with its size
and where it is read from (components of the folder; the audio encoder: mel has no weights,
wav2vec2 is read from a local folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.checkpoint import CheckpointInfo, checkpoint_hash, load_checkpoint_info
from pipelines.errors import CheckpointError
from pipelines.generate import checkpoint_strategy


@dataclass(frozen=True)
class WeightSource:
    """One set of weights the model reads and where from."""

    name: str  # component (reference_unet, …) or audio_encoder
    source: str  # the folder the weights are read from; "none" for weight-free parts
    files: int  # weight files (safetensors) in it
    megabytes: float  # their size


@dataclass(frozen=True)
class CheckpointSummary:
    """What `fada info` prints (``--json``: these fields)."""

    path: str  # the checkpoint folder
    format_version: int  # checkpoint layout version
    stage: str  # teacher | student
    mode: str  # teacher, or the student's mode (balanced | fast)
    stages: list[dict]  # teacher stages the weights went through, oldest first ({"stage", "steps"})
    preset: str  # model preset the config started from
    step: int  # optimisation steps of this checkpoint
    sample_size: int  # generated face crop side in pixels
    frames_per_clip: int  # F
    motion_frames: int  # M
    sampler: str  # sampling strategy of `fada generate`
    default_steps: int  # sampler steps per clip without --steps
    nfe_per_clip: int  # default_steps × CFG branches (denoising-net evaluations per clip)
    default_cfg_ref: float  # --cfg-ref without the option
    hash: str  # checkpoint_hash of this folder (what a student records as teacher_hash)
    teacher_hash: str | None  # students: the hash of the teacher they were distilled from
    teacher_path: str | None  # students: where that teacher was
    teacher_matches: bool | None  # whether that folder still hashes to teacher_hash (None: not there to check)
    manifest_hash: str | None  # sha256 of the training manifest
    weights: list[WeightSource]  # every set of weights and where it is loaded from
    has_training_state: bool  # whether --resume state is saved too
    source: str = "fada"  # where the weights came from: fada (trained here), or an import (its file and sha256)


def weight_source(name: str, folder: Path) -> WeightSource:
    files = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
    return WeightSource(name, str(folder), len(files), round(sum(f.stat().st_size for f in files) / 2**20, 3))


def summarize_checkpoint(path: str | Path) -> CheckpointSummary:
    """Read ``fada_checkpoint.json``, hash the folder; CheckpointError if it is not a checkpoint."""
    info: CheckpointInfo = load_checkpoint_info(path)
    strategy = checkpoint_strategy(info)
    model = info.config.get("model", info.config)
    weights = [weight_source(name, Path(info.path) / name) for name in info.components]
    if model.get("audio_encoder", "mel") in ("wav2vec2", "hallo-wav2vec2"):
        weights.append(weight_source("audio_encoder", Path(model.get("audio_encoder_path") or "")))
    else:
        weights.append(WeightSource("audio_encoder", "none (log-mel, no weights)", 0, 0.0))
    source = info.extra.get("source") or info.config.get("source")
    if source:  # an imported teacher (`fada import hallo`): the file it came from and its hash
        source_text = f"{source['source']}: {source['net']} (sha256 {source['net_sha256']})"
    else:
        source_text = "fada"
    teacher_path = info.config.get("teacher", {}).get("path") if info.stage == "student" else None
    teacher_matches = None
    if info.teacher_hash and teacher_path and Path(teacher_path).is_dir():
        try:
            teacher_matches = checkpoint_hash(teacher_path) == info.teacher_hash
        except CheckpointError:
            teacher_matches = False
    return CheckpointSummary(
        path=str(info.path),
        format_version=info.format_version,
        stage=info.stage,
        mode=info.mode,
        stages=info.teacher_stages,
        preset=str(model.get("preset", "")),
        step=info.step,
        sample_size=int(model.get("sample_size", 0)),
        frames_per_clip=int(model.get("frames_per_clip", 0)),
        motion_frames=int(model.get("motion_frames", 0)),
        sampler=strategy.name,
        default_steps=strategy.default_steps,
        nfe_per_clip=strategy.default_steps * strategy.branches,
        default_cfg_ref=strategy.default_cfg_ref,
        hash=checkpoint_hash(info.path),
        teacher_hash=info.teacher_hash,
        teacher_path=teacher_path,
        teacher_matches=teacher_matches,
        manifest_hash=info.manifest_hash,
        weights=weights,
        has_training_state=info.has_training_state,
        source=source_text,
    )
