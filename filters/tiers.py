"""Tiers from scores: a lenient check set (tier B) and a strict one (tier A), A ⊂ B by construction.

A clip is rejected at the first lenient check it fails; a clip that passes every lenient check
is tier A only if it also passes every strict check (so every A clip passes B's checks whatever
the numbers in the file), else tier B. The first failing check is the reason.

Thresholds file (YAML or TOML), every key optional, unknown keys are errors::

    strict:  {min_face_frac: 0.95, max_abs_sync_offset: 1}
    lenient: {min_face_frac: 0.8}

A threshold of ``null`` (YAML) disables that check. Checks on SyncNet and IQA columns are
skipped where the column is NaN (no weights); the others fail on NaN. ``min_iqa`` suits a
higher-is-better ``--iqa-metric`` and ``max_iqa`` a lower-is-better one (`fada curate` refuses the
other pairing).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.errors import UsageError


@dataclass(frozen=True)
class TierChecks:
    """One set of checks; None disables a check. Ordered as they are applied.

    Defaults were tuned on the demo dataset (`fada demo-data --clips 24 --size 128 --seconds 3`)
    against its ground truth; check them on your own data.
    """

    max_multi_face_frac: float | None = 0.1  # frames showing two or more faces (fraction)
    min_face_frac: float | None = 0.8  # frames showing exactly one face (fraction)
    min_face_size: float | None = 0.15  # median face box side / frame side
    max_abs_sync_offset: float | None = 3.0  # |SyncNet offset| in frames (skipped without weights)
    min_sync_conf: float | None = 1.5  # SyncNet LSE-C (skipped without weights)
    max_sync_dist: float | None = 10.0  # SyncNet LSE-D (skipped without weights)
    max_abs_sync_proxy_offset: float | None = 5.0  # |landmark proxy offset| in frames
    min_sync_proxy_conf: float | None = 0.2  # Pearson r of mouth opening vs audio RMS at the best lag
    min_motion_mouth: float | None = 0.002  # mean per-frame mouth-opening change (a talking mouth)
    max_motion_head: float | None = 0.14  # head pose deviation from the clip mean (face units)
    min_sharpness: float | None = 16.0  # Laplacian variance (depends on resolution and content)
    min_iqa: float | None = None  # `iqa` of a higher-is-better --iqa-metric, e.g. qalign 1–5 (skipped when NaN)
    max_iqa: float | None = None  # `iqa` of a lower-is-better --iqa-metric, e.g. brisque (skipped when NaN)
    max_bg_instability: float | None = 0.04  # mean |Δ grey| / 255 outside the person (skipped when NaN)
    max_bg_noise: float | None = 6.0  # temporal noise sigma outside the person, grey levels (skipped when NaN)


STRICT_DEFAULTS = TierChecks(
    max_multi_face_frac=0.0,
    min_face_frac=0.95,
    min_face_size=0.25,
    max_abs_sync_offset=1.0,
    min_sync_conf=3.0,
    max_sync_dist=8.0,
    max_abs_sync_proxy_offset=1.0,
    min_sync_proxy_conf=0.6,
    min_motion_mouth=0.004,
    max_motion_head=0.06,
    min_sharpness=100.0,
    min_iqa=None,
    max_iqa=None,
    max_bg_instability=0.006,
    max_bg_noise=0.3,
)

# check name -> (manifest column, direction, takes the absolute value, skipped when the value is NaN)
CHECK_COLUMNS: dict[str, tuple[str, str, bool, bool]] = {
    "max_multi_face_frac": ("face_multi_frac", "max", False, False),
    "min_face_frac": ("face_frac", "min", False, False),
    "min_face_size": ("face_size", "min", False, False),
    "max_abs_sync_offset": ("sync_offset", "max", True, True),
    "min_sync_conf": ("sync_conf", "min", False, True),
    "max_sync_dist": ("sync_dist", "max", False, True),
    "max_abs_sync_proxy_offset": ("sync_proxy_offset", "max", True, False),
    "min_sync_proxy_conf": ("sync_proxy_conf", "min", False, False),
    "min_motion_mouth": ("motion_mouth", "min", False, False),
    "max_motion_head": ("motion_head", "max", False, False),
    "min_sharpness": ("sharpness", "min", False, False),
    "min_iqa": ("iqa", "min", False, True),
    "max_iqa": ("iqa", "max", False, True),
    "max_bg_instability": ("bg_instability", "max", False, True),
    "max_bg_noise": ("bg_noise", "max", False, True),
}


@dataclass(frozen=True)
class Thresholds:
    """The strict (tier A) and lenient (tier B) check sets."""

    strict: TierChecks = field(default_factory=lambda: STRICT_DEFAULTS)  # tier A, on top of lenient
    lenient: TierChecks = field(default_factory=TierChecks)  # tier B; failing it rejects the clip

    def to_dict(self) -> dict:
        return {"strict": dataclasses.asdict(self.strict), "lenient": dataclasses.asdict(self.lenient)}


def first_failure(scores: dict, checks: TierChecks) -> str | None:
    """The first check of ``checks`` that ``scores`` fails, as a sentence; None when all pass."""
    for name, (column, direction, absolute, skip_nan) in CHECK_COLUMNS.items():
        threshold = getattr(checks, name)
        if threshold is None:
            continue
        value = float(scores.get(column, math.nan))
        if math.isnan(value):
            if skip_nan:
                continue
            return f"{column} unavailable"
        shown = abs(value) if absolute else value
        if (direction == "min" and shown < threshold) or (direction == "max" and shown > threshold):
            label = f"|{column}|" if absolute else column
            return f"{label} {shown:.4g} {'<' if direction == 'min' else '>'} {threshold:g}"
    return None


def assign_tier(scores: dict, thresholds: Thresholds) -> tuple[str, str]:
    """(tier, reason): ("reject", first lenient failure) | ("B", first strict failure) | ("A", "")."""
    reason = first_failure(scores, thresholds.lenient)
    if reason is not None:
        return "reject", reason
    reason = first_failure(scores, thresholds.strict)
    return ("B", reason) if reason is not None else ("A", "")


def _checks_from(raw: object, base: TierChecks, where: str) -> TierChecks:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a table of thresholds, got {raw!r}; see `fada curate --help`.")
    known = {f.name for f in dataclasses.fields(TierChecks)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{where}: unknown threshold {unknown[0]!r}; known: {', '.join(sorted(known))}.")
    for key, value in raw.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"{where}: threshold {key} = {value!r} is not a number; write a number or null.")
    return dataclasses.replace(base, **{k: None if v is None else float(v) for k, v in raw.items()})


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Thresholds from a YAML or TOML file (missing keys keep their defaults); defaults for None."""
    if path is None:
        return Thresholds()
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"thresholds file not found: {path}; pass an existing .yaml or .toml file.")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"cannot parse thresholds file {path} ({' '.join(str(exc).split())}); fix its syntax."
        ) from exc
    raw = raw or {}
    if not isinstance(raw, dict) or set(raw) - {"strict", "lenient"}:
        keys = sorted(set(raw) - {"strict", "lenient"}) if isinstance(raw, dict) else raw
        raise UsageError(f"thresholds file {path}: unknown top-level key(s) {keys}; use only `strict` and `lenient`.")
    defaults = Thresholds()
    return Thresholds(
        strict=_checks_from(raw.get("strict", {}), defaults.strict, f"{path} [strict]"),
        lenient=_checks_from(raw.get("lenient", {}), defaults.lenient, f"{path} [lenient]"),
    )


def write_thresholds(thresholds: Thresholds, path: str | Path) -> None:
    """Write thresholds as YAML (the format `load_thresholds` reads)."""
    header = "# fada curate thresholds: tier A = passes lenient AND strict; reject = fails lenient.\n"
    Path(path).write_text(header + yaml.safe_dump(json.loads(json.dumps(thresholds.to_dict())), sort_keys=False))
