"""Start training from an rfkp or peer checkpoint, possibly of another skeleton.

The model for the new data keeps the checkpoint's architecture (backbone, projectors, decoder sizes) and takes
its classes and keypoints from the dataset. Tensors whose shape is the same are copied; the rest (class logits,
keypoint query embeddings, anything sized by the skeleton) keep their fresh initialisation, and so do the
class and keypoint tensors whose names changed even when their shapes agree (keypoints the checkpoint does not
name, as in an rfdetr checkpoint, count as unchanged when their number is). Query tables whose row count
differs (other ``num_queries`` or group count) get the overlapping rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rfkp.checkpoint import load_config_and_state
from rfkp.config import ModelConfig, placeholder_keypoint_names

_ROW_TABLES = ("query_feat.weight", "refpoint_embed.weight")
#: Tensors whose rows mean particular classes / particular keypoints.
CLASS_TENSORS = ("class_embed.", "two_stage.enc_out_class_embed.")
KEYPOINT_TENSORS = ("keypoint_queries.queries", "keypoint_queries_enc.queries", "decoder.keypoint_pos_embed")


def schema_tied_prefixes(source: ModelConfig, target: ModelConfig) -> tuple[str, ...]:
    """Tensors to leave at their fresh initialisation because the classes or the keypoints changed meaning
    (different names), even where the shapes happen to agree."""
    reset: tuple[str, ...] = ()
    if list(source.class_names[: source.num_classes]) != list(target.class_names[: target.num_classes]):
        reset += CLASS_TENSORS
    if not _same_keypoints(source, target):
        reset += KEYPOINT_TENSORS
    return reset


def _same_keypoints(source: ModelConfig, target: ModelConfig) -> bool:
    """Whether every keypointed class has the same keypoints in both: the same names, or, where the source
    does not know its names (placeholders ``kp_0``, ... of an rfdetr checkpoint), the same count, taken in
    order (the released model's COCO person keypoints then line up with a COCO person file's)."""
    if len(source.keypoint_names) != len(target.keypoint_names):
        return False
    for theirs, ours in zip(source.keypoint_names, target.keypoint_names):
        if list(theirs) != list(ours) and list(theirs) != placeholder_keypoint_names(len(ours)):
            return False
    return True


@dataclass
class InitReport:
    copied: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        groups = sorted({_group(name) for name in self.reinitialised})
        return (
            f"copied {len(self.copied)} tensors, {len(self.partial)} partially, "
            f"re-initialised {len(self.reinitialised)} ({', '.join(groups)}), "
            f"{len(self.unused)} checkpoint tensors unused"
        )


def _group(name: str) -> str:
    """A tensor's kind for the summary: the class- or keypoint-tied prefix it has, else its name without the
    layer index and the weight/bias suffix (``decoder.layers.*.class_embed``)."""
    for prefix in (*CLASS_TENSORS, *KEYPOINT_TENSORS):
        if prefix in name:
            return prefix.rstrip(".")
    parts = ["*" if part.isdigit() else part for part in name.split(".")]
    return ".".join(parts[:-1] if parts[-1] in ("weight", "bias") else parts)


#: A checkpoint already read: ``load_config_and_state``'s ``(config, state)``.
LoadedCheckpoint = tuple[ModelConfig, dict[str, torch.Tensor]]


def load_matching(
    network: nn.Module, source: str | Path | LoadedCheckpoint, target: ModelConfig | None = None
) -> InitReport:
    """Copy every tensor of the checkpoint ``source`` (a path, or one already read) whose name and shape match
    ``network``; with the ``target`` config, tensors tied to classes or keypoints that changed meaning stay
    fresh."""
    config, state = source if isinstance(source, tuple) else load_config_and_state(source)
    reset = schema_tied_prefixes(config, target) if target is not None else ()
    own = network.state_dict()
    report = InitReport()
    with torch.no_grad():
        for name, target_t in own.items():
            source = state.get(name)
            if source is None or source.ndim != target_t.ndim or name.startswith(reset):
                report.reinitialised.append(name)
            elif source.shape == target_t.shape:
                target_t.copy_(source.to(target_t.dtype))
                report.copied.append(name)
            elif name in _ROW_TABLES and source.shape[1:] == target_t.shape[1:]:
                rows = min(source.shape[0], target_t.shape[0])
                target_t[:rows].copy_(source[:rows].to(target_t.dtype))
                report.partial.append(name)
            else:
                report.reinitialised.append(name)
    report.unused = sorted(set(state) - set(own))
    return report
