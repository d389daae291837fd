"""Fixtures shared across the test suite."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _no_debug_tracebacks(monkeypatch):
    """Tests see the user-facing one-line errors, whatever the caller's environment says."""
    monkeypatch.delenv("FADA_DEBUG", raising=False)
