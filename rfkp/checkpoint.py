"""Checkpoint reading (safe: never unpickles arbitrary classes) and conversion of peer checkpoints.

Two layouts are read:
- rfkp's own: `{"format": "rfkp", "version": 1, "config": {...plain data...}, "model": state_dict}`;
- the public `rfdetr` keypoint layout: `{"model": state_dict, "args": ...}` where `args` may be a dict or an
  `argparse.Namespace`. Only the classes in `SAFE_GLOBALS` may appear besides tensors and plain data.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import pathlib
import pickle
import re
import time
from pathlib import Path
from typing import Any

import torch

from rfkp.config import ModelConfig

logger = logging.getLogger(__name__)

FORMAT_NAME = "rfkp"
FORMAT_VERSION = 1
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely or does not describe a supported model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True and an explicit allowlist; precise errors for every failure."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path is a directory: {path}")
    if not path.is_file():  # a pipe or a device would block torch.load
        raise CheckpointError(f"checkpoint path is not a regular file (a pipe or a device?): {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint or corrupt") from None
        raise CheckpointError(
            f"refusing to load {path}: it contains objects outside the allowlist of safe types "
            f"(tensors, plain data, {', '.join(c.__name__ for c in SAFE_GLOBALS)}). Details: {_unsupported_global(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a text file or random bytes fail in the unpickler in many ways
        detail = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, (RuntimeError, EOFError, OSError, ValueError)) or not str(exc).strip():
            detail = f"not a torch checkpoint or corrupt ({type(exc).__name__}: {detail})"
        raise CheckpointError(f"cannot read checkpoint {path}: {detail}") from None
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"{path} is not a model checkpoint (expected a dict with a 'model' state dict)")
    if not isinstance(data["model"], dict) or not all(torch.is_tensor(v) for v in data["model"].values()):
        raise CheckpointError(f"{path}: 'model' must map parameter names to tensors")
    return data


def stored_float_dtype(path: str | Path) -> torch.dtype | None:
    """The dtype of a checkpoint's floating tensors (either layout; None when it has none), so a checkpoint
    written from it (``save_checkpoint(dtype=...)``) keeps its size: loading computes in float32."""
    for tensor in read_checkpoint(path)["model"].values():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _unsupported_global(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "global" in line.lower() and "unsupported" in line.lower():
            return line.strip()
    return str(exc).splitlines()[0]


#: A partial file younger than this is never judged stale: its pid may belong to another host or container
#: sharing the folder (a shared graph cache), where "no such process" here says nothing.
STALE_PARTIAL_AGE_S = 3600.0


def remove_stale_partials(path: Path) -> None:
    """Delete the ``.NAME.PID.tmp`` files of writers that died mid-write (a killed run leaves one each): those
    older than ``STALE_PARTIAL_AGE_S`` whose pid runs no process here."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if now - tmp.stat().st_mtime < STALE_PARTIAL_AGE_S:
                continue
        except FileNotFoundError:
            continue
        try:
            os.kill(int(pid), 0)  # raises when no such process runs
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (OSError, OverflowError):  # alive but someone else's, or no pid at all: not ours to judge
            continue


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` atomically: readers see the old file or the whole new one (written to a
    ``.NAME.PID.tmp`` beside it, synced, then renamed), also with several writers on this host. Partial files
    of writers no longer running here are removed first (a folder shared across hosts should not hold runs
    written at once from several of them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(payload, f)
            except RuntimeError as exc:  # torch's zip writer hides the OSError (a full disk) behind its own
                cause = exc.__context__ if isinstance(exc.__context__, OSError) else None
                reason = f"{cause.strerror or cause}" if cause is not None else str(exc).splitlines()[0]
                message = f"could not write {path}: {reason}"
                raise (OSError(cause.errno, message) if cause is not None and cause.errno else OSError(message)) from exc
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure (a full disk) no partial file stays


def write_checkpoint(path: str | Path, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Atomic write of rfkp's own format."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):  # Path() would drop the separator
        raise IsADirectoryError(f"cannot write a checkpoint to {path}: it names a folder; name the file")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write a checkpoint to {path}: it is a folder")
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    save_atomic(payload, path)


def load_config_and_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Reads either layout and returns an rfkp config and an rfkp state dict (float tensors as fp32)."""
    data = read_checkpoint(path)
    if data.get("format") == FORMAT_NAME:
        if data.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: unsupported rfkp checkpoint version {data.get('version')}")
        if "config" not in data:
            raise CheckpointError(f"{path}: an rfkp checkpoint without its 'config' (the model's architecture)")
        try:
            config = ModelConfig.from_dict(data["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid model config: {exc}") from None
        state = data["model"]
    elif any(k.startswith("backbone.0.encoder.") for k in data["model"]):
        args = data.get("args")
        if isinstance(args, argparse.Namespace):
            args = vars(args)
        try:
            config = config_from_peer(data["model"], args if isinstance(args, dict) else {})
        except (CheckpointError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except KeyError as exc:  # e.g. a detection-only RF-DETR checkpoint
            raise CheckpointError(
                f"{path}: lacks the tensor {exc.args[0]!r}: not an rfdetr keypoint checkpoint (a detection-only one?)"
            ) from None
        state = _drop_unused_vit_blocks(convert_peer_state_dict(data["model"]), max(config.out_feature_indexes))
    else:
        raise CheckpointError(f"{path}: unrecognised checkpoint layout (neither rfkp nor rfdetr keypoint)")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    _refuse_non_finite(path, state)
    return config, state


def _refuse_non_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """A NaN or infinite weight (a diverged training run, a damaged file) would make every output NaN, which
    shows as silently empty detections; such a checkpoint is refused, naming the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({names}): the weights are "
            "corrupt (a diverged training run?); use an earlier checkpoint"
        )


def _drop_unused_vit_blocks(state: dict[str, torch.Tensor], used: int) -> dict[str, torch.Tensor]:
    """The peer keeps every encoder layer even when its last output comes earlier; those layers never reach
    the outputs, so rfkp does not build them."""
    rx = re.compile(r"backbone\.vit\.blocks\.(\d+)\.")
    unused = sorted({int(m.group(1)) for k in state if (m := rx.match(k)) and int(m.group(1)) >= used})
    if unused:
        logger.info("ViT blocks %s come after the last feature output (block %d): not loaded", unused, used)
    return {k: v for k, v in state.items() if not ((m := rx.match(k)) and int(m.group(1)) >= used)}


# -- peer layout ---------------------------------------------------------------------------------------------
_VIT = "backbone.0.encoder.encoder."
_PREFIX_MAP = [
    (_VIT + "embeddings.cls_token", "backbone.vit.cls_token"),
    (_VIT + "embeddings.position_embeddings", "backbone.vit.pos_embed"),
    (_VIT + "embeddings.patch_embeddings.projection.", "backbone.vit.patch_embed."),
    (_VIT + "layernorm.", "backbone.vit.norm."),
    (_VIT + "encoder.layer.", "backbone.vit.blocks."),
    ("backbone.0.projector.stages.0.0.", "backbone.projector."),
    ("backbone.0.projector.stages.0.1.", "backbone.projector.norm."),
    ("backbone.0.cross_attn_projector.stages.0.0.", "backbone.keypoint_projector."),
    ("backbone.0.cross_attn_projector.stages.0.1.", "backbone.keypoint_projector.norm."),
    ("transformer.decoder.", "decoder."),
    ("transformer.keypoint_query_initializer_enc.", "keypoint_queries_enc."),
    ("transformer.keypoint_query_initializer.", "keypoint_queries."),
    ("transformer.enc_out_keypoint_embed.", "enc_out_keypoint_embed."),
    ("transformer.register_tokens", "register_tokens"),
    ("transformer.register_ref_points", "register_ref_points"),
    ("transformer.", "two_stage."),
    *((name, name) for name in ("class_embed.", "bbox_embed.", "keypoint_embed.", "refpoint_embed.", "query_feat.")),
]
_DROPPED = re.compile(r"(^_kp_active_mask$|embeddings\.mask_token$|keypoint_class_mask$)")
_BLOCK_RENAMES = [
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1"),
    ("layer_scale2.lambda1", "ls2"),
]
_PROJECTOR_RENAMES = [(".bn.", ".norm."), ("m.", "blocks.")]


def convert_peer_state_dict(peer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in peer.items():
        if _DROPPED.search(key):
            continue
        for src, dst in _PREFIX_MAP:
            if key.startswith(src):
                new = dst + key[len(src) :]
                break
        else:
            raise CheckpointError(f"unsupported parameter in rfdetr checkpoint: {key}")
        if new.startswith("backbone.vit.blocks."):
            m = re.match(r"(backbone\.vit\.blocks\.\d+\.)attention\.attention\.(query|key|value)\.(weight|bias)$", new)
            if m:
                qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
                continue
            for a, b in _BLOCK_RENAMES:
                new = new.replace(a, b)
        elif new.startswith(("backbone.projector.", "backbone.keypoint_projector.")):
            head, _, tail = new.partition("projector.")
            for a, b in _PROJECTOR_RENAMES:
                tail = tail.replace(a, b) if a != "m." else re.sub(r"^m\.", "blocks.", tail)
            new = head + "projector." + tail
        out[new] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"incomplete attention weights at {prefix}")
        out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


# the peer's defaults for what its tensors cannot tell
PEER_CA_HEADS, PEER_SA_HEADS, PEER_POINTS = 16, 8, 2


def _cross_attention_split(peer: dict[str, torch.Tensor], args: dict[str, Any], hidden: int) -> tuple[int, int]:
    """(heads, points) of the decoder's deformable cross-attention (one feature level).

    Its sampling offsets have heads * points * 2 rows, so the tensors give the product and ``args`` (the peer's
    ``ca_nheads`` / ``dec_n_points``) the split; a missing one is derived from the other, both missing take the
    peer's defaults (16 heads) with a warning, since the same tensors fit other splits.
    """
    rows = peer["transformer.decoder.layers.0.cross_attn.sampling_offsets.weight"].shape[0]
    if rows % 2:
        raise CheckpointError(f"cross-attention sampling offsets have {rows} rows, expected heads x points x 2")
    product = rows // 2
    heads = int(args["ca_nheads"]) if "ca_nheads" in args else None
    points = int(args["dec_n_points"]) if "dec_n_points" in args else None
    if heads is None and points is None:
        heads = PEER_CA_HEADS if product % PEER_CA_HEADS == 0 else math.gcd(product, PEER_CA_HEADS)
        logger.warning(
            "checkpoint args name neither ca_nheads nor dec_n_points: assuming %d cross-attention heads x %d points "
            "(the tensors only fix their product, %d); pass a checkpoint whose args carry them if this is wrong",
            heads, product // heads, product,
        )  # fmt: skip
    if heads is None:
        heads = product // points if points and product % points == 0 else 0
    if points is None:
        points = product // heads if heads and product % heads == 0 else 0
    if heads * points != product or hidden % heads:
        raise CheckpointError(
            f"cross-attention of {product} heads x points (sampling offsets {rows} rows) does not fit "
            f"ca_nheads={args.get('ca_nheads')} / dec_n_points={args.get('dec_n_points')} with hidden size {hidden}"
        )
    return heads, points


def _check_supported(peer: dict[str, torch.Tensor], hidden: int) -> None:
    """Refuse what rfkp cannot build, saying why."""
    queries = peer.get("transformer.keypoint_query_initializer.queries")
    if queries is not None and hidden % queries.shape[-1]:
        raise CheckpointError(
            f"the keypoint stream is {queries.shape[-1]} wide, which does not divide the instance stream's {hidden}"
        )


def config_from_peer(peer: dict[str, torch.Tensor], args: dict[str, Any]) -> ModelConfig:
    """Architecture from tensor shapes; what shapes cannot tell (heads, points, windows, resolution) from args."""
    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({rx.match(k).group(1) for k in peer if rx.match(k)})

    if any(k.startswith("backbone.0.projector.stages.1") for k in peer):
        raise CheckpointError("multi-level projectors are not supported (RF-DETR Keypoint uses one level)")
    vit_dim = peer[_VIT + "embeddings.cls_token"].shape[-1]
    patch = peer[_VIT + "embeddings.patch_embeddings.projection.weight"].shape[-1]
    n_pos = peer[_VIT + "embeddings.position_embeddings"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise CheckpointError(f"position embedding of {n_pos} patches is not a square grid")
    depth = count(r"backbone\.0\.encoder\.encoder\.encoder\.layer\.(\d+)\.")
    groups = count(r"transformer\.enc_output\.(\d+)\.")
    dec_layers = count(r"transformer\.decoder\.layers\.(\d+)\.")
    n_rows, hidden = peer["query_feat.weight"].shape
    _check_supported(peer, hidden)
    num_queries = int(args.get("num_queries", n_rows // groups))
    if "num_keypoints_per_class" in args:
        kpc = [int(k) for k in args["num_keypoints_per_class"]]
    elif "_kp_active_mask" in peer:
        kpc = [int(r.sum()) for r in peer["_kp_active_mask"]]
    else:
        raise CheckpointError("cannot infer keypoints per class: no args.num_keypoints_per_class, no _kp_active_mask")
    total_kp = peer["transformer.decoder.keypoint_pos_embed"].shape[0]
    if sum(kpc) != total_kp:
        raise CheckpointError(f"keypoints per class {kpc} do not add up to the {total_kp} keypoint embeddings")
    num_classes = peer["class_embed.weight"].shape[0]
    names = list(args.get("class_names") or [])
    ca_heads, ca_points = _cross_attention_split(peer, args, hidden)
    if "sa_nheads" not in args:
        logger.warning("checkpoint args do not name sa_nheads: assuming %d self-attention heads", PEER_SA_HEADS)
    if not bool(args.get("bbox_reparam", True)):
        raise CheckpointError("the checkpoint was trained with bbox_reparam=False, which rfkp does not implement")
    dual = any(k.startswith("backbone.0.cross_attn_projector.") for k in peer)
    if dual and "dual_projector_kp_only" not in args:
        logger.warning("checkpoint args do not name dual_projector_kp_only: assuming True (the released model's; "
                       "only the keypoint stream reads the second projector)")  # fmt: skip
    return ModelConfig(
        num_classes=num_classes,
        num_keypoints_per_class=kpc,
        class_names=[str(n) for n in names[:num_classes]],
        vit_dim=vit_dim,
        vit_depth=depth,
        vit_heads=int(args.get("vit_heads", vit_dim // 64)),
        patch_size=patch,
        pos_grid=grid,
        num_windows=int(args.get("num_windows", 2)),
        out_feature_indexes=[int(i) for i in args.get("out_feature_indexes", [3, 6, 9, 12])],
        hidden_dim=hidden,
        dec_layers=dec_layers,
        sa_heads=int(args.get("sa_nheads", PEER_SA_HEADS)),
        ca_heads=ca_heads,
        ca_points=ca_points,
        dim_feedforward=peer["transformer.decoder.layers.0.linear1.weight"].shape[0],
        num_queries=num_queries,
        group_detr=groups,
        resolution=int(args.get("resolution", grid * patch)),
        rescore_alpha=float(args.get("postprocess_trace_alpha", 0.2)),
        keypoint_dim_downscale=hidden // peer["transformer.keypoint_query_initializer.queries"].shape[-1],
        inter_instance_kp_attn=any(".inter_inst_kp_attn." in k for k in peer),
        projector_norm="batch" if any(k.startswith("backbone.0.projector.") and k.endswith("running_mean")
                                      for k in peer) else "layer",
        decoder_registers=peer["transformer.register_tokens"].shape[0] if "transformer.register_tokens" in peer else 0,
        keypoint_cross_attn=any(".kp_cross_attn." in k for k in peer),
        dual_projector=dual,
        dual_projector_kp_only=bool(args.get("dual_projector_kp_only", True)),
        coco_keypoint_offset=0.0,  # the peer trains on COCO keypoint coordinates as stored
    )
