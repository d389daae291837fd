"""`fada eval`: generated videos against reference videos with the metrics of DESIGN §6.

1. list both sets (a clip manifest or a folder of mp4) and pair them by file stem;
2. load the learned extractors the user named (each checked against its contract, file hashed);
3. analyse every video once, each reference before its generated partner: frames, audio,
   face-mesh landmarks, the mouth window (from the mesh, else found once on the reference's
   still or the video's clearest stills, `metrics.mouth_window`); per-video scores (SyncNet, sync
   proxy, BRISQUE, Q-Align, PIQE, sharpness, NFE-D from the generation stats JSON), full-reference
   scores of the pair (PSNR, SSIM, LPIPS) and per-frame / per-clip features for the set metrics;
4. set metrics: Fréchet distances (FID, FVD, FVD-R, E-FID, E-FID proxy) and per-video means;
5. write ``metrics.json`` and ``per_video.parquet`` into the output folder.

A metric whose weights were not given is reported ``unavailable`` with the option that enables
it; its ``*_proxy`` is a separate row, never a stand-in.

Image quality: the ``iqa`` row is BRISQUE (`pipelines.metrics.brisque`, lower is better) on every
`quality.FRAME_STEP`-th frame at the frames' own size: it needs no download and ranked clean demo
frames above blurred, noisy and JPEG ones and pure noise last (`bench/verify_eval.py`). The learned
IQA (``qalign`` by default, the paper's Q-Align, 1–5, higher is better) is its own row, run only
where its weights are in the local cache; PIQE and sharpness are extra rows under their own names.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import faces
from pipelines.devices import resolve_device
from pipelines.errors import InputFileError, ManifestError, UsageError
from pipelines.faces import FaceMeshTracker
from pipelines.manifest import clip_path, read_manifest
from pipelines.media import AUDIO_SR, probe_video, read_audio, read_video
from pipelines.metrics import extractors, mouth_window, proxies, quality
from pipelines.metrics.brisque import EXTRACTOR as BRISQUE_EXTRACTOR
from pipelines.metrics.brisque import brisque
from pipelines.metrics.frechet import frechet_distance_of_features
from pipelines.progress import log, make_progress

SETS = ("generated", "reference")
FID_STABLE_FRAMES = 2048  # DESIGN §6: fewer Inception frames do not give a stable FID
WEIGHT_OPTIONS = {
    "fid": "inception_weights",
    "fvd": "i3d_weights",
    "fvd_r": "r3d_weights",
    "e_fid": "expression_weights",
}


@dataclass(frozen=True)
class EvalConfig:
    """Which extractors to load and how to run them; a None weights path makes its metric unavailable."""

    syncnet_weights: Path | None = None  # SyncNet `syncnet_v2.model` → Sync-D (LSE-D), Sync-C (LSE-C)
    inception_weights: Path | None = None  # Inception TorchScript → FID
    i3d_weights: Path | None = None  # I3D TorchScript → FVD
    r3d_weights: Path | None = None  # 3D-ResNet TorchScript → FVD-R
    expression_weights: Path | None = None  # expression-coefficient TorchScript → E-FID
    iqa_metric: str | None = "qalign"  # learned pyiqa IQA from the local cache, its own row; None: none
    nr_iqa_metric: str = "piqe"  # weight-free pyiqa metric (`metrics.quality.WEIGHT_FREE_IQA`), always run
    device: str = "cpu"  # where the TorchScript extractors run (auto, cpu, cuda[:N], mps)
    batch_size: int = 16  # frames (or 16-frame clips) per extractor call
    e_fid_components: int = 16  # PCA components of the E-FID proxy

    def __post_init__(self) -> None:
        if self.nr_iqa_metric not in quality.WEIGHT_FREE_IQA:
            choices = ", ".join(quality.WEIGHT_FREE_IQA)
            raise UsageError(f"weight-free IQA metric {self.nr_iqa_metric!r} is not available; use one of {choices}.")
        if self.iqa_metric in (quality.BRISQUE, self.nr_iqa_metric):
            raise UsageError(f"`iqa_metric` {self.iqa_metric} is always reported (the iqa row is BRISQUE, "
                             f"{self.nr_iqa_metric} has its own row); name a learned metric such as qalign, "
                             "or none.")  # fmt: skip

    @property
    def learned_iqa(self) -> str:
        """The learned IQA row's name: the chosen metric, or qalign when none was chosen."""
        return self.iqa_metric or quality.QALIGN_METRICS[0]


@dataclass(frozen=True)
class MetricResult:
    """One row of the report."""

    name: str  # piqe, iqa, sharpness, psnr, ssim, lpips, sync_d, sync_c, sync_proxy, fid, fvd, e_fid, ...
    status: str  # ok | unavailable (weights not given) | insufficient (too few samples)
    value: float | None  # on the generated set; a distance between the sets for Fréchet metrics
    reference_value: float | None  # the same per-video metric on the reference set; None for distances
    n: int  # generated samples behind `value` (see `unit`)
    n_reference: int  # reference samples
    unit: str  # what n counts: videos | frames | clips
    better: str  # lower | higher | "" (NFE-D: a cost)
    extractor: str | None  # extractor name
    extractor_sha256: str | None  # sha256 of its weights file (None for weight-free or pyiqa-cache extractors)
    enable: str | None = None  # the option that makes an unavailable metric available
    note: str = ""  # why unavailable / insufficient, or a caveat
    route: str = ""  # proxies: how the face was read (face mesh | mouth window | a count of each)


@dataclass(frozen=True)
class EvalReport:
    metrics: list[MetricResult]
    per_video: pd.DataFrame  # one row per (set, stem)
    pairs: int  # videos evaluated in each set
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # set → stems without a partner


# ---------------------------------------------------------------------------------------------
# 1. sources


def list_videos(source: Path, option: str) -> dict[str, Path]:
    """stem → mp4 path of a folder of mp4 files or a clip manifest (Parquet)."""
    source = Path(source)
    if source.is_dir():
        videos = {path.stem: path for path in sorted(source.glob("*.mp4"))}
        if not videos:
            raise InputFileError(f"{option} {source}: no .mp4 files in the folder; point it at the videos.")
        return videos
    if source.is_file() and source.suffix == ".parquet":
        df = read_manifest(source, required=("clip_id", "video_path"))
        videos: dict[str, Path] = {}
        for relative in df["video_path"]:
            path = clip_path(source, relative)
            if path.stem in videos:
                raise ManifestError(f"{option} {source}: two clips share the file stem {path.stem!r}; rename one.")
            videos[path.stem] = path
        return videos
    raise InputFileError(f"{option} {source}: not a folder of mp4 files or a manifest.parquet; check the path.")


def pair_videos(generated: dict[str, Path], reference: dict[str, Path]) -> list[str]:
    """The stems present in both sets, sorted; UsageError when there are none."""
    stems = sorted(set(generated) & set(reference))
    if not stems:
        raise UsageError(
            f"no generated video shares a file stem with a reference video (generated: "
            f"{', '.join(list(generated)[:3])}…; reference: {', '.join(list(reference)[:3])}…); "
            "name each generated video after its reference clip."
        )
    return stems


# ---------------------------------------------------------------------------------------------
# 2. extractors


@dataclass(frozen=True)
class LoadedExtractors:
    torchscript: dict[str, extractors.Extractor]  # metric → extractor, only those given
    syncnet: extractors.SyncNetExtractor | None
    iqa_problem: str | None  # why the learned IQA metric cannot run (None: its weights are local)
    lpips_problem: str | None  # why LPIPS cannot run (None: its weights are local)


def load_extractors(config: EvalConfig) -> LoadedExtractors:
    device = resolve_device(config.device)
    torchscript = {
        metric: extractors.load_torchscript(getattr(config, attribute), extractors.CONTRACTS[metric], device)
        for metric, attribute in WEIGHT_OPTIONS.items()
        if getattr(config, attribute) is not None
    }
    syncnet = extractors.load_syncnet(config.syncnet_weights) if config.syncnet_weights is not None else None
    problem = quality.learned_iqa_problem(config.iqa_metric) if config.iqa_metric else "--iqa-metric none"
    if problem is None:  # built once here, on the extractors' device
        problem = quality.learned_iqa_load_problem(config.iqa_metric, str(device))
    return LoadedExtractors(torchscript, syncnet, problem, quality.lpips_weights_problem())


# ---------------------------------------------------------------------------------------------
# 3. one video


def read_nfe(video: Path) -> tuple[float | None, str]:
    """NFE-D from the generation stats ``VIDEO.json`` beside the video: (nfe, note)."""
    stats = video.with_suffix(".json")
    if not stats.is_file():
        return None, f"no stats file {stats.name}"
    try:
        payload = json.loads(stats.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(
            f"generation stats {stats} is not valid JSON ({exc}); regenerate it with `fada generate`."
        ) from exc
    nfe = payload.get("nfe") if isinstance(payload, dict) else None
    if not isinstance(nfe, int | float) or isinstance(nfe, bool):
        return None, f"{stats.name} has no numeric 'nfe' field"
    return float(nfe), ""


@dataclass(frozen=True)
class VideoAnalysis:
    """What one video leaves for the set metrics and its partner."""

    row: dict  # the per-video row (per_video.parquet)
    samples: dict  # metric → features; "landmarks": (N, 468, 2) or None; "window": (T, D) or None
    frames: np.ndarray  # (T, H, W, 3) uint8, for the full-reference metrics of its pair
    still: np.ndarray  # (H, W, 3) uint8 temporal median: where its partner may look for the mouth


def _mouth_anchor(frames, landmarks, portrait) -> mouth_window.MouthAnchor | None:
    """The mouth window of a video: from its own mesh landmarks where the mesh read half the
    frames, else located once on the portrait / the video's clearest stills."""
    mesh_frames = [p for p in landmarks if p is not None]
    if len(mesh_frames) >= max(2, len(landmarks) // 2):
        points = np.median(np.stack(mesh_frames), axis=0)  # (468, 2)
        mouth = points[list(faces.MOUTH_CORNERS)].mean(axis=0)
        eyes = points[list(faces.EYE_OUTER_CORNERS)].mean(axis=0)
        return mouth_window.MouthAnchor((float(mouth[0]), float(mouth[1])), faces.eye_distance(points),
                                        (float(eyes[0]), float(eyes[1])), np.median(frames, axis=0).astype(np.uint8),
                                        "face mesh on the frames")  # fmt: skip
    return mouth_window.locate_mouth(frames, portrait)


def analyse_video(path: Path, loaded: LoadedExtractors, config: EvalConfig, with_nfe: bool,
                  portrait: np.ndarray | None = None) -> VideoAnalysis:  # fmt: skip
    """Per-video scores and samples; ``portrait``: a still of the same face (its reference video)
    where the mouth is looked for first if the face mesh cannot read this video."""
    frames, fps = read_video(path)  # (T, H, W, 3) uint8
    has_audio = probe_video(path).has_audio
    with FaceMeshTracker() as tracker:
        landmarks = [tracker.landmarks(frame) for frame in frames]
    notes: list[str] = []
    row: dict = {"video_path": str(path), "n_frames": len(frames), "fps": fps, "has_audio": has_audio}
    row["face_frames"] = sum(points is not None for points in landmarks)
    row["sharpness"] = proxies.sharpness(frames)
    scored = frames[:: quality.FRAME_STEP]  # (T', H, W, 3) at the video's own size
    row[quality.BRISQUE] = brisque(scored)
    row[config.nr_iqa_metric] = quality.weight_free_iqa(scored, config.nr_iqa_metric)
    row[config.learned_iqa] = math.nan
    if loaded.iqa_problem is None:
        try:
            row[config.learned_iqa] = quality.pyiqa_score(scored, config.iqa_metric, str(resolve_device(config.device)))
        except (RuntimeError, OSError, ValueError) as exc:  # weights present but unusable on this video
            notes.append(f"{config.iqa_metric} failed ({' '.join(str(exc).split())[:160]})")
    anchor = _mouth_anchor(frames, landmarks, portrait)
    row["mouth_found_by"] = anchor.source if anchor is not None else ""
    if has_audio:
        audio = read_audio(path)
        for scores in (proxies.syncnet_scores(frames, audio, config.syncnet_weights),
                       proxies.sync_proxy(frames, audio, fps, AUDIO_SR, landmarks, anchor)):  # fmt: skip
            notes += [scores.pop("notes")] if "notes" in scores else []
            row.update(scores)
    else:
        notes.append("no audio track: no sync scores")
    if with_nfe:
        row["nfe"], nfe_note = read_nfe(path)
        notes += [nfe_note] if nfe_note else []
    row["notes"] = "; ".join(notes)
    samples = {
        metric: extractor.features(
            extractors.video_clips(frames) if extractor.contract.clips else frames, config.batch_size
        )
        for metric, extractor in loaded.torchscript.items()
    }
    mesh_read = row["face_frames"] >= max(2, len(frames) // 2)
    samples["landmarks"] = np.stack([p for p in landmarks if p is not None]) if mesh_read else None
    samples["window"] = (
        mouth_window.window_descriptors(frames, mouth_window.follow_mouth(frames, anchor), anchor.eye_distance)
        if anchor is not None
        else None
    )
    return VideoAnalysis(row, samples, frames, np.median(frames, axis=0).astype(np.uint8))


def paired_scores(generated: VideoAnalysis, reference: VideoAnalysis, lpips_ready: bool) -> dict[str, float]:
    """Full-reference scores of a generated video against its reference: psnr, ssim (and lpips)."""
    metrics = ("psnr", "ssim", "lpips") if lpips_ready else ("psnr", "ssim")
    return quality.full_reference(generated.frames, reference.frames, metrics)


# ---------------------------------------------------------------------------------------------
# 4. set metrics


def _finite_mean(values: pd.Series) -> tuple[float | None, int]:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    finite = finite[np.isfinite(finite)]
    return (float(finite.mean()), len(finite)) if len(finite) else (None, 0)


def per_video_metric(name, df, column, better, extractor, sha256=None, transform=None, sets=SETS,
                     route="") -> MetricResult:  # fmt: skip
    """Mean of a per-video column over each set (NaN videos left out and not counted)."""
    values = {s: df.loc[df["set"] == s, column] if column in df else pd.Series(dtype=float) for s in SETS}
    if transform is not None:
        values = {s: transform(v) for s, v in values.items()}
    (gen, n_gen), (ref, n_ref) = (_finite_mean(values[s]) if s in sets else (None, 0) for s in SETS)
    status, note = ("ok", "") if n_gen else ("insufficient", f"no generated video gave a finite {column}")
    return MetricResult(name=name, status=status, value=gen, reference_value=ref, n=n_gen, n_reference=n_ref,
                        unit="videos", better=better, extractor=extractor, extractor_sha256=sha256, note=note,
                        route=route)  # fmt: skip


def unavailable(name: str, unit: str, better: str, enable: str, note: str = "") -> MetricResult:
    return MetricResult(name=name, status="unavailable", value=None, reference_value=None, n=0, n_reference=0,
                        unit=unit, better=better, extractor=None, extractor_sha256=None, enable=enable,
                        note=note)  # fmt: skip


def frechet_metric(name, generated, reference, unit, extractor, sha256, note="", route="") -> MetricResult:
    n_gen, n_ref = len(generated), len(reference)
    common = dict(name=name, reference_value=None, n=n_gen, n_reference=n_ref, unit=unit, better="lower",
                  extractor=extractor, extractor_sha256=sha256, route=route)  # fmt: skip
    if n_gen < 2 or n_ref < 2:
        reason = f"a Fréchet distance needs >= 2 {unit} per set, got {n_gen} generated and {n_ref} reference"
        return MetricResult(status="insufficient", value=None, note=reason, **common)
    value = frechet_distance_of_features(generated, reference)
    return MetricResult(status="ok", value=value, note=note, **common)


def _route_counts(df: pd.DataFrame, column: str) -> str:
    """``face mesh`` / ``mouth window`` or a count of each where the videos differ."""
    routes = df[column].replace("", np.nan).dropna() if column in df else pd.Series(dtype=str)
    counts = routes.value_counts()
    if len(counts) <= 1:
        return str(counts.index[0]) if len(counts) else ""
    return ", ".join(f"{route} {n}" for route, n in counts.items())


def e_fid_proxy_metric(samples: dict[str, list[dict]], config: EvalConfig) -> MetricResult:
    """The E-FID proxy on face-mesh landmarks where the mesh read every video, else on mouth windows."""
    videos = [v for s in SETS for v in samples[s]]
    mesh = all(v["landmarks"] is not None for v in videos)
    route, extractor = (proxies.MESH_ROUTE, proxies.E_FID_PROXY_EXTRACTOR) if mesh else (
        proxies.WINDOW_ROUTE, proxies.E_FID_WINDOW_EXTRACTOR)  # fmt: skip
    key = "landmarks" if mesh else "window"
    per_set = {s: [v[key] for v in samples[s] if v[key] is not None] for s in SETS}
    compute = proxies.e_fid_proxy if mesh else proxies.window_e_fid_proxy
    common = dict(name="e_fid_proxy", reference_value=None, unit="frames", better="lower", extractor=extractor,
                  extractor_sha256=None, route=route)  # fmt: skip
    try:
        proxy = compute(per_set["generated"], per_set["reference"], config.e_fid_components)
    except ValueError as exc:
        return MetricResult(status="insufficient", value=None, n=0, n_reference=0, note=str(exc), **common)
    note = f"{proxy.n_components} PCA components"
    note += "" if mesh else "; the face mesh could not read every video"
    return MetricResult(status="ok", value=proxy.value, n=proxy.n_generated, n_reference=proxy.n_reference,
                        note=note, **common)  # fmt: skip


def set_metrics(df: pd.DataFrame, samples: dict[str, list[dict]], loaded: LoadedExtractors, config: EvalConfig):
    results: list[MetricResult] = []
    # NFE-D: counted by the generating pipeline, read from its stats JSON
    nfe = df.loc[df["set"] == "generated", "nfe"].dropna() if "nfe" in df else pd.Series(dtype=float)
    if len(nfe):
        n_videos = int((df["set"] == "generated").sum())
        notes = [f"varies across videos: {nfe.min():g}..{nfe.max():g}; mean shown"] if nfe.nunique() > 1 else []
        notes += [f"{n_videos - len(nfe)} of {n_videos} videos have no stats"] if len(nfe) < n_videos else []
        results.append(
            MetricResult(
                name="nfe_d",
                status="ok",
                value=float(nfe.mean()),
                reference_value=None,
                n=len(nfe),
                n_reference=0,
                unit="videos",
                better="",
                extractor="stats json",
                extractor_sha256=None,
                note="; ".join(notes),
            )  # fmt: skip
        )
    else:
        results.append(unavailable("nfe_d", "videos", "", "VIDEO.json with 'nfe' beside each video (`fada generate`)"))
    # image quality: BRISQUE (the `iqa` row), the learned IQA (local cache only), PIQE, sharpness (not an IQA)
    results.append(per_video_metric("iqa", df, quality.BRISQUE, "lower", BRISQUE_EXTRACTOR))
    learned = config.learned_iqa
    if loaded.iqa_problem is None:
        better = "lower" if quality.iqa_lower_better(learned) else "higher"
        results.append(per_video_metric(learned, df, learned, better, f"pyiqa {learned} (local cache)"))
    else:
        enable = f"--iqa-metric {learned} with its weights in pyiqa's cache"
        if learned in quality.QALIGN_METRICS:
            enable = f"--iqa-metric {learned} with {quality.QALIGN_REPO} in the Hugging Face cache"
        results.append(unavailable(learned, "videos", "higher", enable, loaded.iqa_problem))
    nr = config.nr_iqa_metric
    nr_better = "lower" if quality.iqa_lower_better(nr) else "higher"
    results.append(per_video_metric(nr, df, nr, nr_better, f"pyiqa {nr} (weight-free)"))
    results.append(per_video_metric("sharpness", df, "sharpness", "higher", proxies.SHARPNESS_EXTRACTOR))
    # full-reference metrics of each generated video against its reference (value on the generated set)
    for name, better in (("psnr", "higher"), ("ssim", "higher")):
        results.append(per_video_metric(name, df, name, better, f"pyiqa {name}", sets=("generated",)))
    if loaded.lpips_problem is None:
        results.append(per_video_metric("lpips", df, "lpips", "lower", "pyiqa lpips (local weights)",
                                        sets=("generated",)))  # fmt: skip
    else:
        results.append(
            unavailable("lpips", "videos", "lower", "LPIPS weights in the local caches", loaded.lpips_problem)
        )
    # Sync-D / Sync-C (SyncNet) and the weight-free proxy
    if loaded.syncnet is not None:
        results.append(per_video_metric("sync_d", df, "sync_dist", "lower", loaded.syncnet.name, loaded.syncnet.sha256))
        results.append(
            per_video_metric("sync_c", df, "sync_conf", "higher", loaded.syncnet.name, loaded.syncnet.sha256)
        )
    else:
        results += [
            unavailable(name, "videos", better, "--syncnet-weights PATH (syncnet_v2.model)")
            for name, better in (("sync_d", "lower"), ("sync_c", "higher"))
        ]
    route = _route_counts(df[df["set"] == "generated"], "sync_proxy_route")
    for name, column, better, extractor, transform in (
        ("sync_proxy", "sync_proxy_conf", "higher", proxies.SYNC_PROXY_EXTRACTOR, None),
        ("sync_proxy_r", "sync_proxy_r", "higher", proxies.SYNC_LAG_EXTRACTOR, None),
        ("sync_proxy_offset", "sync_proxy_offset", "lower", proxies.SYNC_LAG_EXTRACTOR, lambda v: v.abs()),
    ):
        results.append(per_video_metric(name, df, column, better, extractor, transform=transform, route=route))
    # Fréchet distances of learned features
    for metric in WEIGHT_OPTIONS:
        contract = extractors.CONTRACTS[metric]
        unit = "clips" if contract.clips else "frames"
        extractor = loaded.torchscript.get(metric)
        if extractor is None:
            results.append(unavailable(metric, unit, "lower", f"{contract.option} PATH"))
            continue
        gen, ref = (np.concatenate([v[metric] for v in samples[s]]) for s in SETS)
        note = (
            f"N < {FID_STABLE_FRAMES} frames: not a stable figure (DESIGN §6)"
            if metric == "fid" and len(gen) < FID_STABLE_FRAMES
            else ""
        )
        results.append(frechet_metric(metric, gen, ref, unit, extractor.name, extractor.sha256, note))
    # E-FID proxy (expression descriptor: face-mesh landmarks, or mouth windows where the mesh fails)
    results.append(e_fid_proxy_metric(samples, config))
    return results


# ---------------------------------------------------------------------------------------------
# 5. the driver and its outputs


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def report_payload(report: EvalReport, generated: Path, reference: Path, config: EvalConfig) -> dict:
    """What `metrics.json` holds (and `--json` prints)."""
    return {
        "generated": str(generated),
        "reference": str(reference),
        "pairs": report.pairs,
        "unpaired": report.unpaired,
        "config": {key: _json_safe(value) for key, value in asdict(config).items()},
        "metrics": [{key: _json_safe(value) for key, value in asdict(m).items()} for m in report.metrics],
    }


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def evaluate(
    generated: Path, reference: Path, out_dir: Path, config: EvalConfig = EvalConfig(), quiet: bool = False
) -> EvalReport:
    """Evaluate the generated set against the reference set; write metrics.json and per_video.parquet."""
    # 1. sources and pairs
    videos = {"generated": list_videos(generated, "`generated`"), "reference": list_videos(reference, "`reference`")}
    stems = pair_videos(videos["generated"], videos["reference"])
    unpaired = {s: sorted(set(videos[s]) - set(stems)) for s in SETS}
    for s in SETS:
        if unpaired[s]:
            log(
                f"{len(unpaired[s])} {s} video(s) without a partner left out: {', '.join(unpaired[s][:5])}", quiet=quiet
            )
    # 2. extractors (a bad file fails here, before any video is read)
    loaded = load_extractors(config)
    # 3. every video once
    rows, samples = {s: [] for s in SETS}, {s: [] for s in SETS}
    with make_progress(quiet) as progress:
        task = progress.add_task("eval videos", total=2 * len(stems))
        for stem in stems:
            reference_video = analyse_video(videos["reference"][stem], loaded, config, with_nfe=False)
            progress.advance(task)
            # the reference's median still is where the generated video's mouth is looked for first
            generated_video = analyse_video(videos["generated"][stem], loaded, config, with_nfe=True,
                                            portrait=reference_video.still)  # fmt: skip
            generated_video.row.update(paired_scores(generated_video, reference_video, loaded.lpips_problem is None))
            progress.advance(task)
            for s, analysis in (("generated", generated_video), ("reference", reference_video)):
                rows[s].append({"set": s, "stem": stem, **analysis.row})
                samples[s].append(analysis.samples)
    per_video = pd.DataFrame(rows["generated"] + rows["reference"])
    # 4. set metrics
    report = EvalReport(set_metrics(per_video, samples, loaded, config), per_video, len(stems), unpaired)
    # 5. outputs
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(report_payload(report, generated, reference, config), indent=2) + "\n"
    _write_atomic(out_dir / "metrics.json", lambda tmp: tmp.write_text(payload))
    _write_atomic(out_dir / "per_video.parquet", lambda tmp: per_video.to_parquet(tmp, index=False))
    return report
