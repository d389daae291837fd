"""The Typer app: every subcommand documents itself, and errors reach users as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from fada_cli import main as cli
from fada_cli.main import app, report_errors
from pipelines.errors import CheckpointError, UsageError

SUBCOMMANDS = ["demo-data", "curate", "train-teacher", "distill", "generate", "eval", "demo"]
runner = CliRunner()


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"fada {name}" in result.output


def test_root_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("fada ")


def _failing(error: Exception):
    def command() -> None:
        raise error

    return report_errors(command)


def test_error_becomes_one_line_and_exit_code(capsys):
    wrapped = _failing(CheckpointError("checkpoint runs/x is a student;\n use `fada distill`."))
    with pytest.raises(typer.Exit) as excinfo:
        wrapped()
    assert excinfo.value.exit_code == 1
    err = capsys.readouterr().err
    assert err == "Error: checkpoint runs/x is a student; use `fada distill`.\n"


def test_usage_error_exits_2(capsys):
    with pytest.raises(typer.Exit) as excinfo:
        _failing(UsageError("--clips 0 must be at least 1"))()
    assert excinfo.value.exit_code == 2
    assert capsys.readouterr().err.startswith("Error: --clips 0")


def test_debug_switch_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("FADA_DEBUG", "1")
    assert cli.debug_enabled()
    with pytest.raises(UsageError):
        _failing(UsageError("bad"))()


def test_console_script_runs_as_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "fada_cli.main", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "fada" in result.stdout


def test_help_text_joins_prose_lines_and_keeps_examples():
    doc = """Summary line.

    First paragraph, wrapped
    in the source at 100 columns.

    Example:

        fada demo --out run
        fada eval --generated a --reference b
    """
    assert cli.help_text(doc) == (
        "Summary line.\n\nFirst paragraph, wrapped in the source at 100 columns.\n\nExample:\n\n"
        "    fada demo --out run\n    fada eval --generated a --reference b"
    )


def test_bracketed_defaults_survive_rich_markup():
    result = runner.invoke(app, ["distill", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    assert "[adaptive]" in result.output and "[tokens for fast, none for balanced]" in result.output


def test_help_imports_no_model_code():
    """`fada --help` stays fast: torch, diffusers and mediapipe load only when a command runs."""
    code = "import sys, fada_cli.main; print(sorted({'torch', 'diffusers', 'mediapipe'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_demo_option_defaults_are_the_config_defaults():
    from pipelines.demo import DemoConfig

    result = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "240"})
    defaults = DemoConfig()
    assert f"[default: {defaults.minutes}]" in result.output and f"[default: {defaults.preset}]" in result.output
    assert f"[default: {defaults.seed}]" in result.output
