"""The custom ONNX nodes of the plugin flavour: the one Python statement of the contract with the TensorRT
plugins in ``csrc/tensorrt``.

Each node is an autograd.Function: in eager PyTorch it runs the op's PyTorch reference; in the TorchScript
ONNX exporter its ``symbolic`` writes one node of domain ``rfkp``. TensorRT's ONNX parser turns a node it does
not know into a plugin, looked up by ``(op_type, plugin_version, plugin_namespace)``.

``RfkpMSDeformAttn`` (semantics: ``rfkp.ops.ms_deform_attn_fused_reference``):
    inputs   value (B, S, H, D) float, spatial_shapes (L, 2) int64 (h, w), level_start_index (L,) int64,
             reference (B, Q, Lr, 2 | 4) float, sampling_offsets (B, Q, H, L, P, 2) float,
             attention_logits (B, Q, H, L, P) float
    output   (B, Q, H * D) float
``RfkpGaussianRescore`` (semantics: ``rfkp.ops.gaussian_rescore_reference``), attribute ``alpha`` (float):
    inputs   cholesky (N, K, 3) float, findable_logit (N, K) float, active (N, K) int32, score (N,) float,
             box_wh (N, 2) float, image_wh (N, 2) float
    outputs  score (N,), log_mean_trace (N,), covariance (N, K, 2, 2)
Both carry the string attributes ``plugin_version`` and ``plugin_namespace``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rfkp.nn.deformable import DeformableAttention
from rfkp.ops.ms_deform_attn_fused import ms_deform_attn_fused_reference
from rfkp.ops.rescore import gaussian_rescore_reference

DOMAIN = "rfkp"
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "rfkp"
MS_DEFORM_ATTN = "RfkpMSDeformAttn"
GAUSSIAN_RESCORE = "RfkpGaussianRescore"

MS_DEFORM_ATTN_INPUTS = (
    "value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits",
)  # fmt: skip
MS_DEFORM_ATTN_OUTPUTS = ("output",)
GAUSSIAN_RESCORE_INPUTS = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")
GAUSSIAN_RESCORE_OUTPUTS = ("score", "log_mean_trace", "covariance")
# int32: TensorRT casts bool only to int32 (not to uint8) and passes neither bool nor uint8 to plugins
ACTIVE_DTYPE = torch.int32

PLUGINS = {
    MS_DEFORM_ATTN: (MS_DEFORM_ATTN_INPUTS, MS_DEFORM_ATTN_OUTPUTS),
    GAUSSIAN_RESCORE: (GAUSSIAN_RESCORE_INPUTS, GAUSSIAN_RESCORE_OUTPUTS),
}
"""op_type -> (input names, output names), in the order of the node's inputs and outputs."""


def _plugin_node(g: Any, op_type: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
    """One ``rfkp`` domain node with the plugin identity attributes (`g` is the exporter's graph context)."""
    return g.op(
        f"{DOMAIN}::{op_type}",
        *inputs,
        plugin_version_s=PLUGIN_VERSION,
        plugin_namespace_s=PLUGIN_NAMESPACE,
        outputs=outputs,
        **attrs,
    )


def _with_type(node: Any, like: Any, sizes: list[int | None]) -> Any:
    """Declare a node output's dtype (that of `like`) and sizes (None: unknown), so the exporter's shape
    inference goes on past the custom node."""
    node.setType(like.type().with_sizes(sizes))
    return node


Tensor = torch.Tensor


class MSDeformAttnNode(torch.autograd.Function):
    """``RfkpMSDeformAttn``; eager: `ms_deform_attn_fused_reference`."""

    @staticmethod
    def forward(
        ctx: Any, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, reference: Tensor,
        sampling_offsets: Tensor, attention_logits: Tensor,
    ) -> Tensor:  # fmt: skip
        return ms_deform_attn_fused_reference(
            value, spatial_shapes, level_start_index, reference, sampling_offsets, attention_logits
        )

    @staticmethod
    def symbolic(
        g: Any, value: Any, spatial_shapes: Any, level_start_index: Any, reference: Any,
        sampling_offsets: Any, attention_logits: Any,
    ) -> Any:  # fmt: skip
        inputs = (value, spatial_shapes, level_start_index, reference, sampling_offsets, attention_logits)
        out = _plugin_node(g, MS_DEFORM_ATTN, *inputs)
        b, q, h, _, _ = attention_logits.type().varyingSizes()
        d = value.type().varyingSizes()[-1]
        return _with_type(out, value, [b, q, h * d if h is not None and d is not None else None])


class GaussianRescoreNode(torch.autograd.Function):
    """``RfkpGaussianRescore``; eager: `gaussian_rescore_reference` (active as int32, nonzero = active)."""

    @staticmethod
    def forward(
        ctx: Any, cholesky: Tensor, findable_logit: Tensor, active: Tensor, score: Tensor, box_wh: Tensor,
        image_wh: Tensor, alpha: float,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        return gaussian_rescore_reference(
            cholesky, findable_logit, active.to(torch.bool), score, box_wh, image_wh, alpha
        )

    @staticmethod
    def symbolic(
        g: Any, cholesky: Any, findable_logit: Any, active: Any, score: Any, box_wh: Any, image_wh: Any,
        alpha: float,
    ) -> tuple[Any, Any, Any]:  # fmt: skip
        inputs = (cholesky, findable_logit, active, score, box_wh, image_wh)
        new_score, log_mean_trace, cov = _plugin_node(
            g, GAUSSIAN_RESCORE, *inputs, outputs=3, alpha_f=float(alpha)
        )
        n, k = findable_logit.type().varyingSizes()
        return (
            _with_type(new_score, score, [n]),
            _with_type(log_mean_trace, score, [n]),
            _with_type(cov, cholesky, [n, k, 2, 2]),
        )


def plugin_rescorer(
    cholesky: torch.Tensor,
    findable_logit: torch.Tensor,
    active: torch.Tensor,
    score: torch.Tensor,
    box_wh: torch.Tensor,
    image_wh: torch.Tensor,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A `rfkp.postprocess.Rescorer` that becomes one ``RfkpGaussianRescore`` node (active as int32)."""
    return GaussianRescoreNode.apply(
        cholesky, findable_logit, active.to(ACTIVE_DTYPE), score, box_wh, image_wh, float(alpha)
    )


class PluginDeformableAttention(nn.Module):
    """`DeformableAttention` with the sampling as one ``RfkpMSDeformAttn`` node (shares the wrapped weights).

    The plugin gets what the projections produce: the reference boxes, the raw offsets and the raw attention
    logits; it builds the sampling locations and the softmax itself, with the same arithmetic as
    `DeformableAttention` (see `rfkp.ops.ms_deform_attn_fused`).
    """

    def __init__(self, attention: DeformableAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(
        self,
        query: torch.Tensor,
        ref_boxes: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """query (B, Q, C), ref_boxes (B, Q, 4) cxcywh normalised, value (B, S, C) -> (B, Q, C)."""
        v, offsets, logits = self.attention.sampling_inputs(query, value)
        out = MSDeformAttnNode.apply(
            v, spatial_shapes, level_start_index, ref_boxes[:, :, None, :], offsets, logits
        )
        return self.attention.output_proj(out)


def use_plugin_attention(network: nn.Module) -> int:
    """Replace every `DeformableAttention` inside `network` (in place) by a `PluginDeformableAttention` around
    it; returns how many were replaced."""
    targets = [
        (parent, name, child)
        for parent in network.modules()
        for name, child in parent.named_children()
        if isinstance(child, DeformableAttention)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PluginDeformableAttention(child))
    return len(targets)
