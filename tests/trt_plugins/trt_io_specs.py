"""Input/output tensor specs (DataType code, shape) of the two rfkp plugins, for the shim tests."""

from __future__ import annotations

from rfkp.tensorrt_plugins import INT32, INT64


def msda_io(t: int, batch: int = 2, queries: int = 5, heads: int = 4, channels: int = 8, levels: int = 2,
            points: int = 3, num_value: int = 26, ref_levels: int = 1, ref_dim: int = 4) -> list[tuple]:
    """value, spatial_shapes, level_start_index, reference, sampling_offsets, attention_logits, then output."""
    return [
        (t, [batch, num_value, heads, channels]),
        (INT64, [levels, 2]),
        (INT64, [levels]),
        (t, [batch, queries, ref_levels, ref_dim]),
        (t, [batch, queries, heads, levels, points, 2]),
        (t, [batch, queries, heads, levels, points]),
        (t, [batch, queries, heads * channels]),
    ]


def rescore_io(t: int, num: int = 6, keypoints: int = 5, mask: int = INT32) -> list[tuple]:
    """cholesky, findable_logit, active, score, box_wh, image_wh, then score', log_mean_trace, covariance."""
    return [
        (t, [num, keypoints, 3]),
        (t, [num, keypoints]),
        (mask, [num, keypoints]),
        (t, [num]),
        (t, [num, 2]),
        (t, [num, 2]),
        (t, [num]),
        (t, [num]),
        (t, [num, keypoints, 2, 2]),
    ]
