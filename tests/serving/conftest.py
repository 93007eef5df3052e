"""Fixtures of the serving tests: a tiny random-initialised checkpoint and one real Triton server per
test module (free loopback ports, readiness timeout, teardown that always kills the process group), and a
temporary cache for the raw ONNX graphs the servers export."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_helpers import launch_for_tests

from rfkp.api import RFDETRKeypoint
from rfkp.serving.launcher import TritonServer
from rfkp.variants import tiny


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """RFKP_CACHE_DIR for the whole session (servers started in-process and `rfkp serve` subprocesses): the
    raw ONNX graphs of ``--runtime auto|onnxruntime`` go to a temporary folder, never the user's cache."""
    path = tmp_path_factory.mktemp("rfkp-cache")
    previous = os.environ.get("RFKP_CACHE_DIR")
    os.environ["RFKP_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("RFKP_CACHE_DIR", None)
        else:
            os.environ["RFKP_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model() -> RFDETRKeypoint:
    """A seeded random-initialised `tiny` model on CPU (fast enough for many requests on 2 cores)."""
    return RFDETRKeypoint.from_config(tiny(), device="cpu", seed=3)


@pytest.fixture(scope="session")
def tiny_weights(tiny_model: RFDETRKeypoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    tiny_model.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One real server per test module that asks for it, serving the `tiny` weights."""
    triton = launch_for_tests(tiny_weights, tmp_path_factory.mktemp("served"))
    try:
        yield triton
    finally:
        triton.stop()
