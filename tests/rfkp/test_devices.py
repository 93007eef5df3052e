"""Device names: the user's spelling is checked once, with a message that says what this machine has."""

from __future__ import annotations

import argparse

import pytest
import torch

from rfkp.devices import device_arg, resolve_device


def test_names_and_defaults() -> None:
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'bogus': expected cpu, cuda or cuda:N"):
        resolve_device("bogus")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown device 'gpu'"):
        device_arg("gpu")
    assert device_arg("cpu") == "cpu" and device_arg("CPU") == "cpu"  # what serve and the backends compare


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_without_a_gpu_says_why() -> None:
    for name in ("cuda", "cuda:1", 0):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_indices_past_the_count_are_refused() -> None:
    assert resolve_device(0) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="GPU\\(s\\) are visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
