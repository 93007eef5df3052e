"""Build-phase behaviour of the plugins through the shim: createPlugin and its fields, output count and types,
supportsFormatCombination, symbolic output shapes, configurePlugin checks and the workspace size."""

from __future__ import annotations

import ctypes
import math
import struct

import pytest
from trt_io_specs import msda_io, rescore_io
from trt_plugin_driver import Plugin, char_field, float32_field

from rfkp.tensorrt_plugins import (
    BF16,
    BOOL,
    FIELD_INT32,
    FLOAT,
    HALF,
    HWC8,
    INT8,
    INT32,
    INT64,
    UINT8,
    TensorRTPluginError,
)

MSDA, RESCORE = "RfkpMSDeformAttn", "RfkpGaussianRescore"


@pytest.fixture(params=[MSDA, RESCORE])
def plugin(request: pytest.FixtureRequest, shim: ctypes.CDLL) -> Plugin:
    with Plugin.create(shim, request.param) as p:
        yield p


def _io(name: str, t: int) -> list[tuple]:
    return msda_io(t) if name == MSDA else rescore_io(t)


def test_created_plugin_has_every_capability(plugin: Plugin) -> None:
    info = plugin.describe()
    assert info["name"] in (MSDA, RESCORE)
    assert (info["version"], info["namespace"], info["interface"]) == ("1", "rfkp", "PLUGIN")
    assert info["build"] and info["runtime"]
    assert plugin.nb_outputs() == (1 if info["name"] == MSDA else 3)


def test_alpha_defaults_to_0_2_and_is_read_from_its_field(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, RESCORE) as p:
        assert p.serialized_fields()[0]["values"] == [pytest.approx(0.2)]
    with Plugin.create(shim, RESCORE, [float32_field("alpha", 0.35)]) as p:
        assert p.serialized_fields() == [{"name": "alpha", "type": 1, "length": 1, "values": [pytest.approx(0.35)]}]


@pytest.mark.parametrize("name, fields, message", [
    (RESCORE, [("alpha", FIELD_INT32, struct.pack("i", 1), 1)], "'alpha' must be kFLOAT32 with length 1, got kINT32"),
    (RESCORE, [float32_field("alpha", 0.1, 0.2)], "with length 2"),
    (RESCORE, [float32_field("alpha", math.nan)], "'alpha' must be finite"),
    (RESCORE, [float32_field("beta", 1.0)], "unknown field 'beta'"),
    (MSDA, [float32_field("alpha", 1.0)], "takes no fields, got 'alpha'"),
])
def test_bad_fields_fail_with_a_message(shim: ctypes.CDLL, name: str, fields: list, message: str) -> None:
    with pytest.raises(TensorRTPluginError, match=f"createPlugin {name}: .*{message}"):
        Plugin.create(shim, name, fields)


@pytest.mark.parametrize("name", [MSDA, RESCORE])
def test_onnx_lookup_fields_are_accepted(shim: ctypes.CDLL, name: str) -> None:
    fields = [char_field("plugin_namespace", "rfkp"), char_field("plugin_version", "1")]
    with Plugin.create(shim, name, fields) as p:
        assert p.describe()["name"] == name


def test_unknown_version_or_namespace_is_not_found(shim: ctypes.CDLL) -> None:
    with pytest.raises(TensorRTPluginError, match="no IPluginCreatorV3One registered"):
        Plugin.create(shim, MSDA, version="2")
    with pytest.raises(TensorRTPluginError, match="no IPluginCreatorV3One registered"):
        Plugin.create(shim, MSDA, namespace="")


@pytest.mark.parametrize("t", [FLOAT, HALF])
def test_output_types_follow_the_float_input(plugin: Plugin, t: int) -> None:
    io = _io(plugin.describe()["name"], t)
    n_in = len(io) - plugin.nb_outputs()
    assert plugin.output_types([s[0] for s in io[:n_in]]) == [t] * plugin.nb_outputs()


def test_output_types_reject_a_non_float_first_input(plugin: Plugin) -> None:
    io = _io(plugin.describe()["name"], INT32)
    n_in = len(io) - plugin.nb_outputs()
    with pytest.raises(TensorRTPluginError, match="must be kFLOAT or kHALF, got kINT32"):
        plugin.output_types([s[0] for s in io[:n_in]])


@pytest.mark.parametrize("t", [FLOAT, HALF])
def test_supported_combinations_are_accepted_at_every_position(plugin: Plugin, t: int) -> None:
    name = plugin.describe()["name"]
    masks = [UINT8, BOOL, INT32] if name == RESCORE else [UINT8]
    for mask in masks:
        io = msda_io(t) if name == MSDA else rescore_io(t, mask=mask)
        n_in = len(io) - plugin.nb_outputs()
        assert all(plugin.supports(pos, io, n_in) for pos in range(len(io))), (name, t, mask)


@pytest.mark.parametrize("name, pos, bad_type", [
    (MSDA, 0, BF16), (MSDA, 0, INT8), (MSDA, 0, INT32),
    (MSDA, 1, INT32), (MSDA, 2, INT32), (MSDA, 2, FLOAT),
    (MSDA, 3, HALF), (MSDA, 5, HALF), (MSDA, 6, HALF),  # float types that differ from value's kFLOAT
    (RESCORE, 0, BF16), (RESCORE, 2, INT64), (RESCORE, 2, FLOAT),
    (RESCORE, 4, HALF), (RESCORE, 8, HALF), (RESCORE, 6, INT32),
])
def test_unsupported_types_are_rejected(shim: ctypes.CDLL, name: str, pos: int, bad_type: int) -> None:
    io = _io(name, FLOAT)
    io[pos] = (bad_type, io[pos][1])
    with Plugin.create(shim, name) as p:
        assert not p.supports(pos, io, len(io) - p.nb_outputs())


@pytest.mark.parametrize("name", [MSDA, RESCORE])
def test_non_linear_formats_are_rejected(shim: ctypes.CDLL, name: str) -> None:
    io = _io(name, HALF)
    with Plugin.create(shim, name) as p:
        for pos in range(len(io)):
            changed = list(io)
            changed[pos] = (io[pos][0], io[pos][1], HWC8)
            assert not p.supports(pos, changed, len(io) - p.nb_outputs()), pos


def test_msda_output_shape_is_symbolic_in_batch_queries_and_heads(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, MSDA) as p:
        io = msda_io(FLOAT, batch=-1, queries=-2)[:6]
        assert p.output_shapes(io) == [["s1", "s2", "32"]]
        io = msda_io(FLOAT, batch=-1, heads=-3)[:6]
        assert p.output_shapes(io) == [["s1", "5", "(s3 * 8)"]]


def test_rescore_output_shapes_are_symbolic_in_the_detections(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, RESCORE) as p:
        assert p.output_shapes(rescore_io(FLOAT, num=-1, keypoints=17)[:6]) == [
            ["s1"], ["s1"], ["s1", "17", "2", "2"]]
        assert p.output_shapes(rescore_io(HALF, num=-1, keypoints=-2)[:6])[2] == ["s1", "s2", "2", "2"]


@pytest.mark.parametrize("name, pos, shape, message", [
    (MSDA, 0, [2, 26, 32], "value \\(B, S, H, D\\) must have rank 4, got 3"),
    (MSDA, 4, [2, 5, 4, 2, 3], "sampling_offsets .* must have rank 6"),
    (RESCORE, 0, [6, 15], "cholesky \\(N, K, 3\\) must have rank 3, got 2"),
])
def test_output_shapes_reject_wrong_ranks(shim: ctypes.CDLL, name: str, pos: int, shape: list, message: str) -> None:
    io = _io(name, FLOAT)
    with Plugin.create(shim, name) as p:
        inputs = io[: len(io) - p.nb_outputs()]
        inputs[pos] = (FLOAT, shape)
        with pytest.raises(TensorRTPluginError, match=message):
            p.output_shapes(inputs)


def test_configure_accepts_consistent_and_dynamic_shapes(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, MSDA) as p:
        p.configure(msda_io(FLOAT), 6)
        p.configure(msda_io(HALF, ref_levels=2, ref_dim=2), 6)
        p.configure(msda_io(FLOAT, batch=-1, queries=-1), 6)
    with Plugin.create(shim, RESCORE) as p:
        p.configure(rescore_io(FLOAT), 6)
        p.configure(rescore_io(HALF, num=-1), 6)


@pytest.mark.parametrize("name, change, message", [
    (MSDA, (3, (FLOAT, [3, 5, 1, 4])), "batch B of reference and value disagree \\(3 vs 2\\)"),
    (MSDA, (3, (FLOAT, [2, 5, 3, 4])), "reference levels Lr must be 1 or 2, got 3"),
    (MSDA, (3, (FLOAT, [2, 5, 1, 3])), "reference.shape\\[3\\] must be 2 or 4, got 3"),
    (MSDA, (2, (INT64, [3])), "level_start_index length and spatial_shapes length L disagree"),
    (MSDA, (5, (FLOAT, [2, 5, 4, 2, 4])), "points P of attention_logits and sampling_offsets disagree"),
    (RESCORE, (0, (FLOAT, [6, 5, 4])), "cholesky.shape\\[2\\] must be 3, got 4"),
    (RESCORE, (3, (FLOAT, [7])), "detections N of an input and cholesky disagree"),
    (RESCORE, (2, (UINT8, [6, 4])), "keypoints K of active and cholesky disagree"),
])
def test_configure_rejects_inconsistent_shapes(shim: ctypes.CDLL, name: str, change: tuple, message: str) -> None:
    io = _io(name, FLOAT)
    io[change[0]] = change[1]
    with Plugin.create(shim, name) as p:
        with pytest.raises(TensorRTPluginError, match=message):
            p.configure(io, len(io) - p.nb_outputs())


def test_workspace_is_needed_only_to_narrow_an_int32_mask(shim: ctypes.CDLL) -> None:
    with Plugin.create(shim, RESCORE) as p:
        assert p.workspace_size(rescore_io(FLOAT, num=8, keypoints=17, mask=UINT8), 6) == 0
        assert p.workspace_size(rescore_io(FLOAT, num=8, keypoints=17, mask=INT32), 6) == 256
        assert p.workspace_size(rescore_io(FLOAT, num=100, keypoints=17, mask=INT32), 6) == 1792
    with Plugin.create(shim, MSDA) as p:
        assert p.workspace_size(msda_io(FLOAT), 6) == 0
