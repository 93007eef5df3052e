"""The public inference API: `RFDETRKeypoint`."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from rfkp.checkpoint import CheckpointError, load_config_and_state, write_checkpoint
from rfkp.config import ModelConfig, check_positive_int, check_resolution
from rfkp.detections import KeypointDetections
from rfkp.devices import resolve_device
from rfkp.io import MAX_PIXELS
from rfkp.nn.detector import KeypointDETR, SubArchitecture
from rfkp.nn.init import init_weights
from rfkp.postprocess import decode_detections, to_keypoint_detections
from rfkp.preprocess import prepare_batch
from rfkp.variants import nano

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0


DEFAULT_WEIGHTS = "rfkp_small_mouse.pt"


def default_weights_path() -> Path | None:
    """The bundled default checkpoint, or None when the package ships without it."""
    path = Path(str(resources.files("rfkp") / "assets" / DEFAULT_WEIGHTS))
    return path if path.is_file() else None


_ARCH_KNOBS = ("patch_size", "num_windows", "dec_layers", "num_queries")


def _checked_arch(arch: dict[str, Any], config: ModelConfig) -> dict[str, int | None]:
    """The call-time knobs: known names, each None (the model's) or a positive int, the decoder layers and
    queries at most the model's."""
    unknown = sorted(set(arch) - set(_ARCH_KNOBS))
    if unknown:
        raise TypeError(f"unknown keyword argument(s) {unknown}; the architecture knobs are {list(_ARCH_KNOBS)}")
    checked = {k: None if v is None else check_positive_int(k, v) for k, v in arch.items()}
    for name in ("dec_layers", "num_queries"):
        if checked.get(name) is not None and checked[name] > getattr(config, name):
            raise ValueError(f"{name} must be in [1, {getattr(config, name)}] for this model, got {checked[name]}")
    return checked


def _checked_threshold(threshold: Any) -> float:
    """A score threshold: a real number in [0, 1] (not a bool), as a float."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def _as_batch(images: Any) -> tuple[list[Any], bool]:
    """(the images as a list, whether one image was given rather than a list or tuple of them)."""
    single = not isinstance(images, (list, tuple))
    return ([images] if single else list(images)), single


class RFDETRKeypoint:
    """An RF-DETR Keypoint model ready for inference.

    Build it with `from_checkpoint` (an rfkp checkpoint or a checkpoint of the public `rfdetr` keypoint
    model), `from_config` (random initialisation) or `default()`.
    """

    def __init__(self, network: KeypointDETR, device: str | torch.device | None = None, *, is_random_init: bool = False):
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.is_random_init = is_random_init

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None) -> RFDETRKeypoint:
        device = resolve_device(device)  # a device this machine lacks is refused before the file is read
        config, state = load_config_and_state(path)
        network = KeypointDETR(config)
        try:
            missing, unexpected = network.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
            raise CheckpointError(f"{path}: checkpoint does not match the inferred architecture: {detail}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: checkpoint does not match the inferred architecture; "
                f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
            )
        return cls(network, device)

    @classmethod
    def from_config(
        cls, config: ModelConfig, device: str | torch.device | None = None, seed: int = DEFAULT_SEED
    ) -> RFDETRKeypoint:
        """A randomly initialised model (seeded, reproducible)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = KeypointDETR(config)
            init_weights(network)
        return cls(network, device, is_random_init=True)

    @classmethod
    def default(cls, device: str | torch.device | None = None) -> RFDETRKeypoint:
        """The project's default model: the bundled checkpoint trained on the mirror-mouse data (two classes,
        side and bottom view, 7 keypoints each; see `rfkp/assets/README.md`). Without it (a trimmed install),
        a seeded, randomly initialised `nano` model whose detections are meaningless (`is_random_init`)."""
        path = default_weights_path()
        if path is not None:
            return cls.from_checkpoint(path, device)
        return cls.from_config(nano(), device)

    def save_checkpoint(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write rfkp's checkpoint format; `dtype` (e.g. torch.float16 to halve the file) casts the floating
        tensors. Loading always computes in float32."""
        state = self.network.state_dict()
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating type, got {dtype}")
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        write_checkpoint(path, self.config, state)

    @property
    def config(self) -> ModelConfig:
        return self.network.cfg

    def _block(self, arch: dict[str, int | None]) -> int:
        """Input sides must be multiples of this: the patch size times the windows per side, knobs or config."""
        return (arch.get("patch_size") or self.config.patch_size) * (arch.get("num_windows") or self.config.num_windows)

    # -- pipeline ------------------------------------------------------------------------------------------------
    def preprocess(
        self, images: Sequence[Any], resolution: int | None = None, *, max_pixels: int = MAX_PIXELS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (one image or a list of them, as `predict` takes) -> (x (B, 3, R, R) normalised on the model's
        device, source sizes (B, 2) (H, W)). Images above `max_pixels` (width * height) are refused."""
        res = self.config.resolution if resolution is None else check_positive_int("resolution", resolution)
        check_resolution(res, 1)  # any side up to the largest; predict() also checks it against the block
        check_positive_int("max_pixels", max_pixels)
        cfg = self.config
        batch, _ = _as_batch(images)
        if not batch:
            raise ValueError("preprocess() needs at least one image (predict([]) returns [])")
        return prepare_batch(batch, res, cfg.image_mean, cfg.image_std, self.device, max_pixels=max_pixels)

    @torch.inference_mode()
    def forward_raw(self, x: torch.Tensor, **arch: int | None) -> dict[str, torch.Tensor]:
        """Raw outputs for a normalised batch: `pred_logits`, `pred_boxes`, `pred_keypoints` (see `KeypointDETR`).

        `arch` takes the call-time knobs `patch_size`, `num_windows`, `dec_layers`, `num_queries`.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a normalised batch (B, 3, H, W), got shape {tuple(x.shape)}")
        arch = _checked_arch(arch, self.config)
        block = self._block(arch)
        if x.shape[2] % block or x.shape[3] % block:
            raise ValueError(f"input sides {tuple(x.shape[2:])} must be multiples of {block} (patch size x windows)")
        out = self.network(x.to(self.device, torch.float32), SubArchitecture(**arch))
        return {k: out[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}

    def postprocess(
        self,
        raw: dict[str, torch.Tensor],
        source_sizes: torch.Tensor,
        threshold: float = 0.5,
        num_select: int = 100,
    ) -> list[KeypointDetections]:
        """Raw outputs of `forward_raw` and the source sizes of `preprocess` -> one `KeypointDetections` per
        image: the top `num_select` query x class pairs, those scoring above `threshold` kept."""
        threshold = _checked_threshold(threshold)
        check_positive_int("num_select", num_select)
        source_sizes = torch.as_tensor(source_sizes)
        if source_sizes.ndim != 2 or source_sizes.shape[1] != 2:
            raise ValueError(
                f"source_sizes must be (B, 2) (height, width) per image, got shape {tuple(source_sizes.shape)}"
            )
        decoded = decode_detections(
            raw,
            source_sizes.to(raw["pred_boxes"].device),
            num_keypoints_per_class=self.config.num_keypoints_per_class,
            num_select=num_select,
            alpha=self.config.rescore_alpha,
            covariance_scale=self.config.covariance_scale_table(),
        )
        return to_keypoint_detections(decoded, source_sizes, self.config, threshold)

    def predict(
        self,
        images: Any,
        threshold: float = 0.5,
        resolution: int | None = None,
        *,
        num_select: int = 100,
        max_pixels: int = MAX_PIXELS,
        **arch: int | None,
    ) -> KeypointDetections | list[KeypointDetections]:
        """Detect keypointed objects.

        images: a path, encoded bytes, a PIL image, an HxWx3 uint8 RGB array, a (3, H, W) float tensor in [0, 1],
        or a list of these (then a list is returned). Output coordinates are in source-image pixels.
        threshold: detections whose rescored score is above it are kept, in [0, 1]. num_select: detections
        kept before the threshold (the top over query x class). max_pixels: largest accepted image (width * height). arch: the call-time
        knobs of `forward_raw`. Arguments are checked before any image is read.
        """
        threshold = _checked_threshold(threshold)
        check_positive_int("num_select", num_select)
        check_positive_int("max_pixels", max_pixels)
        if resolution is not None:
            check_positive_int("resolution", resolution)
        arch = _checked_arch(arch, self.config)
        check_resolution(resolution or self.config.resolution, self._block(arch))  # before any image is resized to it
        batch, single = _as_batch(images)
        if not batch:
            return []
        x, sizes = self.preprocess(batch, resolution, max_pixels=max_pixels)
        dets = self.postprocess(self.forward_raw(x, **arch), sizes, threshold, num_select)
        return dets[0] if single else dets
