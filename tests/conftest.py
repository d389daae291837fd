"""Fixtures shared across the test suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.demo_data import DemoDataConfig, generate_demo_data

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
# Tests run tiny models: one intra-op thread avoids OpenMP oversubscription, which made them ~25x
# slower on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_debug_tracebacks(monkeypatch):
    """Tests see the user-facing one-line errors, whatever the caller's environment says."""
    monkeypatch.delenv("FADA_DEBUG", raising=False)


@pytest.fixture
def no_network(monkeypatch):
    """The network blocked: ``HF_HUB_OFFLINE=1`` and every socket connection or name lookup refused.

    Yields the list of attempts; a test asserts it stayed empty (an attempt also raises
    ``ConnectionRefusedError`` where it happens, which code that swallows errors may hide).
    """
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what == 'connect' else args}"[:200])
            raise ConnectionRefusedError(f"network blocked in this test: {what}")

        return blocked

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield attempts


@pytest.fixture(scope="session")
def manifest(tmp_path_factory) -> Path:
    """3 clean 1-s demo clips at 64 px, all tier A (which tier B includes); tests may add files beside it."""
    folder = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_data(folder, DemoDataConfig(clips=3, identities=1, size=64, seconds=1.0, clean_fraction=1.0), True)
    return folder / "manifest.parquet"


def launch_two_processes(*fada_args: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of ``fada <fada_args>`` in 2 CPU processes (gloo), one thread each."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fada_cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*command, *fada_args], capture_output=True, text=True, env=env, timeout=600)


def save_tiny_wav2vec2(folder: Path, **overrides) -> Path:
    """A tiny random `transformers.Wav2Vec2Model` (hidden size 16) saved into ``folder`` (seed 0)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        **overrides,
    )
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder
