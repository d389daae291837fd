"""`fada eval` end to end on tiny demo clips, NFE-D from stats, unavailable metrics, errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fada_cli.evaluate import metrics_table
from fada_cli.main import app
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.errors import InputFileError
from pipelines.evaluate import EvalConfig, EvalReport, MetricResult, evaluate, read_nfe
from pipelines.media import read_video
from pipelines.metrics import quality
from pipelines.metrics.brisque import brisque

runner = CliRunner()


class TinyInception(torch.nn.Module):
    """The clean-fid Inception contract at toy size: (N, 3, 299, 299) in [0, 255] → (N, 2048)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Reference: a 3-clip demo manifest. Generated: a folder with 2 of its clips and their stats JSON."""
    root = tmp_path_factory.mktemp("eval")
    generate_demo_data(root / "ref", DemoDataConfig(clips=3, identities=2, size=64, seconds=2.0, seed=1), quiet=True)
    generated = root / "gen"
    generated.mkdir()
    for stem in ("demo_0000", "demo_0001"):
        shutil.copy(root / "ref" / "clips" / f"{stem}.mp4", generated / f"{stem}.mp4")
        (generated / f"{stem}.json").write_text(json.dumps({"nfe": 18, "stage": "student"}))
    inception = root / "inception.pt"
    torch.jit.script(TinyInception()).save(str(inception))
    return {"root": root, "gen": generated, "ref": root / "ref" / "manifest.parquet", "inception": inception}


def by_name(payload: dict) -> dict[str, dict]:
    return {m["name"]: m for m in payload["metrics"]}


def test_cli_eval_reports_every_metric(sets, no_network, monkeypatch):
    """With the network blocked and empty weight caches: nothing is fetched, learned metrics are unavailable."""
    monkeypatch.setenv("HF_HUB_CACHE", str(sets["root"] / "empty_hf_cache"))
    out = sets["root"] / "out"
    args = ["eval", "--generated", str(sets["gen"]), "--reference", str(sets["ref"]), "--out", str(out)]
    args += ["--inception-weights", str(sets["inception"]), "--quiet", "--json"]  # --iqa-metric: qalign
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((out / "metrics.json").read_text())
    assert printed["pairs"] == 2 and printed["unpaired"] == {"generated": [], "reference": ["demo_0002"]}
    metrics = by_name(printed)
    # NFE-D from the stats JSON beside each generated video
    assert metrics["nfe_d"]["status"] == "ok" and metrics["nfe_d"]["value"] == 18 and metrics["nfe_d"]["n"] == 2
    # learned metrics without weights: unavailable, with the option that enables them, no value
    enabling = {"sync_d": "--syncnet-weights", "sync_c": "--syncnet-weights", "fvd": "--i3d-weights"}
    enabling |= {"fvd_r": "--r3d-weights", "e_fid": "--expression-weights", "qalign": "--iqa-metric qalign"}
    enabling |= {"lpips": "LPIPS weights"}
    for name, option in enabling.items():
        assert metrics[name]["status"] == "unavailable", name
        assert metrics[name]["enable"].startswith(option) and metrics[name]["value"] is None
    # FID through the user's TorchScript file: N frames, extractor name and file hash; same clips → 0
    fid = metrics["fid"]
    assert fid["status"] == "ok" and (fid["n"], fid["n_reference"], fid["unit"]) == (100, 100, "frames")
    assert fid["extractor_sha256"] == hashlib.sha256(sets["inception"].read_bytes()).hexdigest()
    assert fid["value"] == pytest.approx(0.0, abs=1e-6) and "2048" in fid["note"]
    assert "not found" in metrics["lpips"]["note"]  # no LPIPS weights on the test machine
    assert "q-future/one-align is not in the Hugging Face cache" in metrics["qalign"]["note"]
    assert metrics["qalign"]["better"] == "higher" and "hf download" in metrics["qalign"]["note"]
    assert no_network == []  # nothing tried to reach the network
    # weight-free metrics: always computed; identical sets give identical per-video means and E-FID proxy 0
    for name in ("iqa", "piqe", "sharpness", "psnr", "ssim", "sync_proxy", "sync_proxy_r", "e_fid_proxy"):
        assert metrics[name]["status"] == "ok" and metrics[name]["extractor"], name
    # the headline IQA is BRISQUE (lower is better) of every 5th frame at the videos' own 64 px
    assert metrics["iqa"]["better"] == "lower" and metrics["iqa"]["extractor"].startswith("brisque")
    assert metrics["iqa"]["value"] == pytest.approx(metrics["iqa"]["reference_value"]) and metrics["iqa"]["n"] == 2
    assert metrics["piqe"]["better"] == "lower" and 0 <= metrics["piqe"]["value"] <= 100
    assert metrics["piqe"]["value"] == pytest.approx(metrics["piqe"]["reference_value"])
    # full reference, each generated video against itself: SSIM 1, PSNR far above any real pair's
    assert metrics["ssim"]["value"] == pytest.approx(1.0, abs=1e-4) and metrics["ssim"]["reference_value"] is None
    assert metrics["psnr"]["value"] > 60
    assert metrics["sync_proxy"]["value"] == pytest.approx(metrics["sync_proxy"]["reference_value"])
    assert 0.3 < metrics["sync_proxy"]["value"] < metrics["sync_proxy_r"]["value"] <= 1.0  # mouths follow speech
    assert metrics["sync_proxy"]["route"] == metrics["e_fid_proxy"]["route"] == "face mesh"
    assert metrics["e_fid_proxy"]["value"] == pytest.approx(0.0, abs=1e-6) and metrics["e_fid_proxy"]["n"] == 100
    # per-video Parquet: one row per (set, video)
    per_video = pd.read_parquet(out / "per_video.parquet")
    assert sorted(zip(per_video["set"], per_video["stem"], strict=True)) == [
        ("generated", "demo_0000"), ("generated", "demo_0001"), ("reference", "demo_0000"), ("reference", "demo_0001")
    ]  # fmt: skip
    assert (per_video["face_frames"] == 50).all()
    first = per_video.iloc[0]
    assert first["brisque"] == pytest.approx(brisque(read_video(first["video_path"])[0][:: quality.FRAME_STEP]))
    assert metrics["iqa"]["value"] == pytest.approx(per_video.loc[per_video["set"] == "generated", "brisque"].mean())
    assert per_video.loc[per_video["set"] == "generated", "nfe"].tolist() == [18.0, 18.0]


def fake_qalign_cache(folder):
    """A Hugging Face cache holding a complete (empty-file) `q-future/one-align` snapshot."""
    snapshot = folder / "models--q-future--one-align" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_text("{}")


def test_qalign_row_when_its_weights_are_cached(sets, tmp_path, monkeypatch, no_network):
    """The learned row's plumbing with Q-Align's weights "cached" and pyiqa's model replaced by a stub
    (the real one is an 8 B-parameter download): one frame per call, every 5th frame, its own row."""
    fake_qalign_cache(tmp_path / "hf")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    calls = []

    def stub(images):  # pyiqa's qalign: (1, 3, H, W) in [0, 1] → a 1–5 score
        calls.append(tuple(images.shape))
        return torch.full((1,), 1.0 + 4.0 * float(images.mean()))

    real_load = quality.load_pyiqa
    monkeypatch.setattr(quality, "load_pyiqa", lambda metric, device="cpu": stub if metric == "qalign" else
                        real_load(metric, device))  # fmt: skip
    report = evaluate(sets["gen"], sets["ref"], tmp_path / "out", EvalConfig(), quiet=True)
    row = {m.name: m for m in report.metrics}["qalign"]
    assert (row.status, row.better, row.n, row.extractor) == ("ok", "higher", 2, "pyiqa qalign (local cache)")
    assert 1.0 < row.value < 5.0 and row.value == pytest.approx(row.reference_value)  # generated = reference copies
    assert len(calls) == 4 * 10 and set(calls) == {(1, 3, 64, 64)}  # 4 videos × every 5th of 50 frames, own size
    assert report.per_video["qalign"].notna().all() and no_network == []

    # weights present but pyiqa cannot build the model here: unavailable with the reason, not an error
    def broken_load(metric, device="cpu"):
        if metric == "qalign":
            raise TypeError("unexpected keyword")
        return real_load(metric, device)

    monkeypatch.setattr(quality, "load_pyiqa", broken_load)
    report = evaluate(sets["gen"], sets["ref"], tmp_path / "out2", EvalConfig(), quiet=True)
    row = {m.name: m for m in report.metrics}["qalign"]
    assert row.status == "unavailable" and "pyiqa could not build qalign (TypeError" in row.note


def test_metrics_table_shows_status_and_enabling_option():
    metrics = [
        MetricResult(name="fid", status="ok", value=12.5, reference_value=None, n=100, n_reference=90, unit="frames",
                     better="lower", extractor="inception", extractor_sha256="ab" * 32),
        MetricResult(name="sync_d", status="unavailable", value=None, reference_value=None, n=0, n_reference=0,
                     unit="videos", better="lower", extractor=None, extractor_sha256=None,
                     enable="--syncnet-weights PATH"),
        MetricResult(name="sync_proxy", status="ok", value=0.51, reference_value=0.55, n=3, n_reference=3,
                     unit="videos", better="higher", extractor="lag r", extractor_sha256=None, route="mouth window"),
    ]  # fmt: skip
    console = Console(record=True, width=200)
    console.print(metrics_table(EvalReport(metrics, pd.DataFrame(), pairs=3)))
    text = console.export_text()
    assert "fid ↓" in text and "12.5" in text and "100 / 90 frames" in text and "abababab" in text
    assert "unavailable: needs --syncnet-weights PATH" in text
    assert "lag r, mouth window" in text


def test_read_nfe(tmp_path):
    video = tmp_path / "clip.mp4"
    assert read_nfe(video) == (None, "no stats file clip.json")
    (tmp_path / "clip.json").write_text(json.dumps({"nfe": 75}))
    assert read_nfe(video) == (75.0, "")
    (tmp_path / "clip.json").write_text(json.dumps({"steps": 25}))
    assert read_nfe(video)[0] is None and "no numeric 'nfe'" in read_nfe(video)[1]
    (tmp_path / "clip.json").write_text("{not json")
    with pytest.raises(InputFileError, match="clip.json is not valid JSON"):
        read_nfe(video)


def test_cli_eval_errors(tmp_path):
    generated, reference = tmp_path / "gen", tmp_path / "ref"
    generated.mkdir()
    reference.mkdir()
    (generated / "a.mp4").write_bytes(b"x")
    (reference / "b.mp4").write_bytes(b"x")
    base = ["eval", "--generated", str(generated), "--reference", str(reference), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "no generated video shares a file stem" in result.stderr
    (reference / "a.mp4").write_bytes(b"x")
    junk = tmp_path / "i3d.pt"
    junk.write_bytes(b"junk")
    result = runner.invoke(app, [*base, "--i3d-weights", str(junk)])
    assert result.exit_code == 1 and "--i3d-weights" in result.stderr and "is not a TorchScript file" in result.stderr
    result = runner.invoke(app, ["eval", "--generated", str(tmp_path / "nope"), "--reference", str(reference),
                                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1 and "--generated" in result.stderr and "not a folder of mp4 files" in result.stderr
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, [*base, "--iqa-metric", "brisque"])
    assert result.exit_code == 2 and "--iqa-metric brisque is always reported (the iqa row is BRISQUE" in result.stderr


@pytest.mark.slow
def test_eval_with_syncnet_weights(sets, tmp_path):
    """SyncNet scores with a randomly initialised `syncnet_python` model (values are meaningless, the path is real)."""
    from syncnet_python import SyncNetModel

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetModel(num_layers_in_fc_layers=1024).state_dict(), weights)
    config = EvalConfig(syncnet_weights=weights, iqa_metric=None)
    report = evaluate(sets["gen"], sets["ref"], tmp_path / "out", config, quiet=True)
    metrics = {m.name: m for m in report.metrics}
    for name in ("sync_d", "sync_c"):
        assert metrics[name].status == "ok" and metrics[name].n == 2
        assert metrics[name].extractor_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics["sync_d"].value > 0 and metrics["sync_c"].value >= 0
