"""The recorded Asterisk traces in ../shared/traces and helpers to use them in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, iter_file_messages
from callhub.config import PbxConfig

TRACES_DIR = Path(os.environ.get(
    "CALLHUB_TRACES_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "traces"))


def all_traces() -> list[Path]:
    """Every recorded trace; a trace added to the folder is picked up without code changes."""
    traces = sorted(TRACES_DIR.glob("*.ami"))
    if not traces:
        raise RuntimeError(f"no traces in {TRACES_DIR}: set CALLHUB_TRACES_DIR")
    return traces


def trace(name: str) -> Path:
    """One trace by its file name without `.ami` (e.g. '01_answered_caller_hangup')."""
    return TRACES_DIR / f"{name}.ami"


def trace_messages(name: str) -> list[AmiMessage]:
    return list(iter_file_messages(trace(name)))


def trace_pbx(name: str) -> PbxConfig:
    return pbx_from_truth(load_truth(trace(name)))


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    return TRACES_DIR
