"""Run a plugin-flavour graph on ONNX Runtime: every ``rfkp`` node gets a model-local ONNX function made by
exporting the node's PyTorch reference (the semantics the TensorRT plugins implement), which ONNX Runtime
inlines. It checks the wiring of the plugin nodes (inputs, order, dtypes, layouts) without TensorRT."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import onnx
import torch
from onnx import helper, numpy_helper

from rfkp.export import plugin_nodes
from rfkp.ops import rescore as rescore_module
from rfkp.ops.ms_deform_attn_fused import ms_deform_attn_fused_reference

OPSET = 17


class _Call(torch.nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.fn(*args)


def _function(
    fn: Callable,
    example: tuple[torch.Tensor, ...],
    op_type: str,
    dynamic_inputs: dict[str, dict[int, str]],
    dynamic_outputs: dict[int, str],
    attributes: list[str],
) -> onnx.FunctionProto:
    inputs, outputs = plugin_nodes.PLUGINS[op_type]
    outputs = tuple(f"out_{name}" for name in outputs)  # the contract reuses input names for outputs
    dynamic_axes = {**dynamic_inputs, **dict.fromkeys(outputs, dynamic_outputs)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Call(fn), example, buf, dynamo=False, opset_version=OPSET, input_names=list(inputs),
            output_names=list(outputs), dynamic_axes=dynamic_axes,
        )  # fmt: skip
    graph = onnx.load_from_string(buf.getvalue()).graph
    constants = [
        helper.make_node(
            "Constant", [], [init.name], value=numpy_helper.from_array(numpy_helper.to_array(init))
        )
        for init in graph.initializer
    ]
    return helper.make_function(
        plugin_nodes.DOMAIN, op_type, list(inputs), list(outputs), constants + list(graph.node),
        [helper.make_opsetid("", OPSET)], attributes=attributes,
    )  # fmt: skip


def _attention_function(
    spatial_shape: tuple[int, int], heads: int, channels: int, points: int
) -> onnx.FunctionProto:
    h, w = spatial_shape
    example = (
        torch.randn(1, h * w, heads, channels), torch.tensor([[h, w]]), torch.zeros(1, dtype=torch.long),
        torch.rand(1, 3, 1, 4), torch.randn(1, 3, heads, 1, points, 2), torch.randn(1, 3, heads, 1, points),
    )  # fmt: skip
    bq = {0: "b", 1: "q"}
    dynamic = {"value": {0: "b"}, "reference": bq, "sampling_offsets": bq, "attention_logits": bq}
    return _function(
        ms_deform_attn_fused_reference, example, plugin_nodes.MS_DEFORM_ATTN, dynamic, bq,
        ["plugin_version", "plugin_namespace"],
    )  # fmt: skip


def _rescore_function(alpha: float) -> onnx.FunctionProto:
    def rescore(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return plugin_nodes.GaussianRescoreNode.forward(None, *args, alpha)

    n, k = 4, 3
    example = (
        torch.randn(n, k, 3), torch.randn(n, k), torch.ones(n, k, dtype=plugin_nodes.ACTIVE_DTYPE), torch.rand(n),
        torch.rand(n, 2), torch.full((n, 2), 64.0),
    )  # fmt: skip
    dynamic = {name: {0: "n"} for name in plugin_nodes.GAUSSIAN_RESCORE_INPUTS}
    # the reference's final clamp below 1 calls nextafter, which has no ONNX op: the same constant instead
    original = rescore_module._below_one
    rescore_module._below_one = lambda t: torch.full_like(t, 1.0 - torch.finfo(t.dtype).eps / 2)
    try:
        return _function(
            rescore, example, plugin_nodes.GAUSSIAN_RESCORE, dynamic, {0: "n"},
            ["plugin_version", "plugin_namespace", "alpha"],
        )  # fmt: skip
    finally:
        rescore_module._below_one = original


def with_reference_functions(
    model: onnx.ModelProto,
    *,
    spatial_shape: tuple[int, int],
    heads: int,
    channels: int,
    points: int,
    alpha: float,
) -> onnx.ModelProto:
    """A copy of a plugin-flavour `model` with both plugin ops defined as local functions of their references.

    spatial_shape: (h, w) of the feature map (the reference bakes the level sizes in); heads, channels,
    points: of the deformable attention; alpha: the rescoring strength the graph's node carries.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.functions.extend(
        [_attention_function(spatial_shape, heads, channels, points), _rescore_function(alpha)]
    )
    return out
