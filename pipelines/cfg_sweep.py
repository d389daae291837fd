"""`fada cfg-sweep`: metrics against the audio and the reference CFG scale (the paper's Figs. 3 and 4).

1. list the held-out set (a clip manifest or a folder of mp4): each clip's speech drives one
   generated video named after it, from ``image`` or, without one, the clip's first frame;
2. generate the set at every grid point: the audio scales with the reference scale at its default,
   then the reference scales with the audio scale at its default (a point on both axes is made once);
3. evaluate each point against the held-out clips with `pipelines.evaluate` (sync / E-FID / IQA
   proxies always; FID / FVD when their weights are given);
4. write ``cfg_sweep.parquet`` + ``cfg_sweep.json`` (one row per axis and scale) and one PNG per axis
   with a panel per metric.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.errors import UsageError
from pipelines.evaluate import EvalConfig, EvalReport, evaluate, list_videos
from pipelines.generate import TEACHER_DDIM, GenerateConfig, GenerationStats
from pipelines.media import read_video
from pipelines.pipeline import FadaPipeline
from pipelines.progress import log

SWEEP_METRICS = ("sync_proxy", "e_fid_proxy", "iqa", "piqe", "sharpness", "fid", "fvd", "fvd_r", "e_fid", "sync_c",
                 "sync_d")  # fmt: skip
AXES = {"audio": "cfg_audio", "ref": "cfg_ref"}  # sweep axis → GenerateConfig field


@dataclass(frozen=True)
class SweepConfig:
    """The grid and how each point is generated."""

    audio_scales: tuple[float, ...] = (1.0, 3.5, 6.5, 9.0)  # cfg_a values (cfg_r fixed at generate's default)
    ref_scales: tuple[float, ...] = (1.0, 1.5, 2.5, 3.5)  # cfg_r values (cfg_a fixed at generate's default)
    generate: GenerateConfig = GenerateConfig(crop=False, cfg_ref=TEACHER_DDIM.default_cfg_ref)  # fixed scales
    max_videos: int | None = None  # use at most this many held-out clips (None = all)

    def __post_init__(self) -> None:
        for name in ("audio_scales", "ref_scales"):
            values = getattr(self, name)
            if not values or not all(math.isfinite(v) for v in values):
                raise UsageError(f"`{name}` {values!r} is not valid; give finite numbers such as 1,3.5,6.5,9.")
        if self.max_videos is not None and self.max_videos < 1:
            raise UsageError(f"`max_videos` {self.max_videos} is not valid; use 1 or more.")


@dataclass(frozen=True)
class HeldOutClip:
    """One generated video's inputs, named after its reference clip."""

    stem: str  # the reference clip's file stem (evaluate pairs by it)
    image: Path  # portrait
    audio: Path  # speech (the clip's own audio track)


def parse_scales(text: str, field: str) -> tuple[float, ...]:
    """'1,3.5,6.5' → (1.0, 3.5, 6.5); UsageError naming the `SweepConfig` field otherwise."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"`{field}` {text!r} is not a comma-separated list of numbers; e.g. 1,3.5,6.5,9.") from None
    if not values:
        raise UsageError(f"`{field}` is empty; give comma-separated numbers such as 1,3.5,6.5,9.")
    return values


def held_out_clips(reference: Path, image: Path | None, work_dir: Path, max_videos: int | None) -> list[HeldOutClip]:
    """The clips of the held-out set; without ``image`` each clip's first frame is its portrait."""
    videos = list_videos(reference, "`reference`")
    stems = sorted(videos)[:max_videos]
    clips = []
    for stem in stems:
        portrait = image
        if portrait is None:
            portrait = work_dir / "portraits" / f"{stem}.png"
            portrait.parent.mkdir(parents=True, exist_ok=True)
            frames, _ = read_video(videos[stem], 0.0, 0.2)  # (T, H, W, 3); only the first frame is kept
            Image.fromarray(frames[0]).save(portrait)
        clips.append(HeldOutClip(stem, Path(portrait), videos[stem]))
    return clips


def generate_set(checkpoint, clips: list[HeldOutClip], out_dir: Path, config: GenerateConfig, device, dtype,
                 quiet: bool) -> list[GenerationStats]:  # fmt: skip
    """One video per held-out clip into ``out_dir/<stem>.mp4`` (stats JSON beside each).

    ``checkpoint``: a loaded `FadaPipeline` (reused), or a folder, loaded once for the whole set.
    """
    pipe = (
        checkpoint if isinstance(checkpoint, FadaPipeline) else FadaPipeline.from_checkpoint(checkpoint, device, dtype)
    )
    return [pipe.write(clip.image, clip.audio, out_dir / f"{clip.stem}.mp4", config, quiet=quiet) for clip in clips]


def metric_values(report: EvalReport) -> dict[str, float | None]:
    """metric name → value for the metrics that came out ``ok`` (None otherwise)."""
    return {m.name: (m.value if m.status == "ok" else None) for m in report.metrics}


def grid_points(config: SweepConfig) -> list[tuple[str, float, float, float]]:
    """(axis, scale, cfg_audio, cfg_ref) for every point of both axes."""
    base = config.generate
    audio = [("audio", s, s, base.cfg_ref) for s in config.audio_scales]
    return audio + [("ref", s, base.cfg_audio, s) for s in config.ref_scales]


def run_cfg_sweep(checkpoint: Path, reference: Path, out_dir: Path, config: SweepConfig = SweepConfig(),
                  eval_config: EvalConfig | None = None, image: Path | None = None,
                  device: str = "cpu", dtype: str = "fp32", quiet: bool = False) -> pd.DataFrame:  # fmt: skip
    """Generate and evaluate the grid; write the table, its JSON and one plot per axis; return the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_config = EvalConfig(iqa_metric=None) if eval_config is None else eval_config
    # 1. the held-out set; the checkpoint, loaded once for every grid point
    clips = held_out_clips(Path(reference), image, out_dir, config.max_videos)
    pipe = FadaPipeline.from_checkpoint(checkpoint, device=device, dtype=dtype)
    if config.generate.cfg_ref is None:  # the fixed reference scale of the audio axis: the checkpoint's default
        config = replace(config, generate=replace(config.generate, cfg_ref=pipe.strategy.default_cfg_ref))
    # 2.–3. every grid point: generate (once per distinct scale pair), evaluate
    done: dict[tuple[float, float], dict] = {}
    rows = []
    for axis, scale, cfg_audio, cfg_ref in grid_points(config):
        if (cfg_audio, cfg_ref) not in done:
            log(f"cfg sweep: audio {cfg_audio:g}, reference {cfg_ref:g}", quiet=quiet)
            point_dir = out_dir / f"audio{cfg_audio:g}_ref{cfg_ref:g}"
            gen_config = replace(config.generate, cfg_audio=cfg_audio, cfg_ref=cfg_ref)
            stats = generate_set(pipe, clips, point_dir / "videos", gen_config, device, dtype, quiet)
            report = evaluate(point_dir / "videos", Path(reference), point_dir / "eval", eval_config, quiet=quiet)
            values = metric_values(report)
            done[(cfg_audio, cfg_ref)] = {
                **{name: values.get(name) for name in SWEEP_METRICS},
                "nfe": stats[0].nfe,
                "seconds_per_video_second": float(np.mean([s.seconds_per_video_second for s in stats])),
                "videos": len(stats),
                "folder": str(point_dir),
            }
        rows.append({"axis": axis, "scale": scale, "cfg_audio": cfg_audio, "cfg_ref": cfg_ref,
                     **done[(cfg_audio, cfg_ref)]})  # fmt: skip
    table = pd.DataFrame(rows)
    # 4. outputs
    table.to_parquet(out_dir / "cfg_sweep.parquet", index=False)
    payload = {
        "checkpoint": str(checkpoint),
        "reference": str(reference),
        "generate": asdict(config.generate),
        "rows": [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in table.to_dict("records")
        ],  # fmt: skip
    }
    (out_dir / "cfg_sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    for axis in AXES:
        plot_axis(table, axis, out_dir / f"cfg_{axis}.png")
    return table


def plot_axis(table: pd.DataFrame, axis: str, path: Path) -> Path:
    """One PNG for one axis: a panel per metric that has at least one value, metric vs scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table["axis"] == axis].sort_values("scale")
    metrics = [m for m in SWEEP_METRICS if m in rows and rows[m].notna().any()]
    fixed = "reference" if axis == "audio" else "audio"
    fixed_value = rows["cfg_ref" if axis == "audio" else "cfg_audio"].iloc[0]
    figure, axes = plt.subplots(1, max(1, len(metrics)), figsize=(max(5.0, 3.2 * len(metrics)), 3.2), squeeze=False)
    for panel, metric in zip(axes[0], metrics, strict=False):
        panel.plot(rows["scale"], rows[metric].astype(float), marker="o")
        panel.set_xlabel(f"{axis} CFG scale")
        panel.set_title(metric)
        panel.grid(alpha=0.3)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no metric available", ha="center", va="center")
    figure.suptitle(f"{axis} CFG sweep ({fixed} CFG fixed at {fixed_value:g})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
