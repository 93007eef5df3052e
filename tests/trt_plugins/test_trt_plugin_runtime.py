"""Runtime-side behaviour without a GPU: clone, attachToContext, the field serialisation round trip (what an
engine stores and the runtime's creator reads back), and enqueue's argument checks (no exception, no crash)."""

from __future__ import annotations

import ctypes
import re

import pytest
import torch
from trt_io_specs import msda_io, rescore_io
from trt_plugin_driver import Plugin, float32_field

from rfkp.tensorrt_plugins import FLOAT, HALF, INT32, RUNTIME_PHASE, UINT8

MSDA, RESCORE = "RfkpMSDeformAttn", "RfkpGaussianRescore"


def _alpha(p: Plugin) -> float:
    (field,) = p.serialized_fields()
    assert (field["name"], field["type"], field["length"]) == ("alpha", 1, 1)
    return field["values"][0]


def test_clone_and_attach_copy_the_fields_and_outlive_the_original(shim: ctypes.CDLL) -> None:
    original = Plugin.create(shim, RESCORE, [float32_field("alpha", 0.5)])
    clone = original.clone()
    attached = original.attach_to_context()
    original.close()
    for copy in (clone, attached):
        with copy:
            assert copy.describe()["name"] == RESCORE
            assert _alpha(copy) == pytest.approx(0.5)
            assert copy.output_shapes(rescore_io(FLOAT, num=-1)[:6])[0] == ["s1"]


def test_serialisation_round_trip_restores_the_plugin(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, RESCORE, [float32_field("alpha", 0.125)]) as p, p.deserialize() as restored:
        assert restored.describe() == p.describe()
        assert _alpha(restored) == 0.125
    with Plugin.create(shim, MSDA) as p, p.deserialize() as restored:
        assert p.serialized_fields() == []
        assert restored.output_shapes(msda_io(HALF, batch=-1)[:6]) == [["s1", "5", "32"]]


def test_runtime_phase_creation_reads_the_serialised_fields(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, RESCORE, [float32_field("alpha", 0.75)], phase=RUNTIME_PHASE) as p:
        assert _alpha(p) == pytest.approx(0.75)


@pytest.mark.parametrize("name, io", [(MSDA, msda_io(FLOAT, batch=0)), (RESCORE, rescore_io(HALF, num=0))])
def test_enqueue_of_an_empty_batch_succeeds_without_touching_memory(shim: ctypes.CDLL, name: str,
                                                                      io: list) -> None:
    with Plugin.create(shim, name) as p:
        n_in = len(io) - p.nb_outputs()
        assert p.enqueue(io, n_in, [0] * len(io)) == 0, p.last_error()


@pytest.mark.parametrize("name, pos, spec, message", [
    (MSDA, 3, (FLOAT, [2, 5, 1, 3]), "RfkpMSDeformAttn::enqueue: reference.shape\\[3\\] must be 2 or 4"),
    (MSDA, 3, (HALF, [2, 5, 1, 4]), "float inputs must share the element type of value"),
    (MSDA, 6, (FLOAT, [2, 5, 31]), "output is not \\(B, Q, H \\* D\\)"),
    (RESCORE, 1, (FLOAT, [6, 4]), "RfkpGaussianRescore::enqueue: keypoints K of findable_logit"),
    (RESCORE, 8, (FLOAT, [6, 5, 2]), "outputs are not"),
])
def test_enqueue_rejects_bad_descriptors_with_a_message(shim: ctypes.CDLL, name: str, pos: int, spec: tuple,
                                                        message: str) -> None:
    io = msda_io(FLOAT) if name == MSDA else rescore_io(FLOAT)
    io[pos] = spec
    with Plugin.create(shim, name) as p:
        assert p.enqueue(io, len(io) - p.nb_outputs(), [0] * len(io)) != 0
        assert re.search(message, p.last_error()), p.last_error()


def test_int32_mask_without_workspace_is_refused(shim: ctypes.CDLL) -> None:
    io = rescore_io(FLOAT, mask=INT32)
    with Plugin.create(shim, RESCORE) as p:
        assert p.enqueue(io, 6, [0] * len(io)) != 0
        assert "an int32 active mask needs the workspace" in p.last_error()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path without a CUDA device")
@pytest.mark.parametrize("name", [MSDA, RESCORE])
def test_enqueue_without_a_device_reports_the_cuda_error(shim: ctypes.CDLL, name: str) -> None:
    io = msda_io(FLOAT) if name == MSDA else rescore_io(FLOAT, mask=UINT8)  # a byte mask needs no workspace
    with Plugin.create(shim, name) as p:
        assert p.enqueue(io, len(io) - p.nb_outputs(), [0] * len(io)) != 0
        assert "kernel launch failed" in p.last_error()
