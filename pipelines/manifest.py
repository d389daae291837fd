"""The clip manifest (DESIGN §2): one Parquet row per clip, schema declared once here.

Paths inside are relative to the manifest's folder; a path that is absolute or climbs out of that
folder with ``..`` is rejected. The Parquet key-value metadata (key ``fada``) holds a JSON object
with the schema version, the producing command and whatever else the producer records (thresholds,
scorers, ...). Reading validates the columns a stage needs and names the command that makes a
missing one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import ManifestError

SCHEMA_VERSION = "1"  # bump on any change to the columns below (and note it in CHANGELOG.md)
METADATA_KEY = b"fada"  # Parquet key-value metadata key holding fada's JSON metadata

# Columns every manifest has, written by `fada demo-data` or `fada curate` (name -> pandas dtype).
REQUIRED_COLUMNS: dict[str, str] = {
    "clip_id": "str",  # unique id of the clip
    "video_path": "str",  # mp4 path relative to the manifest's folder
    "fps": "float64",  # video frame rate
    "n_frames": "int64",  # number of video frames
    "width": "int64",  # frame width (pixels)
    "height": "int64",  # frame height (pixels)
    "audio_sr": "int64",  # sample rate of the clip's audio track
    "duration_s": "float64",  # clip length in seconds
    "source": "str",  # the raw video (or generator) the clip was cut from
    "start_s": "float64",  # start of the clip in its source (s)
    "end_s": "float64",  # end of the clip in its source (s)
}

# Columns written by `fada curate` (NaN where a scorer could not run, the reason in `notes`).
SCORE_COLUMNS: dict[str, str] = {
    "face_frac": "float64",  # fraction of frames with a detected face
    "face_multi_frac": "float64",  # fraction of frames with more than one face
    "face_size": "float64",  # median face box side / frame side
    "sync_offset": "float64",  # SyncNet AV offset (frames; positive = video lags audio)
    "sync_conf": "float64",  # SyncNet confidence (LSE-C)
    "sync_dist": "float64",  # SyncNet distance (LSE-D)
    "sync_proxy_offset": "float64",  # landmark proxy offset (frames)
    "sync_proxy_conf": "float64",  # landmark proxy confidence (Pearson r at the best lag)
    "motion_head": "float64",  # head motion measure
    "motion_mouth": "float64",  # mouth motion measure
    "iqa": "float64",  # image quality score of `iqa_metric` (direction: that metric's)
    "iqa_metric": "str",  # which IQA metric produced `iqa` (default brisque; NaN `iqa` and a note without weights)
    "sharpness": "float64",  # Laplacian variance sharpness
    "brisque": "float64",  # BRISQUE at the clip's size (lower is better; `pipelines.metrics.brisque`)
    "bg_instability": "float64",  # background instability measure
    "bg_noise": "float64",  # temporal noise sigma of the background (grey levels)
    "tier": "str",  # A | B | reject
    "tier_reason": "str",  # which threshold decided the tier
    "reject_reason": "str",  # why a clip was rejected ("" otherwise)
    "notes": "str",  # why a scorer gave NaN, free text
}

TIERS = ("A", "B", "reject")  # allowed values of `tier`

# The command that makes a column, for error messages.
BASE_PRODUCER = "`fada demo-data OUT_DIR` or `fada curate`"
SCORE_PRODUCER = "`fada curate`"
COLUMN_PRODUCERS: dict[str, str] = {
    **{name: BASE_PRODUCER for name in REQUIRED_COLUMNS},
    **{name: SCORE_PRODUCER for name in SCORE_COLUMNS},
    "tier": "`fada curate` (or `fada demo-data`, which writes ground-truth tiers)",
}

KNOWN_COLUMNS: dict[str, str] = {**REQUIRED_COLUMNS, **SCORE_COLUMNS}


def check_relative_path(relative: str, where: str) -> PurePosixPath:
    """Lexically check that ``relative`` stays inside the manifest's folder; return it normalised.

    The check is on the path text (absolute, or ``..`` climbing above the folder), so a clips
    folder that is a symlink to another disk still works.
    """
    if not isinstance(relative, str) or not relative:
        raise ManifestError(f"{where}: empty or non-text path {relative!r}; write a path relative to the manifest.")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or (len(relative) > 1 and relative[1] == ":"):
        raise ManifestError(f"{where}: absolute path {relative!r}; write it relative to the manifest's folder.")
    depth = 0
    for part in posix.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise ManifestError(
                f"{where}: path {relative!r} escapes the manifest's folder; keep clips inside that folder."
            )
    return posix


def clip_path(manifest_path: str | Path, relative: str) -> Path:
    """The absolute path of a clip given by a manifest-relative path (ManifestError if it escapes)."""
    manifest_path = Path(manifest_path)
    posix = check_relative_path(relative, str(manifest_path))
    return manifest_path.parent.absolute() / Path(*posix.parts)


def _coerce(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Cast known columns to their declared dtypes; a column that will not cast is an error."""
    df = df.copy()
    for name, dtype in KNOWN_COLUMNS.items():
        if name not in df.columns or str(df[name].dtype) == dtype:
            continue
        try:
            df[name] = df[name].astype(dtype)
        except (ValueError, TypeError) as exc:
            raise ManifestError(
                f"{where}: column {name!r} has dtype {df[name].dtype} that does not convert to {dtype} ({exc}); "
                f"regenerate it with {COLUMN_PRODUCERS[name]}."
            ) from exc
    return df


def _validate(df: pd.DataFrame, required: Iterable[str], where: str) -> None:
    for name in required:
        if name not in df.columns:
            producer = COLUMN_PRODUCERS.get(name, BASE_PRODUCER)
            raise ManifestError(f"{where}: missing column {name!r}; it is written by {producer}.")
    if "clip_id" in df.columns:
        if df["clip_id"].isna().any():
            raise ManifestError(f"{where}: some clip_id values are empty; give every clip an id.")
        duplicated = df["clip_id"][df["clip_id"].duplicated()]
        if len(duplicated):
            raise ManifestError(
                f"{where}: duplicate clip_id {duplicated.iloc[0]!r} ({len(duplicated)} duplicates); ids must be unique."
            )
    if "video_path" in df.columns:
        for relative in df["video_path"]:
            check_relative_path(relative, where)
    if "tier" in df.columns:
        bad = sorted(set(df["tier"].dropna()) - set(TIERS))
        if bad:
            raise ManifestError(f"{where}: unknown tier value(s) {bad}; allowed: {', '.join(TIERS)}.")


def write_manifest(
    df: pd.DataFrame, path: str | Path, producer: str, metadata: Mapping[str, object] | None = None
) -> None:
    """Validate ``df`` and write it as Parquet atomically, with fada's JSON key-value metadata.

    ``producer`` names the command (e.g. ``"fada curate"``); ``metadata`` (thresholds, scorers, ...)
    must be JSON-serialisable.
    """
    path = Path(path)
    where = f"manifest {path}"
    _validate(df, REQUIRED_COLUMNS, where)
    df = _coerce(df, where).reset_index(drop=True)
    fada_meta = {**dict(metadata or {}), "schema_version": SCHEMA_VERSION, "producer": producer}
    try:
        encoded = json.dumps(fada_meta, sort_keys=True).encode()
    except TypeError as exc:
        raise ManifestError(f"{where}: metadata is not JSON-serialisable ({exc}); pass plain numbers/strings.") from exc
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: encoded})
    if not path.parent.is_dir():
        raise ManifestError(f"output folder does not exist: {path.parent}; create it first.")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_manifest_metadata(path: str | Path) -> dict:
    """fada's key-value metadata of a manifest ({} for a Parquet file written by something else)."""
    path = Path(path)
    _check_exists(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"cannot read manifest {path} ({exc}); regenerate it with {BASE_PRODUCER}.") from exc
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}; make one with {BASE_PRODUCER}.")


def read_manifest(path: str | Path, required: Iterable[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read and validate a manifest: required columns, unique clip_id, paths inside the folder, dtypes.

    The returned frame carries fada's metadata in ``df.attrs["fada"]``. A newer schema version
    than this fada knows is an error.
    """
    path = Path(path)
    where = f"manifest {path}"
    metadata = read_manifest_metadata(path)
    version = metadata.get("schema_version")
    if version is not None and _version_key(version) > _version_key(SCHEMA_VERSION):
        raise ManifestError(
            f"{where}: schema version {version} is newer than this fada's {SCHEMA_VERSION}; upgrade fada."
        )
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"cannot read manifest {path} ({exc}); regenerate it with {BASE_PRODUCER}.") from exc
    _validate(df, list(required), where)
    df = _coerce(df, where)
    df.attrs["fada"] = metadata
    return df


def _version_key(version: object) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(version).split("."))
    except ValueError:
        raise ManifestError(f"manifest schema version {version!r} is not a number; regenerate the manifest.") from None


def manifest_hash(path: str | Path) -> str:
    """sha256 (hex) of the manifest file's bytes, recorded in checkpoints (DESIGN §5)."""
    path = Path(path)
    _check_exists(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
