"""`fada demo`: the step budget, the contact sheet, the held-out split, and the whole run on tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from fada_cli.demo import demo_table
from fada_cli.main import app
from pipelines.demo import DemoConfig, contact_sheet, plan_training_steps, split_held_out
from pipelines.errors import UsageError

runner = CliRunner()


def test_plan_training_steps_spends_what_is_left():
    # 900 s budget, 300 s spent, 100 s kept for generate + eval: 500 s / 2 s per step = 250 steps
    assert plan_training_steps(900, 300, 2.0, 100, min_steps=5, max_steps=5000) == 250
    assert plan_training_steps(900, 300, 2.0, 100, min_steps=5, max_steps=100) == 100  # capped
    assert plan_training_steps(60, 80, 2.0, 100, min_steps=5, max_steps=100) == 5  # over budget: the minimum
    with pytest.raises(ValueError, match="step time"):
        plan_training_steps(60, 0, 0.0, 0, 1, 10)


def test_contact_sheet_layout():
    portrait = np.full((8, 8, 3), 200, np.uint8)
    frames = np.stack([np.full((8, 8, 3), 10 * t, np.uint8) for t in range(10)])  # (10, 8, 8, 3), darkest first
    sheet = contact_sheet(portrait, {"held-out clip": frames, "teacher": frames[::-1]}, columns=3, tile=16)
    label = sheet.shape[1] - 4 * 16
    assert sheet.shape == (2 * 16, label + 4 * 16, 3) and sheet.dtype == np.uint8
    assert (sheet[:, label : label + 16] == 200).all()  # the portrait leads every row
    first_row = [int(sheet[8, label + c * 16 + 8, 0]) for c in range(1, 4)]
    assert first_row == [0, 40, 90]  # frames 0, 4.5→4, 9: evenly over time
    assert [int(sheet[24, label + c * 16 + 8, 0]) for c in range(1, 4)] == [90, 50, 0]


def test_face_found_rate_counts_frames_with_a_face():
    import skimage

    from pipelines.faces import face_found_rate

    face = np.asarray(Image.fromarray(skimage.data.astronaut()).crop((120, 0, 320, 200)).resize((64, 64)))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert face_found_rate(np.stack([face, face, noise, noise])) == 0.5
    assert face_found_rate(noise[None]) == 0.0


def test_split_holds_one_identity_out():
    truth = pd.DataFrame({"clip_id": ["demo_0000", "demo_0001", "demo_0002", "demo_0003"]})
    truth["identity"] = ["id0", "id1", "id0", "id1"]
    curated = pd.DataFrame(
        {
            "source": [f"/x/clips/demo_000{i}.mp4" for i in range(4)],
            "tier": ["A", "reject", "B", "B"],
            "clip_id": ["a", "b", "c", "d"],
        }
    )
    train, held = split_held_out(curated, truth, "id1")
    assert list(train["clip_id"]) == ["a", "c"]
    assert list(held["clip_id"]) == ["d"]  # the rejected clip of id1 is neither trained on nor evaluated


def test_demo_table_shows_every_metric_and_the_route():
    row = {"nfe": 6, "seconds_per_video_second": 2.0, "speed_up": 1.0, "face_rate": 0.1, "sync_proxy": 0.05,
           "sync_proxy_offset": -3.0, "e_fid_proxy": 0.178, "iqa": 31.26, "piqe": 83.4, "psnr": 8.17,
           "routes": {"sync_proxy": "mouth window", "e_fid_proxy": "mouth window"}}  # fmt: skip
    summary = {"model_preset": "tiny", "teacher": {"stages": {"image": {"steps": 8}, "video": {"steps": 5}}},
               "modes": {"teacher": row, "fast": {**row, "piqe": None}}}  # fmt: skip
    console = Console(record=True, width=120)
    console.print(demo_table(summary))
    text = console.export_text()
    assert "PIQE ↓" in text and "0.05" in text and "0.178" in text and "83" in text and "8.2" in text
    assert "BRISQUE ↓" in text and "31.3" in text
    assert "proxies read the face by mouth window" in text
    assert text.count("—") == 1  # the fast row's missing PIQE


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="`minutes` 0.5"):
        DemoConfig(minutes=0.5)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--preset", "sd15"])
    assert result.exit_code == 2 and "--preset 'sd15' is not valid for the CPU demo" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "taken"), "--preset", "tiny", "--minutes", "1"])
    assert result.exit_code == 2 and "is not a previous `fada demo` folder" in result.output
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--minutes", "1", "--preset", "tiny", "--generate-steps", "2", "--quiet"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "demo_summary.json").read_text())
    assert list(summary["modes"]) == ["teacher", "balanced", "fast"]
    teacher = summary["modes"]["teacher"]
    assert teacher["nfe"] == 2 * 3 and teacher["speed_up"] == 1.0
    # the students were distilled from the trained teacher and sample at their own NFE (6 × 3, 6 × 1)
    assert summary["modes"]["balanced"]["nfe"] == 18 and summary["modes"]["fast"]["nfe"] == 6
    for mode in ("balanced", "fast"):
        info = json.loads((out / "students" / mode / "fada_checkpoint.json").read_text())
        assert info["stage"] == "student" and info["mode"] == mode
        assert summary["students"][mode]["steps"] >= 2 and np.isfinite(summary["students"][mode]["final_loss"])
        assert summary["modes"][mode]["speed_up"] > 0
    assert teacher["seconds_per_video_second"] > 0 and teacher["sharpness"] > 0 and teacher["piqe"] is not None
    assert teacher["iqa"] is not None  # BRISQUE: needs no weights
    assert teacher["e_fid_proxy"] is None or teacher["e_fid_proxy"] >= 0
    # the teacher went through the image stage, then the video stage started from it
    stages = summary["teacher"]["stages"]
    assert stages["image"]["steps"] >= 5 and stages["video"]["steps"] >= 5
    info = json.loads((out / "teacher" / "video" / "fada_checkpoint.json").read_text())
    assert [entry["stage"] for entry in info["config"]["stages"]] == ["image", "video"]
    assert info["config"]["stages"][0]["steps"] == stages["image"]["steps"]
    assert summary["modes"]["teacher"]["checkpoint"] == str(out / "teacher" / "video")
    # the held-out identity is absent from training and is what was generated
    held = summary["held_out_identity"]
    train = pd.read_parquet(out / "curated" / "train.parquet")
    truth = pd.read_parquet(out / "data" / "truth.parquet").set_index("clip_id")["identity"]
    assert held not in {truth[src.rsplit("/", 1)[-1][:-4]] for src in train["source"]}
    for mode, row in summary["modes"].items():
        assert all(Path(v).is_file() and v.endswith(".mp4") for v in row["videos"])
        assert (out / "eval" / mode / "metrics.json").is_file()
    sheet = np.asarray(Image.open(summary["contact_sheet"]))
    assert sheet.shape[0] == 4 * 96  # rows: the held-out clip, the teacher, balanced, fast
    # the rerun replaces its own previous folder; the table goes to stdout
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "teacher" in result.stdout and "contact sheet" in result.stdout
