"""The exportable module: normalised pixels in, final fixed-shape detections out (post-processing inside), or
the network's raw outputs (what the ``rfkp_model`` step of the served ensemble produces)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from rfkp.api import RFDETRKeypoint
from rfkp.config import ModelConfig, check_positive_int, check_resolution
from rfkp.export.plugin_nodes import plugin_rescorer, use_plugin_attention
from rfkp.nn.detector import KeypointDETR, SubArchitecture
from rfkp.postprocess import decode_detections
from rfkp.serving.protocol import RAW_OUTPUTS

INPUT_NAME = "PIXELS"
OUTPUT_NAMES = ("scores", "labels", "boxes", "keypoints", "covariances", "findable", "visible")
RAW_OUTPUT_NAMES = RAW_OUTPUTS  # pred_logits, pred_boxes, pred_keypoints: `RFDETRKeypoint.forward_raw`
DETECTIONS, RAW = "detections", "raw"
OUTPUT_KINDS = {DETECTIONS: OUTPUT_NAMES, RAW: RAW_OUTPUT_NAMES}
_DECODED_KEYS = ("scores", "labels", "boxes", "keypoints", "covariance", "findable", "visible")


class ExportedDetector(nn.Module):
    """`PIXELS (B, 3, R, R)` float32, ImageNet-normalised (as `RFDETRKeypoint.preprocess` makes them) ->
    with ``outputs="detections"`` (default):

    - `scores (B, N)` rescored confidences in [0, 1),
    - `labels (B, N)` int64 class ids,
    - `boxes (B, N, 4)` xyxy in input pixels (of the R x R input), clamped to [0, R],
    - `keypoints (B, N, K, 2)` x, y in input pixels,
    - `covariances (B, N, K, 2, 2)` in input pixels^2 (box-area factor included),
    - `findable (B, N, K)`, `visible (B, N, K)` probabilities,

    exactly `rfkp.postprocess.decode_detections` for a source image of R x R pixels: N = min(num_select,
    queries x classes) rows in descending order of the class probability before rescoring (not thresholded),
    K = max keypoints over classes, keypoint slots a row's class does not have (and all slots of classes
    without keypoints) NaN. Origin top-left, pixel centres at +0.5.

    With ``outputs="raw"``: the network's raw outputs, exactly `RFDETRKeypoint.forward_raw` (names in
    `RAW_OUTPUT_NAMES`, the tensors ``rfkp_model`` of the served ensemble emits; Q = `num_queries`):

    - `pred_logits (B, Q, C)` class logits,
    - `pred_boxes (B, Q, 4)` cxcywh normalised to [0, 1],
    - `pred_keypoints (B, Q, C_kp * K, 8)` one block of K slots per keypointed class (see `KeypointDETR`).

    Args:
        model: an `RFDETRKeypoint` or its `KeypointDETR` network (the config travels with the network).
        resolution: R, a multiple of patch_size x num_windows (default: the model's).
        dec_layers, num_queries, patch_size, num_windows: weight-sharing sub-architecture knobs (default: the
            model's), exactly as `predict(**arch)` takes them.
        num_select: N before the cap at queries x classes (detections only).
        plugins: run deformable attention and rescoring through the plugin nodes of
            `rfkp.export.plugin_nodes` (the network is copied; the given model is left untouched). The raw
            outputs have no rescoring: only the attention nodes.
        outputs: "detections" (default) or "raw".
    """

    def __init__(
        self,
        model: RFDETRKeypoint | KeypointDETR,
        *,
        resolution: int | None = None,
        dec_layers: int | None = None,
        num_queries: int | None = None,
        num_select: int = 100,
        patch_size: int | None = None,
        num_windows: int | None = None,
        plugins: bool = False,
        outputs: str = DETECTIONS,
    ) -> None:
        super().__init__()
        if outputs not in OUTPUT_KINDS:
            raise ValueError(f"outputs must be one of {sorted(OUTPUT_KINDS)}, got {outputs!r}")
        self.outputs = outputs
        network = model.network if isinstance(model, RFDETRKeypoint) else model
        if not isinstance(network, KeypointDETR):
            raise TypeError(f"expected an RFDETRKeypoint or a KeypointDETR, got {type(model).__name__}")
        cfg: ModelConfig = network.cfg
        knobs = dict(resolution=resolution, dec_layers=dec_layers, num_queries=num_queries, patch_size=patch_size,
                     num_windows=num_windows)  # fmt: skip
        # None: the model's; 0 or 2.5 must not pass for it; numpy integers become ints (traced and JSON-written)
        knobs = {name: None if value is None else check_positive_int(name, value) for name, value in knobs.items()}
        resolution, dec_layers, num_queries, patch_size, num_windows = knobs.values()
        num_select = check_positive_int("num_select", num_select)
        self.resolution = resolution or cfg.resolution
        self.arch = SubArchitecture(
            patch_size=patch_size, num_windows=num_windows, dec_layers=dec_layers, num_queries=num_queries
        )
        block = (patch_size or cfg.patch_size) * (num_windows or cfg.num_windows)
        check_resolution(self.resolution, block)
        if (dec_layers or cfg.dec_layers) > cfg.dec_layers:
            raise ValueError(f"dec_layers must be in [1, {cfg.dec_layers}], got {dec_layers}")
        if (num_queries or cfg.num_queries) > cfg.num_queries:
            raise ValueError(f"num_queries must be in [1, {cfg.num_queries}], got {num_queries}")
        self.plugins = plugins
        if plugins:
            network = copy.deepcopy(network)
            use_plugin_attention(network)
        self.network = network
        self.config = cfg
        self.requested_select = num_select
        self.register_buffer(
            "image_size", torch.tensor([[self.resolution, self.resolution]]), persistent=False
        )
        self.warm_caches()

    @property
    def patch_size(self) -> int:
        return self.arch.patch_size or self.config.patch_size

    @property
    def num_windows(self) -> int:
        return self.arch.num_windows or self.config.num_windows

    @property
    def num_queries(self) -> int:
        """Queries actually decoded: the knob, capped by the tokens of the feature map."""
        tokens = (self.resolution // self.patch_size) ** 2
        return min(self.arch.num_queries or self.config.num_queries, tokens)

    @property
    def num_select(self) -> int:
        """N, the rows of every output."""
        return min(self.requested_select, self.num_queries * self.config.num_classes)

    @property
    def max_keypoints(self) -> int:
        return self.config.max_keypoints

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of the outputs, in the order `forward` returns them."""
        return OUTPUT_KINDS[self.outputs]

    @torch.no_grad()
    def warm_caches(self) -> None:
        """Compute the resized patch kernel and the interpolated position grid for this resolution now, so a
        trace sees them as constants (their pseudo-inverse and antialiased interpolation do not export)."""
        vit = self.network.backbone.vit
        grid = self.resolution // self.patch_size
        vit.patch_embed.kernel(self.patch_size)
        vit.patch_pos_embed(grid, grid)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """pixels (B, 3, R, R) -> the outputs named in `output_names`, in that order."""
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(
                f"expected pixels (B, 3, {self.resolution}, {self.resolution}), got {tuple(pixels.shape)}"
            )
        raw = self.network(pixels, self.arch, groups=1, with_aux=False)
        if self.outputs == RAW:
            return tuple(raw[name] for name in RAW_OUTPUT_NAMES)
        decoded = decode_detections(
            raw,
            self.image_size.expand(pixels.shape[0], 2),
            num_keypoints_per_class=self.config.num_keypoints_per_class,
            num_select=self.requested_select,
            alpha=self.config.rescore_alpha,
            rescorer=plugin_rescorer if self.plugins else None,
            covariance_scale=self.config.covariance_scale_table(),
        )
        return tuple(decoded[k] for k in _DECODED_KEYS)

    def output_shapes(self, batch: int | str = "B") -> dict[str, tuple[int | str, ...]]:
        """Output name -> shape for a batch size (an int, or a symbol)."""
        k = self.max_keypoints
        if self.outputs == RAW:
            q, cfg = self.num_queries, self.config
            shapes = ((q, cfg.num_classes), (q, 4), (q, len(cfg.num_keypoints_per_class) * k, 8))
        else:
            n = self.num_select
            shapes = ((n,), (n,), (n, 4), (n, k, 2), (n, k, 2, 2), (n, k), (n, k))
        return {name: (batch, *shape) for name, shape in zip(self.output_names, shapes)}
