"""`fada cfg-sweep`: a 2×2 grid on the tiny preset, its table, plots and errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.cfg_sweep import SweepConfig, grid_points, parse_scales
from pipelines.checkpoint import save_checkpoint
from pipelines.demo_data import DemoDataConfig, generate_demo_data
from pipelines.errors import UsageError
from pipelines.model import FadaModel
from pipelines.model_config import get_preset

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A random tiny teacher and a 2-clip held-out set of 1 s demo clips."""
    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    model = FadaModel.from_config(get_preset("tiny"))
    config = {"model": model.config.to_dict()}
    teacher = save_checkpoint(
        root / "teacher", stage="teacher", mode="teacher", config=config, components=model.components(), step=0
    )
    generate_demo_data(root / "held", DemoDataConfig(clips=2, identities=1, size=64, seconds=1.0, seed=3), quiet=True)
    return teacher, root / "held" / "manifest.parquet"


def test_grid_points_share_the_default():
    config = SweepConfig(audio_scales=(1.0, 6.5), ref_scales=(1.0, 2.5))
    assert grid_points(config) == [
        ("audio", 1.0, 1.0, 2.5),
        ("audio", 6.5, 6.5, 2.5),
        ("ref", 1.0, 6.5, 1.0),
        ("ref", 2.5, 6.5, 2.5),
    ]
    assert parse_scales("1, 3.5,9", "audio_scales") == (1.0, 3.5, 9.0)
    with pytest.raises(UsageError, match="`ref_scales` '1,x'"):
        parse_scales("1,x", "ref_scales")
    with pytest.raises(UsageError, match="`audio_scales`"):
        SweepConfig(audio_scales=(float("nan"),))


def test_cfg_sweep_tiny_2x2(inputs, tmp_path, monkeypatch):
    teacher, held = inputs
    loads = []  # every FadaModel.from_checkpoint call: the sweep loads its checkpoint once for all 3 points
    original = FadaModel.from_checkpoint.__func__
    monkeypatch.setattr(
        FadaModel, "from_checkpoint", classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k))
    )
    out = tmp_path / "sweep"
    args = ["cfg-sweep", "--checkpoint", str(teacher), "--reference", str(held), "--out", str(out)]
    args += ["--audio-scales", "1,6.5", "--ref-scales", "1,2.5", "--steps", "1", "--max-videos", "1"]
    result = runner.invoke(app, [*args, "--iqa-metric", "none", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    table = pd.read_parquet(out / "cfg_sweep.parquet")
    assert len(payload["rows"]) == len(table) == 4
    assert list(zip(table["axis"], table["scale"], strict=True)) == [("audio", 1.0), ("audio", 6.5), ("ref", 1.0),
                                                                      ("ref", 2.5)]  # fmt: skip
    assert (table["nfe"] == 3).all() and (table["videos"] == 1).all()  # 1 DDIM step × 3 CFG branches
    assert table["sharpness"].gt(0).all() and table["piqe"].between(0, 100).all()
    assert table["iqa"].notna().all()  # BRISQUE at every point
    # the default point (6.5, 2.5) is generated once and shared by both axes
    assert table.loc[1, "folder"] == table.loc[3, "folder"]
    assert len(list(out.glob("audio*_ref*/videos/*.mp4"))) == 3
    assert len(loads) == 1
    # other scales give other videos (the guidance is applied)
    assert table.loc[0, "sharpness"] != table.loc[1, "sharpness"]
    # FID/FVD without weights are absent from the grid, not replaced by proxies
    assert table["fid"].isna().all() and table["fvd"].isna().all()
    for axis in ("audio", "ref"):
        png = Image.open(out / f"cfg_{axis}.png")
        assert png.size[0] > 300 and png.size[1] > 200


def test_cfg_sweep_needs_a_checkpoint(inputs, tmp_path):
    _, held = inputs
    result = runner.invoke(app, ["cfg-sweep", "--reference", str(held), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Missing option '--checkpoint'" in result.output
    result = runner.invoke(app, ["eval", "--reference", str(held), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--generated is missing" in result.output
