"""Each optional dependency, when missing, is a one-line error that names the extra installing it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fada_cli.main import app
from pipelines.errors import FadaError
from pipelines.extras import EXTRAS, MissingExtraError, require
from pipelines.training import TrainConfig, make_optimizer

runner = CliRunner()


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(("module", "extra"), sorted(EXTRAS.items()))
def test_require_names_the_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(MissingExtraError, match=rf"pip install 'fada\[{extra}\]'") as caught:
        require(module, "this option")
    assert isinstance(caught.value, FadaError) and "\n" not in str(caught.value)


def test_fada_serve_without_gradio(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)
    result = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path / "no-checkpoint-needed-yet")])
    assert one_error_line(result) == (
        "Error: `fada serve` needs gradio, which is not installed; install it with pip install 'fada[serve]'."
    )


def test_curate_engine_ray_without_ray(monkeypatch, tmp_path):
    from pipelines import media

    monkeypatch.setitem(sys.modules, "ray", None)
    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "raw").mkdir()
    media.write_video(tmp_path / "raw" / "one.mp4", frames)
    args = ["curate", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--engine", "ray", "--quiet"]
    line = one_error_line(runner.invoke(app, [*args, "--iqa-metric", "none"]))
    assert line == "Error: --engine ray needs ray, which is not installed; install it with pip install 'fada[ray]'."


def test_adamw8bit_without_bitsandbytes(monkeypatch, manifest, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    params = {"w": torch.nn.Parameter(torch.zeros(3))}
    with pytest.raises(MissingExtraError, match=r"`optimizer` adamw8bit needs bitsandbytes.*fada\[train\]"):
        make_optimizer(params, TrainConfig(optimizer="adamw8bit"))
    args = ["train-teacher", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--preset", "tiny"]
    result = runner.invoke(app, [*args, "--optimizer", "adamw8bit", "--steps", "1", "--device", "cpu", "--quiet"])
    assert one_error_line(result) == (
        "Error: --optimizer adamw8bit needs bitsandbytes, which is not installed; "
        "install it with pip install 'fada[train]'."
    )
