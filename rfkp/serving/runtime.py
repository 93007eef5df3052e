"""The work behind the three python-backend models, free of Triton so it can be tested directly.

Each ``model.py`` in ``model_repository/`` only converts between Triton tensors and these callables.
The math is the one of ``RFDETRKeypoint.predict``: ``rfkp.preprocess`` (bilinear resize without
antialias, mean/std), ``forward_raw``, and ``rfkp.postprocess`` (top-k, rescoring, source pixels).
The network runs on PyTorch (a checkpoint, CPU or CUDA) or on ONNX Runtime (a raw-output ONNX export,
``rfkp export --outputs raw``, CPU).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from rfkp.config import ModelConfig
from rfkp.postprocess import decode_detections, to_keypoint_detections
from rfkp.preprocess import prepare_batch
from rfkp.serving import protocol as P
from rfkp.serving.packing import pack_detections
from rfkp.serving.payload import RequestError, decode_request_images

__all__ = [
    "NetworkRunner",
    "OnnxRuntimeRunner",
    "Postprocessor",
    "Preprocessor",
    "check_thresholds",
    "make_network",
    "parameters_of",
]

ONNXRUNTIME_HINT = (
    "install it with: pip install onnxruntime (or pip install -e '.[export]'), or serve the PyTorch checkpoint "
    "(rfkp serve --runtime torch)"
)

logger = logging.getLogger(__name__)

Network = Callable[[np.ndarray], dict[str, np.ndarray]]
"""(N, 3, R, R) float32 normalised pixels -> ``RAW_OUTPUTS`` as float32 numpy arrays."""


def parameters_of(model_config_json: str) -> dict[str, str]:
    """The ``parameters`` of a Triton model configuration (``args["model_config"]``) as key -> string."""
    cfg = json.loads(model_config_json)
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def _required(params: Mapping[str, str], key: str) -> str:
    if key not in params:
        raise KeyError(f"model configuration lacks the parameter {key!r} (render it with rfkp serve)")
    return params[key]


def _set_threads(params: Mapping[str, str]) -> None:
    """torch intra-op threads of this model instance (0 or absent: torch's default)."""
    threads = int(params.get(P.PARAM_NUM_THREADS, "0"))
    if threads > 0:
        torch.set_num_threads(threads)


def check_thresholds(thresholds: np.ndarray, n: int) -> list[float]:
    """The ``THRESHOLD`` input of a request of ``n`` images as floats. Raises RequestError for another shape
    than (n, 1) or a value outside [0, 1] (NaN included)."""
    if thresholds.shape != (n, 1):
        raise RequestError(f"{P.INPUT_THRESHOLD} must have shape ({n}, 1), got {thresholds.shape}")
    values = [float(v) for v in thresholds.reshape(-1)]
    bad = [v for v in values if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise RequestError(f"{P.INPUT_THRESHOLD} must lie in [0, 1], got {bad[0]}")
    return values


class Preprocessor:
    """Request images -> (PIXELS (N, 3, R, R) float32, SOURCE_SIZE (N, 2) int64 (H, W))."""

    def __init__(self, config: ModelConfig, *, max_pixels: int) -> None:
        self.config = config
        self.max_pixels = max_pixels

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> Preprocessor:
        _set_threads(params)
        config = ModelConfig.from_dict(json.loads(_required(params, P.PARAM_MODEL_CONFIG)))
        return cls(config, max_pixels=int(_required(params, P.PARAM_MAX_PIXELS)))

    def __call__(
        self, encoded: np.ndarray | None, raw: np.ndarray | None, thresholds: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raises RequestError for anything wrong with the payload (see ``payload``) or with ``thresholds`` (the
        request's THRESHOLD, checked here before any image is decoded and again by the postprocessor)."""
        images = decode_request_images(encoded, raw, max_pixels=self.max_pixels)  # encoded ones decode lazily
        if thresholds is not None:
            check_thresholds(thresholds, len(images))
        cfg = self.config
        x, sizes = prepare_batch(images, cfg.resolution, cfg.image_mean, cfg.image_std, max_pixels=self.max_pixels)
        return x.numpy(), sizes.numpy().astype(np.int64)


class NetworkRunner:
    """PyTorch eager network on CPU or CUDA, loaded once from a checkpoint."""

    def __init__(self, weights: Path | str, *, device: str = "cpu", num_threads: int = 0) -> None:
        from rfkp.api import RFDETRKeypoint

        _set_threads({P.PARAM_NUM_THREADS: str(num_threads)})
        self.model = RFDETRKeypoint.from_checkpoint(weights, device=device)
        logger.info("rfkp_model: %s on %s, %d torch threads", weights, device, torch.get_num_threads())

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        raw = self.model.forward_raw(torch.from_numpy(pixels))
        return {name: raw[name].float().cpu().numpy() for name in P.RAW_OUTPUTS}


class OnnxRuntimeRunner:
    """A raw-output ONNX export (``rfkp export --outputs raw``) on ONNX Runtime's CPU execution provider.

    The graph must take ``PIXELS`` (N, 3, R, R) float32 and give exactly the raw outputs ``pred_logits``,
    ``pred_boxes`` and ``pred_keypoints`` (float32); anything else (for example the final-detections export)
    is refused when the runner is built, not at the first request.

    Args:
        num_threads: ONNX Runtime intra-op threads (0: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, graph: Path | str, *, num_threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(f"serving {graph} needs the 'onnxruntime' package ({exc}); {ONNXRUNTIME_HINT}") from None
        graph = Path(graph)
        if not graph.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {graph}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self._check_signature(graph)
        self.graph = graph
        logger.info(
            "rfkp_model: %s on ONNX Runtime %s (CPUExecutionProvider), %s intra-op threads",
            graph, ort.__version__, num_threads or "default",
        )  # fmt: skip

    def _check_signature(self, graph: Path) -> None:
        inputs = [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]
        outputs = {o.name: o.type for o in self.session.get_outputs()}
        ok = (
            len(inputs) == 1
            and inputs[0][0] == P.PIXELS
            and inputs[0][1] == "tensor(float)"
            and len(inputs[0][2]) == 4
            and inputs[0][2][1] == 3
            and set(outputs) == set(P.RAW_OUTPUTS)
            and all(t == "tensor(float)" for t in outputs.values())
        )
        if not ok:
            got_in = ", ".join(f"{n} {t} {s}" for n, t, s in inputs)
            got_out = ", ".join(f"{n} {t}" for n, t in outputs.items())
            raise ValueError(
                f"{graph} is not a raw-output rfkp graph: it takes [{got_in}] and gives [{got_out}]; rfkp_model "
                f"needs input {P.PIXELS} float (N, 3, R, R) and exactly the float outputs "
                f"{', '.join(P.RAW_OUTPUTS)} (export one with: rfkp export --outputs raw --dynamic-batch MAX)"
            )

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        values = self.session.run(list(P.RAW_OUTPUTS), {P.PIXELS: x})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(P.RAW_OUTPUTS, values)}


def make_network(params: Mapping[str, str]) -> Network:
    """The network runner for a rendered ``rfkp_model`` configuration.

    The weights' suffix picks the runtime: PyTorch checkpoints (``.pth``/``.pt``) run eagerly on the
    configured device; a raw-output ``.onnx`` export runs on ONNX Runtime (CPU only). Both use the
    ``num_threads`` parameter for their intra-op threads.
    """
    weights = Path(_required(params, P.PARAM_WEIGHTS))
    if weights.suffix == ".onnx":
        device = params.get(P.PARAM_DEVICE, "cpu")
        if device != "cpu":
            raise ValueError(
                f"{weights}: the ONNX Runtime runner is CPU only, got device {device!r} (serve the checkpoint "
                "on CUDA with PyTorch, or a TensorRT engine)"
            )
        return OnnxRuntimeRunner(weights, num_threads=int(params.get(P.PARAM_NUM_THREADS, "0")))
    return NetworkRunner(
        weights,
        device=params.get(P.PARAM_DEVICE, "cpu"),
        num_threads=int(params.get(P.PARAM_NUM_THREADS, "0")),
    )


class Postprocessor:
    """Raw network outputs of one request -> the padded ensemble outputs (``packing``)."""

    def __init__(self, config: ModelConfig, *, threshold: float, max_detections: int) -> None:
        self.config = config
        self.threshold = threshold
        self.max_detections = max_detections

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> Postprocessor:
        _set_threads(params)
        config = ModelConfig.from_dict(json.loads(_required(params, P.PARAM_MODEL_CONFIG)))
        return cls(
            config,
            threshold=float(_required(params, P.PARAM_THRESHOLD)),
            max_detections=int(_required(params, P.PARAM_MAX_DETECTIONS)),
        )

    def _thresholds(self, thresholds: np.ndarray | None, n: int) -> list[float]:
        return [self.threshold] * n if thresholds is None else check_thresholds(thresholds, n)

    def __call__(
        self, raw: Mapping[str, np.ndarray], source_sizes: np.ndarray, thresholds: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        n = source_sizes.shape[0]
        limits = self._thresholds(thresholds, n)
        tensors = {name: torch.from_numpy(np.ascontiguousarray(raw[name])) for name in P.RAW_OUTPUTS}
        sizes = torch.from_numpy(np.ascontiguousarray(source_sizes, dtype=np.int64))
        decoded = decode_detections(
            tensors,
            sizes,
            num_keypoints_per_class=self.config.num_keypoints_per_class,
            num_select=self.max_detections,
            alpha=self.config.rescore_alpha,
            covariance_scale=self.config.covariance_scale_table(),
        )
        detections = []
        for i, limit in enumerate(limits):
            one = {name: value[i : i + 1] for name, value in decoded.items()}
            detections += to_keypoint_detections(one, sizes[i : i + 1], self.config, limit)
        packed = pack_detections(
            detections, max_detections=self.max_detections, max_keypoints=self.config.max_keypoints
        )
        return {name: packed[name] for name in P.DETECTION_OUTPUTS}
