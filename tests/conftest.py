"""Fixtures shared across the test suite."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
# Tests run tiny models: one intra-op thread avoids OpenMP oversubscription, which made them ~25x
# slower on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_debug_tracebacks(monkeypatch):
    """Tests see the user-facing one-line errors, whatever the caller's environment says."""
    monkeypatch.delenv("FADA_DEBUG", raising=False)
