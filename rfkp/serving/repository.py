"""Render the committed ``model_repository/`` templates into a run folder for one set of weights.

The templates (``<model>/config.pbtxt`` with ``$name`` placeholders and ``<model>/1/model.py``) are
never modified; ``render_repository`` writes a complete Triton repository to a destination folder that
the caller owns (never inside the package or the source tree).
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rfkp.config import ModelConfig
from rfkp.serving import protocol as P

__all__ = ["BatchingOptions", "ServingOptions", "default_templates", "render_repository"]

_MODELS = (P.ENSEMBLE, P.PREPROCESS, P.NETWORK, P.POSTPROCESS)
_TENSORRT_TEMPLATE = "tensorrt_plan.pbtxt"


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching of ``rfkp_model``.

    ``max_batch_size`` also bounds the images of one request (the ensemble's batch dimension).
    With ``enabled=False`` every request runs alone (Triton's default scheduler).
    """

    enabled: bool = True
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred batch sizes {bad} are outside [1, max_batch_size={self.max_batch_size}]"
            )


@dataclass(frozen=True)
class ServingOptions:
    """What the rendered repository serves and how.

    Args:
        device: "cpu" or "cuda" (the python-backend network runs PyTorch there).
        threshold: default score threshold in [0, 1] (a request may send THRESHOLD).
        max_detections: D, the fixed number of output rows (top-D query x class pairs before threshold).
        max_pixels: largest accepted source image (H * W), checked before decoding.
        num_threads: torch intra-op threads of the network instance (0: torch's default).
        pipeline_threads: torch threads of each pre/post-processing instance (small images, per
            request work: 1 avoids oversubscribing the cores the network needs).
        model_instances / preprocess_instances / postprocess_instances: Triton instance counts.
        engine: a TensorRT plan; when given, ``rfkp_model`` is rendered as ``tensorrt_plan``.
    """

    device: str = "cpu"
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    threshold: float = 0.5
    max_detections: int = 100
    max_pixels: int = 50_000_000
    num_threads: int = 0
    pipeline_threads: int = 1
    model_instances: int = 1
    preprocess_instances: int = 1
    postprocess_instances: int = 1
    engine: Path | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        for name in ("max_detections", "max_pixels", "model_instances", "preprocess_instances",
                     "postprocess_instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0 or self.pipeline_threads < 0:
            raise ValueError(f"thread counts must be >= 0, got {self.num_threads}, {self.pipeline_threads}")


def default_templates() -> Path:
    """The ``model_repository/`` folder of the source tree this package runs from."""
    root = Path(__file__).resolve().parents[2] / "model_repository"
    if not (root / P.ENSEMBLE / "config.pbtxt").is_file():
        raise FileNotFoundError(
            f"model repository templates not found at {root}; install rfkp from a source checkout "
            "(pip install -e .) or pass the templates folder explicitly"
        )
    return root


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _parameters_block(params: Mapping[str, str]) -> str:
    return "\n".join(
        f"parameters {{ key: {_pbtxt_string(k)} value: {{ string_value: {_pbtxt_string(v)} }} }}"
        for k, v in params.items()
    )


def _dynamic_batching_block(batching: BatchingOptions) -> str:
    if not batching.enabled:
        return "# dynamic batching disabled: every request runs alone"
    preferred = ", ".join(str(b) for b in batching.preferred_batch_sizes)
    lines = ["dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: [ {preferred} ]")
    lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}")
    lines.append("}")
    return "\n".join(lines)


def metadata_parameters(config: ModelConfig) -> dict[str, str]:
    """Class names, keypoint names and skeleton edges as JSON strings, one entry per class (classes
    without keypoints get empty lists, as in ``KeypointDetections``)."""
    pad = [[] for _ in range(config.num_classes - len(config.num_keypoints_per_class))]
    return {
        "class_names": json.dumps(list(config.class_names)),
        "keypoint_names": json.dumps([list(n) for n in config.keypoint_names] + pad),
        "skeletons": json.dumps([[list(e) for e in edges] for edges in config.skeletons] + pad),
    }


def _substitutions(config: ModelConfig, options: ServingOptions) -> dict[str, str]:
    b = options.batching
    kmax = config.max_keypoints
    if kmax < 1:
        raise ValueError("the served model has no keypointed class (max keypoints is 0)")
    return {
        "max_batch_size": str(b.max_batch_size),
        "dynamic_batching": _dynamic_batching_block(b),
        "resolution": str(config.resolution),
        "num_queries": str(config.num_queries),
        "num_classes": str(config.num_classes),
        "keypoint_slots": str(len(config.num_keypoints_per_class) * kmax),
        "max_keypoints": str(kmax),
        "max_detections": str(options.max_detections),
        "model_instances": str(options.model_instances),
        "preprocess_instances": str(options.preprocess_instances),
        "postprocess_instances": str(options.postprocess_instances),
    }


def _model_parameters(
    config: ModelConfig, weights: Path, options: ServingOptions, random_init: bool
) -> dict[str, dict[str, str]]:
    config_json = json.dumps(config.to_dict())
    return {
        P.ENSEMBLE: {
            **metadata_parameters(config),
            P.PARAM_WEIGHTS: str(weights),
            P.PARAM_RANDOM_INIT: json.dumps(random_init),
        },
        P.PREPROCESS: {
            P.PARAM_MODEL_CONFIG: config_json,
            P.PARAM_MAX_PIXELS: str(options.max_pixels),
            P.PARAM_NUM_THREADS: str(options.pipeline_threads),
        },
        P.NETWORK: {
            P.PARAM_WEIGHTS: str(weights),
            P.PARAM_DEVICE: options.device,
            P.PARAM_NUM_THREADS: str(options.num_threads),
        },
        P.POSTPROCESS: {
            P.PARAM_MODEL_CONFIG: config_json,
            P.PARAM_THRESHOLD: repr(float(options.threshold)),
            P.PARAM_MAX_DETECTIONS: str(options.max_detections),
            P.PARAM_NUM_THREADS: str(options.pipeline_threads),
        },
    }


def _render(template: Path, values: Mapping[str, str]) -> str:
    try:
        return string.Template(template.read_text()).substitute(values)
    except KeyError as exc:
        raise ValueError(f"template {template} uses an unknown placeholder ${exc.args[0]}") from None
    except ValueError as exc:
        raise ValueError(f"template {template} has a malformed placeholder: {exc}") from None


def render_repository(
    dest: Path | str,
    *,
    config: ModelConfig,
    weights: Path | str,
    options: ServingOptions | None = None,
    random_init: bool = False,
    templates: Path | str | None = None,
    models: Sequence[str] = _MODELS,
) -> Path:
    """Write a ready-to-serve Triton repository to ``dest`` (created; must be empty if it exists).

    Args:
        config: the served model's configuration (shapes and metadata come from it).
        weights: an rfkp or peer checkpoint the network instance loads (made absolute).
        random_init: marks the weights as a random-initialised stand-in in the ensemble metadata.

    Returns:
        ``dest`` as an absolute path.
    """
    options = options or ServingOptions()
    dest = Path(dest).resolve()
    weights = Path(weights).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    src_root = Path(templates) if templates is not None else default_templates()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"refusing to render into non-empty folder {dest}")
    values = _substitutions(config, options)
    params = _model_parameters(config, weights, options, random_init)
    for name in models:
        src, out = src_root / name, dest / name
        (out / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version folder
        template = src / "config.pbtxt"
        if name == P.NETWORK and options.engine is not None:
            template = src / _TENSORRT_TEMPLATE
            engine = Path(options.engine)
            if not engine.is_file():
                raise FileNotFoundError(f"TensorRT engine not found: {engine}")
            shutil.copyfile(engine, out / "1" / "model.plan")
        elif (src / "1" / "model.py").is_file():
            shutil.copyfile(src / "1" / "model.py", out / "1" / "model.py")
        if not template.is_file():
            raise FileNotFoundError(f"missing template {template}")
        text = _render(template, {**values, "parameters": _parameters_block(params.get(name, {}))})
        (out / "config.pbtxt").write_text(text)
    return dest
