"""Checkpoint folders (docs/DESIGN.md §5): safetensors + JSON only, written atomically, loaded safely.

Layout::

    ckpt/
      fada_checkpoint.json            format_version, stage, mode, config, step, hashes, extra
      denoising_unet/                 one diffusers-layout folder per component:
        config.json                     UNet2DConditionModel.from_pretrained(ckpt / "denoising_unet")
        diffusion_pytorch_model.safetensors
      ...
      training_state.safetensors      optional: optimizer / scheduler / RNG tensors ...
      training_state.json             ... and everything else of that state, as JSON

A save writes a hidden sibling folder and renames it into place; an existing checkpoint at the
same path is moved aside first and only deleted once the new one is in place. Loading refuses a
folder holding any file that would unpickle (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ...).

Training state of any nesting (an optimizer's ``state_dict()``, an LR scheduler's, RNG states) is
flattened by `pack_state` into ``{name: tensor}`` plus a JSON tree that points at those names, and
rebuilt exactly by `unpack_state`, so ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipelines.errors import CheckpointError

FORMAT_VERSION = 2  # bump on any change to the layout below (and note it in CHANGELOG.md); see `migrate_config`
CHECKPOINT_FILE = "fada_checkpoint.json"
TRAINING_TENSORS_FILE = "training_state.safetensors"
TRAINING_META_FILE = "training_state.json"
STAGES = {"teacher": "`fada train-teacher`", "student": "`fada distill`"}  # stage -> command that makes it
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}  # files that would unpickle


@dataclass(frozen=True)
class CheckpointInfo:
    """The contents of a checkpoint's ``fada_checkpoint.json``."""

    path: Path  # the checkpoint folder
    format_version: int  # layout version it was written with
    stage: str  # "teacher" or "student"
    mode: str  # the training mode recorded by the producer (e.g. the distillation mode)
    config: dict  # the full resolved model and training config
    step: int  # optimisation steps done
    manifest_hash: str | None  # sha256 of the data manifest it was trained on
    teacher_hash: str | None  # checkpoint_hash of the teacher (students only)
    extra: dict  # anything else the producer recorded
    components: tuple[str, ...] = field(default=())  # names of the component sub-folders
    has_training_state: bool = False  # whether optimizer/scheduler/RNG state is saved

    @property
    def teacher_stages(self) -> list[dict]:
        """The teacher stages these weights went through, oldest first: ``[{"stage", "steps"}, …]``.

        Teachers written before `fada train-teacher --stage` existed trained everything at once:
        one ``joint`` entry.
        """
        history = self.config.get("stages")
        return [dict(entry) for entry in history] if history else [{"stage": "joint", "steps": self.step}]

    @property
    def image_only(self) -> bool:
        """Whether these are the weights of a teacher that has not been through a video stage yet."""
        return self.stage == "teacher" and self.teacher_stages[-1]["stage"] == "image"


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    out_dir: str | Path,
    *,
    stage: str,
    mode: str,
    config: Mapping,
    components: Mapping[str, object],
    step: int,
    manifest_hash: str | None = None,
    teacher_hash: str | None = None,
    training_state: Mapping[str, torch.Tensor] | None = None,
    training_meta: Mapping | None = None,
    extra: Mapping | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``components`` maps a sub-folder name to a diffusers-style model (anything with
    ``save_pretrained(folder, safe_serialization=True)``). ``training_state``/``training_meta``
    are typically the two halves of `pack_state`.
    """
    out_dir = Path(out_dir)
    # 1. check inputs
    if stage not in STAGES:
        raise CheckpointError(f"unknown checkpoint stage {stage!r}; use one of {', '.join(STAGES)}.")
    for name in components:
        if not name or "/" in name or "\\" in name or name.startswith(".") or name.startswith("training_state"):
            raise CheckpointError(f"invalid component name {name!r}; use a plain folder name like 'denoising_unet'.")
    record = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "mode": mode,
        "config": dict(config),
        "step": int(step),
        "manifest_hash": manifest_hash,
        "teacher_hash": teacher_hash,
        "components": sorted(components),
        "has_training_state": training_state is not None,
        "extra": dict(extra or {}),
    }
    record_text = _json_dumps(record, "checkpoint config/extra")
    meta_text = _json_dumps(dict(training_meta or {}), "training_meta")
    if out_dir.exists() and not (out_dir / CHECKPOINT_FILE).is_file() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"refusing to overwrite {out_dir}: it exists and is not a fada checkpoint; pick an empty or new folder."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    # 2. write everything into a hidden sibling folder; fada_checkpoint.json last marks it complete
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        for name, component in components.items():
            component.save_pretrained(tmp / name, safe_serialization=True)
        if training_state is not None:
            tensors = {key: value.detach().cpu().contiguous().clone() for key, value in training_state.items()}
            save_file(tensors, str(tmp / TRAINING_TENSORS_FILE))
            (tmp / TRAINING_META_FILE).write_text(meta_text)
        (tmp / CHECKPOINT_FILE).write_text(record_text)
        _refuse_pickles(tmp)
        # 3. swap it into place, keeping the old checkpoint until the new one is there
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    had_old = out_dir.exists()
    if had_old:
        os.replace(out_dir, backup)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if had_old:
            os.replace(backup, out_dir)
        raise
    if had_old:
        shutil.rmtree(backup)


def _json_dumps(obj: object, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{what} is not JSON-serialisable ({exc}); use plain numbers, strings, lists, dicts."
        ) from exc


# ---------------------------------------------------------------------------------------------
# loading


def _refuse_pickles(path: Path) -> None:
    for file in sorted(path.rglob("*")):
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"refusing to load {path}: {file.relative_to(path)} is a pickle-based file that could run code; "
                "fada checkpoints hold safetensors + JSON only — re-save the weights as safetensors."
            )


def load_checkpoint_info(path: str | Path, expect_stage: str | None = None) -> CheckpointInfo:
    """Read and check ``fada_checkpoint.json``.

    CheckpointError when the folder is missing or not a checkpoint, holds pickle files, was
    written by a newer fada, is incomplete, or is of another stage than ``expect_stage``.
    """
    path = Path(path)
    makers = " or ".join(f"{command} ({stage})" for stage, command in STAGES.items())
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}; make one with {makers}.")
    _refuse_pickles(path)
    record_file = path / CHECKPOINT_FILE
    if not record_file.is_file():
        raise CheckpointError(f"{path} is not a fada checkpoint (no {CHECKPOINT_FILE}); make one with {makers}.")
    try:
        record = json.loads(record_file.read_text())
        version = int(record["format_version"])
        stage = str(record["stage"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{record_file} is malformed ({exc}); re-create the checkpoint with {makers}.") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this fada's {FORMAT_VERSION}; upgrade fada."
        )
    if stage not in STAGES:
        raise CheckpointError(f"{path} has unknown stage {stage!r}; re-create it with {makers}.")
    if expect_stage is not None and stage != expect_stage:
        raise CheckpointError(
            f"{path} is a {stage} checkpoint, but a {expect_stage} checkpoint is needed here; "
            f"make one with {STAGES[expect_stage]}."
        )
    components = tuple(record.get("components", ()))
    missing = [name for name in components if not (path / name).is_dir()]
    if missing:
        raise CheckpointError(f"{path} is incomplete: component folder(s) {missing} missing; re-create it.")
    return CheckpointInfo(
        path=path,
        format_version=version,
        stage=stage,
        mode=str(record.get("mode", "")),
        config=migrate_config(dict(record.get("config", {})), version),
        step=int(record.get("step", 0)),
        manifest_hash=record.get("manifest_hash"),
        teacher_hash=record.get("teacher_hash"),
        extra=dict(record.get("extra", {})),
        components=components,
        has_training_state=bool(record.get("has_training_state", False)),
    )


DROPOUT_RATES = ("p_drop_audio", "p_drop_both")  # format 1 kept them in the model config


def migrate_config(config: dict, version: int) -> dict:
    """A checkpoint's config as this fada reads it, whatever format wrote it.

    Format 1 → 2: the condition dropout rates ``p_drop_audio`` and ``p_drop_both`` (a training
    choice, docs/DESIGN.md §3) moved from the model config to the training config.
    """
    config = json.loads(json.dumps(config))  # a deep copy
    if version < 2:
        model = config.get("model", config)  # a config without "model" is the model config itself
        rates = {name: model.pop(name) for name in DROPOUT_RATES if isinstance(model, dict) and name in model}
        if isinstance(config.get("train"), dict):
            config["train"] = {**rates, **config["train"]}
    return config


def load_component(path: str | Path, name: str, cls: type):
    """Load one component with ``cls.from_pretrained(path / name, use_safetensors=True)``.

    Parameters and buffers are then copied into freshly allocated memory: tensors mapped from a
    safetensors file can sit at unaligned addresses, which makes CPU kernels round differently,
    so without the copy a resumed run would drift from the original by ~1e-7 per step.
    """
    path = Path(path)
    info = load_checkpoint_info(path)
    if name not in info.components and not (path / name).is_dir():
        raise CheckpointError(f"{path} has no component {name!r}; it holds {', '.join(info.components) or 'none'}.")
    try:
        model = cls.from_pretrained(path / name, use_safetensors=True)
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"cannot load component {name!r} from {path} ({exc}); re-create the checkpoint.") from exc
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The ``(tensors, meta)`` training state of a checkpoint (feed them to `unpack_state`)."""
    path = Path(path)
    info = load_checkpoint_info(path)
    tensors_file, meta_file = path / TRAINING_TENSORS_FILE, path / TRAINING_META_FILE
    if not info.has_training_state or not tensors_file.is_file() or not meta_file.is_file():
        raise CheckpointError(
            f"{path} holds no training state (it was saved for inference only); resume from a training checkpoint."
        )
    try:
        return load_file(str(tensors_file)), json.loads(meta_file.read_text())
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"training state of {path} is corrupt ({exc}); resume from another checkpoint.") from exc


def checkpoint_hash(path: str | Path) -> str:
    """sha256 identifying the model: stage, mode and config, plus every file of the component folders.

    Recorded by a student as ``teacher_hash``. Step, extra and training state do not count, so the
    same weights saved twice (for inference, or for resuming) hash the same. The config is hashed as
    written (before `migrate_config`), so a checkpoint keeps its hash across fada versions.
    """
    path = Path(path)
    info = load_checkpoint_info(path)
    written = json.loads((path / CHECKPOINT_FILE).read_text()).get("config", {})
    identity = {"stage": info.stage, "mode": info.mode, "config": written}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for name in info.components:
        for file in sorted(file for file in (path / name).rglob("*") if file.is_file()):
            digest.update(b"\0" + file.relative_to(path).as_posix().encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# training state: nested state dicts <-> (flat tensors, JSON)


def pack_state(state: object, prefix: str = "state") -> tuple[dict[str, torch.Tensor], object]:
    """Flatten a nested state (dicts, lists, tuples, tensors, numpy arrays, scalars) for safetensors + JSON.

    Tensors go to the returned dict under dotted names; the JSON tree refers to them as
    ``{"__tensor__": name}``. Tuples, numpy arrays and dicts with non-string keys (an optimizer's
    integer parameter ids) are tagged so that `unpack_state` rebuilds them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(obj: object, name: str) -> object:
        if isinstance(obj, torch.Tensor | np.ndarray):
            if name in tensors:
                raise ValueError(f"two tensors in the training state flatten to the same name {name!r}")
            is_array = isinstance(obj, np.ndarray)
            tensors[name] = torch.from_numpy(np.ascontiguousarray(obj)) if is_array else obj
            return {"__ndarray__" if is_array else "__tensor__": name}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, Mapping):
            if all(isinstance(key, str) and not key.startswith("__") for key in obj):
                return {key: encode(value, f"{name}.{key}") for key, value in obj.items()}
            return {"__items__": [[key, encode(value, f"{name}.{key}")] for key, value in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [encode(value, f"{name}.{i}") for i, value in enumerate(obj)]}
        if isinstance(obj, list):
            return [encode(value, f"{name}.{i}") for i, value in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {name!r} in a checkpoint (safetensors + JSON only)")

    return tensors, encode(state, prefix)


def unpack_state(tensors: Mapping[str, torch.Tensor], meta: object) -> object:
    """Rebuild the nested state written by `pack_state`."""

    def decode(obj: object) -> object:
        if isinstance(obj, dict):
            if "__tensor__" in obj:
                return _tensor(tensors, obj["__tensor__"])
            if "__ndarray__" in obj:
                return _tensor(tensors, obj["__ndarray__"]).numpy()
            if "__tuple__" in obj:
                return tuple(decode(value) for value in obj["__tuple__"])
            if "__items__" in obj:
                return {_key(key): decode(value) for key, value in obj["__items__"]}
            return {key: decode(value) for key, value in obj.items()}
        if isinstance(obj, list):
            return [decode(value) for value in obj]
        return obj

    return decode(meta)


def _tensor(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"training state is missing tensor {name!r}; resume from another checkpoint.")
    return tensors[name]


def _key(key: object) -> object:
    return tuple(key) if isinstance(key, list) else key  # JSON turns tuple keys into lists


def rng_state() -> dict:
    """The RNG states of python `random`, numpy, torch CPU and (if CUDA is in use) this process's GPU.

    Only the current GPU's: training draws nothing from the CUDA generators (its draws come from
    CPU generators seeded per step and process), and reading every visible GPU's state would start a
    CUDA context on each of them from every process.
    """
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [torch.cuda.get_rng_state()]
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` returned (after `unpack_state`), whatever the number of GPUs now visible.

    The CUDA state goes to the current GPU: the one saved, or — from a checkpoint that saved one per
    visible GPU — the current GPU's entry when there is one.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    if saved and torch.cuda.is_available():
        index = 0 if len(saved) == 1 else torch.cuda.current_device()
        if index < len(saved):
            torch.cuda.set_rng_state(saved[index])
