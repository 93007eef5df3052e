"""Turn one sub-architecture of a weight-sharing model into a model of its own.

``bake(model, choice)`` returns a model whose configuration *is* the choice (resolution, patch size, windows,
decoder layers, queries), so ``predict()``, ``rfkp serve``, ``rfkp export`` and ``rfkp eval`` run it without
any knob, and whose outputs equal the original's run with the choice's knobs:

- decoder layers beyond ``dec_layers`` are dropped (the heads are shared by every layer);
- each query group keeps the learned queries and reference boxes of its first ``num_queries`` rows (the rows
  a run with fewer queries reads);
- the patch-embedding kernel is resized to ``patch_size`` once, with the resize the network applies at call
  time (running the baked model at another patch size resizes that kernel again: it is meant for its own);
- resolution and windows are configuration only.

The query groups of training stay, so the baked model can be fine-tuned further.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from rfkp.api import RFDETRKeypoint
from rfkp.nn.detector import KeypointDETR
from rfkp.nn.patch_embed import resize_patch_kernel
from trainer.nas.space import ArchChoice

__all__ = ["bake"]

_DECODER_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")
_PER_QUERY = ("query_feat.weight", "refpoint_embed.weight")
_PATCH_KERNEL = "backbone.vit.patch_embed.weight"


def bake(model: RFDETRKeypoint, choice: ArchChoice) -> RFDETRKeypoint:
    """A model of the sub-architecture ``choice`` of ``model`` (see the module docstring).

    Raises:
        ValueError: the model cannot run ``choice`` (more layers or queries than it has, a side that is not a
            multiple of patch size x windows).
    """
    cfg = model.config
    choice.check_model(cfg)
    baked_cfg = dataclasses.replace(
        cfg,
        resolution=choice.resolution,
        patch_size=choice.patch_size,
        num_windows=choice.num_windows,
        dec_layers=choice.dec_layers,
        num_queries=choice.num_queries,
    )
    state: dict[str, torch.Tensor] = {}
    for key, value in model.network.state_dict().items():
        layer = _DECODER_LAYER.match(key)
        if layer is not None and int(layer.group(1)) >= choice.dec_layers:
            continue
        if key in _PER_QUERY:
            rows = value.view(cfg.group_detr, cfg.num_queries, -1)[:, : choice.num_queries]
            value = rows.reshape(cfg.group_detr * choice.num_queries, -1)
        elif key == _PATCH_KERNEL and choice.patch_size != cfg.patch_size:
            value = resize_patch_kernel(value, choice.patch_size)
        state[key] = value.clone()
    network = KeypointDETR(baked_cfg)
    network.load_state_dict(state, strict=True)  # every tensor accounted for, with its shape
    return RFDETRKeypoint(network, model.device, is_random_init=model.is_random_init)
