"""Input checks shared by every backend of the ops: shapes, dtypes and devices, with precise messages.

The checks read only shapes, dtypes and devices, so they also run on fake tensors (torch.compile, export).
`check_level_layout` reads the values of `spatial_shapes` and is used by the kernel backends only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


class MsdaDims(NamedTuple):
    """Sizes of one deformable-attention call: value (B, S, H, D), samples (B, Q, H, L, P)."""

    batch: int
    num_value: int
    heads: int
    channels: int
    levels: int
    queries: int
    points: int


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> int:
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be (L, 2) (h, w), got {_shape(spatial_shapes)}")
    if spatial_shapes.dtype not in _INT_DTYPES or level_start_index.dtype not in _INT_DTYPES:
        raise TypeError(
            "spatial_shapes and level_start_index must be integer tensors, got "
            f"{spatial_shapes.dtype} and {level_start_index.dtype}"
        )
    levels = spatial_shapes.shape[0]
    if _shape(level_start_index) != (levels,):
        raise ValueError(f"level_start_index must be ({levels},), got {_shape(level_start_index)}")
    if levels < 1:
        raise ValueError("at least one feature level is required")
    return levels


def _check_float(device: torch.device, dtype: torch.dtype, **tensors: torch.Tensor) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"value must be float32, float16, bfloat16 or float64, got {dtype}")
    for name, t in tensors.items():
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but value has {dtype}: cast the inputs to one dtype")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but value is on {device}")


def check_ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    names: tuple[str, str] = ("sampling_locations", "attention_weights"),
) -> MsdaDims:
    """Check the reference signature's shapes; returns the sizes. `names` name the last two in messages."""
    loc_name, weight_name = names
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, H, D), got {_shape(value)}")
    B, S, H, D = value.shape
    levels = _check_levels(spatial_shapes, level_start_index)
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.device.type == "meta" and value.device.type != "meta":  # would dispatch to the shape-only kernel
            raise ValueError(f"{name} is on the meta device but value is on {value.device}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"{loc_name} must be (B, Q, H, L, P, 2), got {_shape(sampling_locations)}")
    Q, P = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (B, Q, H, levels, P, 2)
    if _shape(sampling_locations) != expected:
        raise ValueError(f"{loc_name} must be {expected} for value {_shape(value)} and {levels} levels, "
                         f"got {_shape(sampling_locations)}")
    if _shape(attention_weights) != expected[:-1]:
        raise ValueError(f"{weight_name} must be {expected[:-1]}, got {_shape(attention_weights)}")
    if P < 1:
        raise ValueError("at least one sampling point is required")
    _check_float(value.device, value.dtype, **{loc_name: sampling_locations, weight_name: attention_weights})
    return MsdaDims(B, S, H, D, levels, Q, P)


def check_ms_deform_attn_fused(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> MsdaDims:
    """Check the fused signature's shapes (reference (B, Q, 1 or L, 2 or 4)); returns the sizes."""
    dims = check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_offsets, attention_logits,
                                names=("sampling_offsets", "attention_logits"))
    B, Q, L = dims.batch, dims.queries, dims.levels
    if reference.dim() != 4 or reference.shape[:2] != (B, Q) or reference.shape[2] not in (1, L) \
            or reference.shape[3] not in (2, 4):
        raise ValueError(f"reference must be ({B}, {Q}, 1 or {L}, 2 or 4) (points or boxes), "
                         f"got {_shape(reference)}")
    _check_float(value.device, value.dtype, reference=reference)
    return dims


def check_level_layout(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, num_value: int) -> None:
    """Check that the levels tile S exactly (reads the values; call with real tensors only)."""
    shapes = spatial_shapes.detach().to("cpu", torch.int64)
    starts = level_start_index.detach().to("cpu", torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    if bool((shapes <= 0).any()):
        raise ValueError(f"spatial_shapes must be positive, got {shapes.tolist()}")
    if int(sizes.sum()) != num_value:
        raise ValueError(f"spatial_shapes cover {int(sizes.sum())} positions but value has S={num_value}")
    expected = torch.cumsum(sizes, 0) - sizes
    if not torch.equal(starts, expected):
        raise ValueError(f"level_start_index must be {expected.tolist()} for these shapes, got {starts.tolist()}")


def check_rescore(
    cholesky: torch.Tensor,
    findable_logit: torch.Tensor,
    active: torch.Tensor,
    score: torch.Tensor,
    box_wh: torch.Tensor,
    image_wh: torch.Tensor,
) -> tuple[int, int]:
    """Check the rescoring inputs; returns (N, K)."""
    if cholesky.dim() != 3 or cholesky.shape[-1] != 3:
        raise ValueError(f"cholesky must be (N, K, 3), got {_shape(cholesky)}")
    N, K = cholesky.shape[:2]
    for name, t, shape in (("findable_logit", findable_logit, (N, K)), ("active", active, (N, K)),
                           ("score", score, (N,)), ("box_wh", box_wh, (N, 2)), ("image_wh", image_wh, (N, 2))):
        if _shape(t) != shape:
            raise ValueError(f"{name} must be {shape} for cholesky {_shape(cholesky)}, got {_shape(t)}")
    if active.dtype != torch.bool:
        raise TypeError(f"active must be a bool tensor, got {active.dtype}")
    if active.device != cholesky.device:
        raise ValueError(f"active is on {active.device} but cholesky is on {cholesky.device}")
    if cholesky.dtype not in FLOAT_DTYPES:
        raise TypeError(f"cholesky must be float32, float16, bfloat16 or float64, got {cholesky.dtype}")
    for name, t in (("findable_logit", findable_logit), ("score", score), ("box_wh", box_wh),
                    ("image_wh", image_wh)):
        if t.dtype != cholesky.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but cholesky has {cholesky.dtype}")
        if t.device != cholesky.device:
            raise ValueError(f"{name} is on {t.device} but cholesky is on {cholesky.device}")
    return N, K
