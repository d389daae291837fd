"""The curation driver: raw videos → face-centred 25 fps clips → scores → tiers → manifest.

Per source video (the unit of work of one worker process):

1. probe it (a corrupt or audio-less file becomes one rejected row);
2. find shot cuts (colour-histogram distance between consecutive frames);
3. cut each shot into equal 2–10 s clips;
4. per clip: decode, resample to 25 fps / 16 kHz, track the face (detector every n-th frame,
   centre smoothed over time, one size per clip), crop a square and resize it — or pass an
   already-cropped clip (one face filling the frame) through at its own resolution;
5. write the clip mp4, run the shared face analysis once and every scorer in `filters/`, tier it.

A source whose frames fit in ``DECODE_ONCE_BYTES`` is decoded once for its cuts and its clips. An
error on a source (or a worker that dies on it) becomes one rejected row naming it.

Each finished source's rows go to their own Parquet part, ``DIR/manifest.parts/*.parquet``
(written atomically, so the cost of a write does not grow with the run); at the end the parts
and any earlier manifest are merged, sorted by clip id, into ``DIR/manifest.parquet`` and the
parts are removed. Killing the run (either engine) keeps every finished part; ``resume`` reads
the parts and the manifest and skips every clip id already in them.

Engines: ``local`` runs sources in this process or a process pool; ``ray`` runs each source as
a Ray task with an explicit CPU request (`pipelines/curate_ray.py`).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.ndimage import gaussian_filter1d

from filters import background, face, image_quality, motion, sync
from filters.base import ScoringSettings, analyse_clip
from filters.tiers import Thresholds, assign_tier, write_thresholds
from pipelines import curate_ray, faces, media
from pipelines.errors import FadaError, ManifestError, UsageError
from pipelines.manifest import REQUIRED_COLUMNS, read_manifest, write_manifest
from pipelines.metrics import quality
from pipelines.progress import make_progress

SCORERS = (face, sync, motion, image_quality, background)  # every scorer, in the order they run
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
CLIPS_FOLDER = "clips"  # clip mp4s live in DIR/clips/
NO_FILE = "."  # video_path of a rejected row that has no clip file
MANIFEST_NAME = "manifest.parquet"
THRESHOLDS_NAME = "thresholds.yaml"  # the thresholds used, written next to the manifest
PARTS_FOLDER = "manifest.parts"  # one Parquet part per finished source until the final merge
ENGINES = ("local", "ray")  # where sources run: this machine's processes, or Ray tasks
DECODE_ONCE_BYTES = 256 * 2**20  # sources whose RGB frames fit this are decoded once (cuts and clips); others stream


@dataclass(frozen=True)
class CurateConfig:
    """Everything one curation run needs; recorded in the manifest metadata."""

    size: int = 512  # side of the square output crop (pixels)
    min_seconds: float = 2.0  # shortest clip kept; shorter shot remainders are dropped
    max_seconds: float = 10.0  # longest clip; longer shots are cut into equal parts
    workers: int = 1  # worker processes (1 = in this process); with a local Ray, its CPUs
    engine: str = "local"  # "local" (process pool) or "ray" (a Ray task per source)
    ray_address: str | None = None  # Ray cluster to connect to; None starts a local Ray (engine "ray")
    connect_timeout: float = 15.0  # seconds to wait for `ray_address` to answer (refused: fails at once)
    crop_scale: float = 1.6  # crop side = face box side × this
    smooth_seconds: float = 0.5  # Gaussian sigma of the crop-centre smoothing (s)
    passthrough_fill: float = 0.6  # a near-square frame whose face crop would need ≥ this of its side is kept whole
    cut_hist: float = 0.4  # H-S histogram Bhattacharyya distance of a shot cut (with cut_ncc)
    cut_ncc: float = 0.9  # grey-structure correlation below which a histogram change is a cut
    cut_ncc_alone: float = 0.7  # grey-structure correlation below which the frames are a cut anyway
    thresholds: Thresholds = field(default_factory=Thresholds)  # tier checks
    scoring: ScoringSettings = field(default_factory=ScoringSettings)  # scorer weights and options

    def validate(self) -> None:
        checks = [
            (
                16 <= self.size <= 4096 and self.size % 2 == 0,
                f"`size` must be even, 16..4096, got {self.size}",
            ),
            (self.min_seconds > 0, f"`min_seconds` must be > 0, got {self.min_seconds}"),
            (
                self.max_seconds >= self.min_seconds,
                f"`max_seconds` ({self.max_seconds}) must be ≥ `min_seconds` ({self.min_seconds})",
            ),
            (self.workers >= 1, f"`workers` must be ≥ 1, got {self.workers}"),
            (self.engine in ENGINES, f"`engine` must be one of {', '.join(ENGINES)}, got {self.engine!r}"),
            (
                self.ray_address is None or self.engine == "ray",
                f"`ray_address` {self.ray_address} needs `engine` ray",
            ),
            (self.connect_timeout > 0, f"`connect_timeout` must be > 0 seconds, got {self.connect_timeout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message + ".")
        self._check_iqa_thresholds()

    def _check_iqa_thresholds(self) -> None:
        """A ``min_iqa`` threshold on a lower-is-better ``iqa_metric`` (or ``max_iqa`` on a higher-is-better
        one) would keep the worst clips: refused."""
        metric = self.scoring.iqa_metric
        used = [(tier, name) for tier in ("strict", "lenient") for name in ("min_iqa", "max_iqa")
                if getattr(getattr(self.thresholds, tier), name) is not None]  # fmt: skip
        if not metric or not used:
            return
        direction, right = ("lower", "max_iqa") if quality.iqa_lower_better(metric) else ("higher", "min_iqa")
        for tier, name in used:
            if name != right:
                raise UsageError(f"`thresholds` [{tier}] {name}: `iqa_metric` {metric} is {direction}-is-better; "
                                 f"use {right} instead.")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# inputs and planning


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Video files from files, folders (recursive) and .txt lists of paths, de-duplicated, in order."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [line.strip() for line in item.read_text().splitlines()]
            found += [(item.parent / line) for line in lines if line and not line.startswith("#")]
        elif item.exists():
            found.append(item)
        else:
            raise UsageError(f"input not found: {item}; pass video files, folders or a .txt list of paths.")
    return list(dict.fromkeys(p.absolute() for p in found))


def source_key(path: Path) -> str:
    """A stable short id of a source: its stem and a hash of its absolute path."""
    digest = hashlib.sha1(str(Path(path).absolute()).encode()).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}"


def shot_cuts(path: Path, config: CurateConfig) -> list[int]:
    """Frame indices where a new shot starts in the video at ``path`` (see `cuts_in_frames`)."""
    return cuts_in_frames(media.iter_video(path), config)


def cuts_in_frames(frames, config: CurateConfig) -> list[int]:
    """Frame indices where a new shot starts, over an iterable of RGB frames.

    A cut needs the colour histogram (H-S, Bhattacharyya distance) to change AND the grey image's
    structure (normalised cross-correlation at 32×32) to break; structure alone suffices when it
    breaks badly. Brightness flicker changes the histogram but not the structure, so it is no cut.
    """
    cuts, previous = [], None
    for index, frame in enumerate(frames):
        small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.normalize(cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256]), None).flatten()
        grey = cv2.resize(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        grey = (grey - grey.mean()) / (grey.std() + 1e-6)  # (32, 32), zero mean, unit variance
        if previous is not None:
            distance = cv2.compareHist(previous[0], hist, cv2.HISTCMP_BHATTACHARYYA)
            ncc = float((previous[1] * grey).mean())
            if (distance > config.cut_hist and ncc < config.cut_ncc) or ncc < config.cut_ncc_alone:
                cuts.append(index)
        previous = (hist, grey)
    return cuts


def plan_clips(n_frames: int, fps: float, cuts: list[int], min_s: float, max_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of the clips: each shot cut into the fewest equal parts of at most max_s."""
    bounds = [0, *[c for c in cuts if 0 < c < n_frames], n_frames]
    clips = []
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        length = (last - first) / fps
        if length < min_s:
            continue
        parts = math.ceil(length / max_s - 1e-9)
        step = length / parts
        clips += [(first / fps + i * step, first / fps + (i + 1) * step) for i in range(parts)]
    return clips


# ---------------------------------------------------------------------------------------------
# one clip


def resample_frames(frames: np.ndarray, fps: float, target: float = media.VIDEO_FPS) -> np.ndarray:
    """Nearest-frame resampling to ``target`` fps, ``(T', H, W, 3)``."""
    if abs(fps - target) < 1e-3:
        return frames
    n = int(math.floor(len(frames) * target / fps))
    return frames[np.minimum(np.round(np.arange(n) * fps / target).astype(int), len(frames) - 1)]


def crop_track(frames: np.ndarray, config: CurateConfig) -> tuple[list[tuple[int, int, int]] | None, bool, list]:
    """Per-frame square crops (x0, y0, side) following the smoothed face, whether to pass through,
    and the detections made (every ``detect_every``-th frame; the scorers reuse them on a pass-through).

    Crops are None when a face is found on fewer than half of the detector frames.
    """
    height, width = frames.shape[1:3]
    step = max(1, config.scoring.detect_every)
    picked = [(i, faces.detect_faces(frames[i])) for i in range(0, len(frames), step)]
    detections = [boxes for _, boxes in picked]
    found = [(i, boxes[0]) for i, boxes in picked if boxes]
    if len(found) < max(1, len(picked) / 2):
        return None, False, detections
    index = np.array([i for i, _ in found])
    all_frames = np.arange(len(frames))
    sigma = config.smooth_seconds * media.VIDEO_FPS
    cx = gaussian_filter1d(np.interp(all_frames, index, [b.centre[0] for _, b in found]), sigma, mode="nearest")
    cy = gaussian_filter1d(np.interp(all_frames, index, [b.centre[1] for _, b in found]), sigma, mode="nearest")
    size = float(np.median([b.size for _, b in found]))
    side = min(size * config.crop_scale, width, height)
    square = abs(width - height) <= 0.05 * max(width, height)
    if square and side >= config.passthrough_fill * min(width, height):
        return None, True, detections
    boxes = [
        faces.square_crop_box(
            faces.FaceBox(x - size / 2, y - size / 2, x + size / 2, y + size / 2, 1.0), width, height, config.crop_scale
        )
        for x, y in zip(cx, cy, strict=True)
    ]
    return boxes, False, detections


def even_crop(frames: np.ndarray) -> np.ndarray:
    """Drop a last row/column so both sides are even (H.264 yuv420p)."""
    height, width = frames.shape[1:3]
    return frames[:, : height - height % 2, : width - width % 2]


def base_row(clip_id: str, source: Path, start_s: float, end_s: float) -> dict:
    """A manifest row with no clip file yet (for rejected inputs)."""
    return {
        "clip_id": clip_id, "video_path": NO_FILE, "fps": float(media.VIDEO_FPS), "n_frames": 0, "width": 0,
        "height": 0, "audio_sr": media.AUDIO_SR, "duration_s": end_s - start_s, "source": str(source),
        "start_s": start_s, "end_s": end_s, "tier": "reject", "reject_reason": "", "tier_reason": "", "notes": "",
    }  # fmt: skip


def rejected_row(clip_id: str, source: Path, reason: str, start_s: float = 0.0, end_s: float = 0.0) -> dict:
    row = base_row(clip_id, source, start_s, end_s)
    return {**row, "reject_reason": reason, "tier_reason": reason}


def score_frames(frames: np.ndarray, audio: np.ndarray, config: CurateConfig, detections: list | None = None) -> dict:
    """Run the shared analysis once and every scorer; notes of all scorers joined with '; '."""
    clip = analyse_clip(frames, audio, settings=config.scoring, detections=detections)
    scores: dict = {}
    notes = []
    for scorer in SCORERS:
        result = dict(scorer.score(clip))
        if result.get("notes"):
            notes.append(str(result["notes"]))
        result.pop("notes", None)
        scores.update(result)
    scores["notes"] = "; ".join(notes)
    return scores


def process_clip(source: Path, clip_id: str, window: tuple[float, float], whole: bool, out_dir: Path,
                 config: CurateConfig, decoded: tuple[np.ndarray, float] | None = None) -> dict:  # fmt: skip
    """Decode, crop, write and score one clip; a decoding problem gives a rejected row.

    ``decoded``: the whole source's frames and fps when it was decoded once already.
    """
    start_s, end_s = window
    try:
        if decoded is None:
            frames, fps = media.read_video(source, start_s, end_s)
        else:  # the frames read_video would return: start_s <= i / fps < end_s
            frames, fps = decoded[0][round(start_s * decoded[1]) : round(end_s * decoded[1])], decoded[1]
        audio = media.read_audio(source, media.AUDIO_SR, start_s, end_s)
    except FadaError as exc:
        return rejected_row(clip_id, source, f"unreadable: {' '.join(str(exc).split())}", start_s, end_s)
    frames = resample_frames(frames, fps)  # (T, H, W, 3) at 25 fps
    n = len(frames)
    audio = np.pad(audio, (0, max(0, n * 640 - len(audio))))[: n * 640]  # 640 samples per frame
    boxes, passthrough, detections = crop_track(frames, config)
    if boxes is None and not passthrough:
        return rejected_row(clip_id, source, "no face found on most frames", start_s, end_s)
    relative = f"{CLIPS_FOLDER}/{clip_id}.mp4"
    target = out_dir / relative
    if passthrough:
        frames = even_crop(frames)
        if whole and abs(fps - media.VIDEO_FPS) < 1e-3 and source.suffix.lower() == ".mp4":
            shutil.copyfile(source, target)  # already a clip: keep the original bytes
        else:
            media.write_video(target, frames, audio=audio)
    else:
        frames = np.stack(
            [
                cv2.resize(
                    frame[y0 : y0 + side, x0 : x0 + side], (config.size, config.size), interpolation=cv2.INTER_AREA
                )
                for frame, (x0, y0, side) in zip(frames, boxes, strict=True)
            ]
        )  # (T, size, size, 3)
        media.write_video(target, frames, audio=audio)
    row = base_row(clip_id, source, start_s, end_s)
    row.update(video_path=relative, n_frames=n, height=frames.shape[1], width=frames.shape[2],
               duration_s=n / media.VIDEO_FPS)  # fmt: skip
    row.update(score_frames(frames, audio, config, detections if passthrough else None))
    row["tier"], row["tier_reason"] = assign_tier(row, config.thresholds)
    row["reject_reason"] = row["tier_reason"] if row["tier"] == "reject" else ""
    return row


def process_source(source: Path, out_dir: Path, config: CurateConfig, done: frozenset[str]) -> list[dict]:
    """Every row of one source video (skipping clip ids in ``done``); the worker's unit of work."""
    key = source_key(source)
    try:
        info = media.probe_video(source)
        if not info.has_audio:
            return [] if f"{key}-src" in done else [rejected_row(f"{key}-src", source, "no audio track")]
        decoded = None
        if info.n_frames * info.width * info.height * 3 <= DECODE_ONCE_BYTES:
            decoded = media.read_video(source)  # ((T, H, W, 3), fps): cuts and clips from one decode
            cuts = cuts_in_frames(decoded[0], config)
        else:
            cuts = shot_cuts(source, config)
    except FadaError as exc:
        reason = f"unreadable: {' '.join(str(exc).split())}"
        return [] if f"{key}-src" in done else [rejected_row(f"{key}-src", source, reason)]
    windows = plan_clips(info.n_frames, info.fps, cuts, config.min_seconds, config.max_seconds)
    if not windows:
        reason = f"no shot of at least {config.min_seconds:g} s"
        return [] if f"{key}-src" in done else [rejected_row(f"{key}-src", source, reason, 0.0, info.duration_s)]
    rows = []
    for index, window in enumerate(windows):
        clip_id = f"{key}-{index:03d}"
        if clip_id not in done:
            whole = len(windows) == 1 and not cuts
            rows.append(process_clip(source, clip_id, window, whole, out_dir, config, decoded))
    return rows


def scored_seconds(rows: list[dict]) -> float:
    """Seconds of video that were cut, written and scored (rows with a clip file)."""
    return float(sum(r["duration_s"] for r in rows if r["video_path"] != NO_FILE))


# ---------------------------------------------------------------------------------------------
# the unit of work: one source → one Parquet part


def source_of_clip(clip_id: str) -> str:
    """The source key a clip id starts with (``KEY-000`` or ``KEY-src`` → ``KEY``)."""
    return clip_id.rsplit("-", 1)[0]


def done_by_source(done: frozenset[str] | set[str]) -> dict[str, frozenset[str]]:
    """Finished clip ids grouped by source key, so each task is sent only its own."""
    grouped: dict[str, set[str]] = defaultdict(set)
    for clip_id in done:
        grouped[source_of_clip(clip_id)].add(clip_id)
    return {key: frozenset(ids) for key, ids in grouped.items()}


def failed_row(source: Path, reason: str) -> dict:
    """The one rejected row of a source whose processing failed (an error, a dead worker)."""
    return rejected_row(f"{source_key(source)}-src", source, f"failed: {' '.join(reason.split())[:300]}")


def write_part(rows: list[dict], out_dir: Path, source: Path, metadata: dict) -> Path:
    """Write one finished source's rows as ``DIR/manifest.parts/KEY-RANDOM.parquet`` (atomic)."""
    path = out_dir / PARTS_FOLDER / f"{source_key(source)}-{uuid.uuid4().hex[:8]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(pd.DataFrame(rows), path, "fada curate", metadata)
    return path


def failed_part(source: Path, reason: str, out_dir: Path, metadata: dict) -> list[dict]:
    """The rejected row of a source whose worker died, written as the source's part."""
    rows = [failed_row(source, reason)]
    write_part(rows, out_dir, source, metadata)
    return rows


def curate_source(source: Path, out_dir: Path, config: CurateConfig, done: frozenset[str],
                  metadata: dict) -> list[dict]:  # fmt: skip
    """Every new row of one source, written as its Parquet part before returning; the engines' task.

    Any error inside becomes the source's rejected row with the error as its reason, so one bad
    video never stops a run over many thousands (the broad except below is that boundary). Rows
    are only ever written for a whole source, so a source with any finished clip id is finished:
    on resume it is skipped without being opened.
    """
    if done:
        return []
    try:
        rows = process_source(source, out_dir, config, done)
    except Exception as exc:  # the boundary: every failure of one source is recorded as its row, none is silent
        rows = [failed_row(source, f"{type(exc).__name__}: {exc}")]
    if rows:
        write_part(rows, out_dir, source, metadata)
    return rows


def part_paths(out_dir: Path) -> list[Path]:
    """The Parquet parts a run (maybe a killed one) left in ``DIR/manifest.parts``."""
    folder = out_dir / PARTS_FOLDER
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def read_parts(out_dir: Path) -> pd.DataFrame | None:
    """All parts as one frame (None when there are none); validated when merged by `write_manifest`."""
    paths = part_paths(out_dir)
    if not paths:
        return None
    try:  # one Arrow concatenation: a part without score columns (a rejected source) gets nulls there
        table = pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as exc:
        folder = out_dir / PARTS_FOLDER
        raise ManifestError(f"cannot read the parts in {folder} ({exc}); delete the broken one.") from exc
    return table.to_pandas()


def merge_parts(out_dir: Path, metadata: dict) -> Path:
    """Merge the manifest (if any) and every part into ``manifest.parquet``, sorted by clip id; drop the parts.

    The manifest is replaced atomically before any part is deleted, so a kill at any moment keeps
    every row. A clip id present twice (a part merged but not yet deleted) keeps its newest row.
    """
    manifest_path = out_dir / MANIFEST_NAME
    paths = part_paths(out_dir)
    frames = [read_manifest(manifest_path)] if manifest_path.exists() else []
    frames = [f for f in [*frames, read_parts(out_dir)] if f is not None and len(f)]
    if frames:
        merged = pd.concat(frames, ignore_index=True).drop_duplicates("clip_id", keep="last")
        merged = merged.sort_values("clip_id", kind="stable").reset_index(drop=True)
    else:
        merged = pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    write_manifest(merged, manifest_path, "fada curate", metadata)
    for part in paths:
        part.unlink()
    shutil.rmtree(out_dir / PARTS_FOLDER, ignore_errors=True)  # only temporary files of killed writes remain
    return manifest_path


# ---------------------------------------------------------------------------------------------
# engines: yield (source, rows) as sources finish


def iter_local(sources: list[Path], out_dir: Path, config: CurateConfig, done: dict[str, frozenset[str]],
               metadata: dict) -> Iterator[tuple[Path, list[dict]]]:  # fmt: skip
    """Sources in this process (``workers`` = 1) or a spawn process pool; a dead worker's source is a failed row."""
    if config.workers == 1:
        for source in sources:
            yield source, curate_source(source, out_dir, config, done.get(source_key(source), frozenset()), metadata)
        return
    with ProcessPoolExecutor(max_workers=config.workers, mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(curate_source, s, out_dir, config, done.get(source_key(s), frozenset()), metadata): s
            for s in sources
        }
        for future in as_completed(futures):
            source = futures[future]
            try:
                yield source, future.result()
            except BrokenProcessPool as exc:  # a worker died (killed, out of memory): the pool is gone
                raise FadaError(
                    f"a curate worker died while on {source} ({exc}); finished sources are kept, "
                    "rerun with `resume` (fewer `workers` if memory ran out)."
                ) from exc


def iter_source_rows(sources: list[Path], out_dir: Path, config: CurateConfig, done: dict[str, frozenset[str]],
                     metadata: dict) -> Iterator[tuple[Path, list[dict]]]:  # fmt: skip
    """Yield (source, rows) as sources finish, on the engine ``config.engine`` names.

    Sources with a finished clip id were finished whole (see `curate_source`) and are yielded
    with no rows at once, without a task.
    """
    todo = []
    for source in sources:
        if done.get(source_key(source)):
            yield source, []
        else:
            todo.append(source)
    if config.engine == "ray":
        done_by_path = {source: done.get(source_key(source), frozenset()) for source in todo}
        yield from curate_ray.iter_ray(todo, out_dir, config, done_by_path, metadata, curate_source, failed_part)
    else:
        yield from iter_local(todo, out_dir, config, done, metadata)


def run_metadata(config: CurateConfig) -> dict:
    """What the manifest's key-value metadata records about this run."""
    return {
        "thresholds": config.thresholds.to_dict(),
        "scorers": {s.NAME: list(s.COLUMNS) for s in SCORERS},
        "scoring": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config.scoring).items()},
        "crop": {"size": config.size, "crop_scale": config.crop_scale, "smooth_seconds": config.smooth_seconds},
        "clip_seconds": [config.min_seconds, config.max_seconds],
    }


@dataclass(frozen=True)
class CurateSummary:
    """What a run did: printed as a table and as --json."""

    manifest: Path  # the manifest written
    tiers: dict[str, int]  # clips per tier in the whole manifest
    reasons: dict[str, int]  # rejected clips per failing check (whole manifest)
    new_rows: int  # rows added by this run
    skipped_sources: int  # sources whose every clip was already in the manifest (resume)
    video_seconds: float  # seconds of video scored by this run
    wall_seconds: float  # wall time of this run
    workers: int  # worker processes

    @property
    def seconds_per_second(self) -> float:
        return self.video_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "manifest": str(self.manifest), "video_s_per_wall_s": self.seconds_per_second}


def reason_key(reason: str) -> str:
    """The check a reason names (its first word, e.g. ``|sync_proxy_offset|`` or ``unreadable:``)."""
    return reason.split(" ")[0].rstrip(":").strip("|") if reason else ""


def summarise(df: pd.DataFrame, manifest: Path, new_rows: list[dict], skipped: int, wall: float,
              workers: int) -> CurateSummary:  # fmt: skip
    rejected = df.loc[df["tier"] == "reject", "reject_reason"] if len(df) else pd.Series([], dtype=str)
    return CurateSummary(
        manifest=manifest,
        tiers={tier: int((df["tier"] == tier).sum()) if len(df) else 0 for tier in ("A", "B", "reject")},
        reasons=dict(Counter(reason_key(r) for r in rejected).most_common()),
        new_rows=len(new_rows),
        skipped_sources=skipped,
        video_seconds=scored_seconds(new_rows),
        wall_seconds=wall,
        workers=workers,
    )


def run_curate(inputs: list[Path], out_dir: Path, config: CurateConfig, resume: bool = False,
               quiet: bool = False) -> CurateSummary:  # fmt: skip
    """Curate every input video into ``out_dir`` (clips/, manifest.parquet, thresholds.yaml)."""
    # 1. check inputs, the cluster address and the output folder (nothing is written before)
    config.validate()
    sources = collect_inputs(inputs)
    if not sources:
        raise UsageError(f"no videos found in {[str(i) for i in inputs]}; expected {sorted(VIDEO_SUFFIXES)} files.")
    curate_ray.check_ray_address(config)
    manifest_path, parts_folder = out_dir / MANIFEST_NAME, out_dir / PARTS_FOLDER
    if manifest_path.exists() and not resume:
        raise UsageError(f"{manifest_path} already exists; pass `resume` to continue it or choose another `out`.")
    if parts_folder.is_dir() and any(parts_folder.glob("*.parquet")) and not resume:
        raise UsageError(
            f"{parts_folder} holds the finished sources of an interrupted run; "
            "pass `resume` to continue it or choose another `out`."
        )
    (out_dir / CLIPS_FOLDER).mkdir(parents=True, exist_ok=True)
    parts_folder.mkdir(exist_ok=True)
    write_thresholds(config.thresholds, out_dir / THRESHOLDS_NAME)
    # 2. rows already done (resume): the manifest and the parts of an interrupted run
    earlier = [read_manifest(manifest_path)] if manifest_path.exists() else []
    earlier = [f for f in [*earlier, read_parts(out_dir)] if f is not None]
    done = done_by_source(frozenset(i for frame in earlier for i in frame["clip_id"]))
    # 3. score sources; each finished source writes its own part
    metadata = run_metadata(config)
    new_rows: list[dict] = []
    skipped = 0
    started = time.perf_counter()
    with make_progress(quiet) as progress:
        task = progress.add_task(f"curating videos ({config.engine})", total=len(sources))
        for source, source_rows in iter_source_rows(sources, out_dir, config, done, metadata):
            skipped += not source_rows
            new_rows += source_rows
            progress.update(task, advance=1, description=f"curating {source.name}")
    # 4. merge the parts into the manifest (atomic), then the summary over the whole manifest
    merge_parts(out_dir, metadata)
    wall = time.perf_counter() - started
    df = read_manifest(manifest_path)
    return summarise(df, manifest_path, new_rows, skipped, wall, config.workers)
