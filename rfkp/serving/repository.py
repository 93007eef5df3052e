"""Render the committed ``model_repository/`` templates into a run folder for one set of weights.

The templates (``<model>/config.pbtxt`` with ``$name`` placeholders and ``<model>/1/model.py``) are
never modified; ``render_repository`` writes a complete Triton repository to a destination folder that
the caller owns (never inside the package or the source tree).

``rfkp_model`` is rendered one of three ways: the python backend running the PyTorch checkpoint (``torch``),
the python backend running a raw-output ONNX export on ONNX Runtime (``onnxruntime``, CPU; the graph is
placed in ``rfkp_model/1/model.onnx``), or a TensorRT engine (``tensorrt_plan``, ``1/model.plan``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rfkp.config import ModelConfig
from rfkp.serving import protocol as P

__all__ = [
    "RUNTIMES",
    "BatchingOptions",
    "ServingOptions",
    "check_engine_graph",
    "default_templates",
    "network_dims",
    "render_repository",
    "render_tensorrt_network",
]

logger = logging.getLogger(__name__)

_MODELS = (P.ENSEMBLE, P.PREPROCESS, P.NETWORK, P.POSTPROCESS)
_TENSORRT_TEMPLATE = "tensorrt_plan.pbtxt"
GRAPH_FILE = "model.onnx"
RUNTIMES = ("auto", P.RUNTIME_TORCH, P.RUNTIME_ONNXRUNTIME)


def default_preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Half the largest batch and the largest batch (one size when they coincide)."""
    return tuple(sorted({max(1, max_batch_size // 2), max_batch_size}))


@dataclass(frozen=True)
class BatchingOptions:
    """Dynamic batching of ``rfkp_model``.

    ``max_batch_size`` also bounds the images of one request (the ensemble's batch dimension).
    ``preferred_batch_sizes`` defaults to ``default_preferred_batch_sizes(max_batch_size)``.
    With ``enabled=False`` every request runs alone (Triton's default scheduler).
    """

    enabled: bool = True
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.preferred_batch_sizes is None:
            object.__setattr__(self, "preferred_batch_sizes", default_preferred_batch_sizes(self.max_batch_size))
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
        runtime: what runs the python-backend network on CPU: "torch" (the checkpoint, eager), "onnxruntime"
            (a raw-output ONNX export of it) or "auto" (ONNX Runtime when it is installed, else torch; see
            ``rfkp.serving.deploy.choose_runtime``). On CUDA, and with an engine, it must be "auto" (torch,
            or the engine). ``render_repository`` serves ONNX Runtime only when given the exported graph.
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
    runtime: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == P.RUNTIME_ONNXRUNTIME and self.device != "cpu":
            raise ValueError(
                f"runtime 'onnxruntime' is CPU only (device {self.device!r}): on CUDA the network runs on "
                "torch or as a TensorRT engine (--engine)"
            )
        if self.runtime != "auto" and self.engine is not None:
            raise ValueError(f"runtime {self.runtime!r} and an engine exclude each other: the engine is the runtime")
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
    without keypoints get empty lists, as in ``KeypointDetections``), the COCO category ids (an empty
    list when the model does not know them) and the keypoints' offset from COCO coordinates."""
    pad = [[] for _ in range(config.num_classes - len(config.num_keypoints_per_class))]
    return {
        "class_names": json.dumps(list(config.class_names)),
        "keypoint_names": json.dumps([list(n) for n in config.keypoint_names] + pad),
        "skeletons": json.dumps([[list(e) for e in edges] for edges in config.skeletons] + pad),
        P.PARAM_CATEGORY_IDS: json.dumps(list(config.category_ids)),
        P.PARAM_COCO_KEYPOINT_OFFSET: json.dumps(config.coco_keypoint_offset),
    }


def network_dims(
    config: ModelConfig, *, resolution: int | None = None, num_queries: int | None = None
) -> dict[str, list[int]]:
    """The dims (without the batch axis) of ``rfkp_model``'s input and raw outputs, as its config declares
    them: PIXELS (3, R, R), pred_logits (Q, C), pred_boxes (Q, 4), pred_keypoints (Q, C_kp * K, 8)."""
    r = resolution or config.resolution
    q = num_queries or config.num_queries
    slots = len(config.num_keypoints_per_class) * config.max_keypoints
    return {
        P.PIXELS: [3, r, r],
        "pred_logits": [q, config.num_classes],
        "pred_boxes": [q, 4],
        "pred_keypoints": [q, slots, 8],
    }


def _substitutions(
    config: ModelConfig, options: ServingOptions, *, resolution: int | None = None, num_queries: int | None = None
) -> dict[str, str]:
    b = options.batching
    kmax = config.max_keypoints
    if kmax < 1:
        raise ValueError("the served model has no keypointed class (max keypoints is 0)")
    dims = network_dims(config, resolution=resolution, num_queries=num_queries)
    return {
        "max_batch_size": str(b.max_batch_size),
        "dynamic_batching": _dynamic_batching_block(b),
        "resolution": str(dims[P.PIXELS][1]),
        "num_queries": str(dims["pred_logits"][0]),
        "num_classes": str(config.num_classes),
        "keypoint_slots": str(dims["pred_keypoints"][1]),
        "max_keypoints": str(kmax),
        "max_detections": str(options.max_detections),
        "model_instances": str(options.model_instances),
        "preprocess_instances": str(options.preprocess_instances),
        "postprocess_instances": str(options.postprocess_instances),
    }


def _model_parameters(
    config: ModelConfig,
    weights: Path,
    options: ServingOptions,
    random_init: bool,
    runtime: str,
    network_weights: Path,
) -> dict[str, dict[str, str]]:
    config_json = json.dumps(config.to_dict())
    return {
        P.ENSEMBLE: {
            **metadata_parameters(config),
            P.PARAM_WEIGHTS: str(weights),
            P.PARAM_RANDOM_INIT: json.dumps(random_init),
            P.PARAM_RUNTIME: runtime,
        },
        P.PREPROCESS: {
            P.PARAM_MODEL_CONFIG: config_json,
            P.PARAM_MAX_PIXELS: str(options.max_pixels),
            P.PARAM_NUM_THREADS: str(options.pipeline_threads),
        },
        P.NETWORK: {
            P.PARAM_WEIGHTS: str(network_weights),
            P.PARAM_DEVICE: options.device,
            P.PARAM_NUM_THREADS: str(options.num_threads),
            P.PARAM_RUNTIME: runtime,
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


def render_tensorrt_network(
    config: ModelConfig,
    options: ServingOptions | None = None,
    *,
    resolution: int | None = None,
    num_queries: int | None = None,
    templates: Path | str | None = None,
) -> str:
    """The ``config.pbtxt`` text of ``rfkp_model`` as a ``tensorrt_plan`` model: the template ``rfkp serve
    --engine`` renders (and ``rfkp export --format triton --outputs raw`` writes), so both always agree.
    `resolution` and `num_queries` default to the model's."""
    options = options or ServingOptions()
    src_root = Path(templates) if templates is not None else default_templates()
    values = _substitutions(config, options, resolution=resolution, num_queries=num_queries)
    return _render(src_root / P.NETWORK / _TENSORRT_TEMPLATE, {**values, "parameters": ""})


def _companion_graph(engine: Path) -> Path | None:
    """The ONNX graph ``rfkp export`` wrote beside an engine: ``X.onnx`` for ``X.plan``, or ``model.onnx``
    of a Triton model folder for its ``1/model.plan``."""
    candidates = [engine.with_suffix(".onnx")]
    if engine.name == "model.plan":
        candidates.append(engine.parent.parent / GRAPH_FILE)
    return next((c for c in candidates if c.is_file()), None)


def check_engine_graph(engine: Path | str, config: ModelConfig, max_batch_size: int | None = None) -> Path | None:
    """Check, from the ONNX graph ``rfkp export`` left beside `engine`, that the engine is a raw-output export
    of this model at its resolution and query count (what ``rfkp_model`` must produce), with a dynamic batch
    of at least `max_batch_size`. Engines themselves are not readable without TensorRT: without that graph
    (or without the ``onnx`` package) nothing is checked. Returns the graph that was checked, or None.

    Raises:
        ValueError: the engine was built from the final-detections export, for other shapes, or for a
            fixed or smaller batch.
    """
    graph = _companion_graph(Path(engine))
    if graph is None:
        logger.info("no ONNX graph beside %s: its outputs are not checked", engine)
        return None
    try:
        import onnx
    except ImportError:
        logger.info("onnx is not installed: the outputs of %s are not checked", engine)
        return None
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: the file is not a graph
        raise ValueError(
            f"{graph} beside the engine {engine} is not a readable ONNX graph ({type(exc).__name__}: {exc}); "
            "it is what tells which export the engine was built from: export it again or remove it"
        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("rfkp_output_kind", "detections") != "raw":
        raise ValueError(
            f"{engine} was built from {graph}, the final-detections export; rfkp_model of the rfkp ensemble "
            "needs the raw outputs: rebuild it with rfkp export --format engine --outputs raw --dynamic-batch MAX"
        )
    shapes = json.loads(meta.get("rfkp_output_shapes", "{}"))
    got = {name: list(shape[1:]) for name, shape in shapes.items()}
    got[P.PIXELS] = [3, int(meta.get("rfkp_resolution", "0")), int(meta.get("rfkp_resolution", "0"))]
    want = network_dims(config)
    if got != want:
        raise ValueError(
            f"{engine} ({graph}) has tensors {got}, but rfkp_model of this model needs {want} (export it at the "
            "model's resolution and query count)"
        )
    batch = json.loads(meta.get("rfkp_batch", "{}"))
    if max_batch_size is not None and (batch.get("max_batch") or 0) < max_batch_size:
        raise ValueError(
            f"{engine} ({graph}) was exported for batch {batch}, but rfkp_model batches up to {max_batch_size} "
            f"requests: export it with --dynamic-batch {max_batch_size} (or more)"
        )
    return graph


def _place_graph(graph: Path, target: Path) -> None:
    """Hard-link the graph into the repository (a copy across file systems)."""
    try:
        os.link(graph, target)
    except OSError:
        shutil.copyfile(graph, target)


def render_repository(
    dest: Path | str,
    *,
    config: ModelConfig,
    weights: Path | str,
    options: ServingOptions | None = None,
    random_init: bool = False,
    templates: Path | str | None = None,
    models: Sequence[str] = _MODELS,
    network_graph: Path | str | None = None,
) -> Path:
    """Write a ready-to-serve Triton repository to ``dest`` (created; must be empty if it exists).

    Args:
        config: the served model's configuration (shapes and metadata come from it).
        weights: an rfkp or peer checkpoint the network instance loads (made absolute).
        random_init: marks the weights as a random-initialised stand-in in the ensemble metadata.
        network_graph: a raw-output ONNX export of `weights` (``rfkp export --outputs raw``, dynamic batch):
            placed in ``rfkp_model/1/model.onnx``, which the network instance then runs on ONNX Runtime.
            Required when ``options.runtime`` is "onnxruntime"; an error with runtime "torch" or an engine.

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
        raise FileExistsError(f"refusing to render into non-empty folder {dest} (give an empty or new --run-dir)")
    graph = Path(network_graph).resolve() if network_graph is not None else None
    if options.engine is not None:
        if graph is not None:
            raise ValueError("give either a TensorRT engine or an ONNX graph for rfkp_model, not both")
        engine = Path(options.engine)
        if not engine.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {engine}")
        check_engine_graph(engine, config, options.batching.max_batch_size)
        runtime = P.RUNTIME_TENSORRT
    elif graph is not None:
        if options.runtime == P.RUNTIME_TORCH:
            raise ValueError("runtime 'torch' serves the checkpoint: give no ONNX graph")
        if not graph.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {graph}")
        if options.device != "cpu":
            raise ValueError(f"an ONNX graph is served on ONNX Runtime on CPU only, not on {options.device!r}")
        runtime = P.RUNTIME_ONNXRUNTIME
    elif options.runtime == P.RUNTIME_ONNXRUNTIME:
        raise ValueError(
            "runtime 'onnxruntime' needs the raw-output ONNX graph (network_graph; rfkp.serving.deploy.launch "
            "exports it)"
        )
    else:
        runtime = P.RUNTIME_TORCH
    network_weights = dest / P.NETWORK / "1" / GRAPH_FILE if runtime == P.RUNTIME_ONNXRUNTIME else weights
    values = _substitutions(config, options)
    params = _model_parameters(config, weights, options, random_init, runtime, network_weights)
    for name in models:
        src, out = src_root / name, dest / name
        (out / "1").mkdir(parents=True, exist_ok=True)  # an ensemble needs an (empty) version folder
        template = src / "config.pbtxt"
        if name == P.NETWORK and runtime == P.RUNTIME_TENSORRT:
            template = src / _TENSORRT_TEMPLATE
            shutil.copyfile(Path(options.engine), out / "1" / "model.plan")  # type: ignore[arg-type]
        elif (src / "1" / "model.py").is_file():
            shutil.copyfile(src / "1" / "model.py", out / "1" / "model.py")
        if name == P.NETWORK and runtime == P.RUNTIME_ONNXRUNTIME:
            _place_graph(graph, network_weights)  # type: ignore[arg-type]
        if not template.is_file():
            raise FileNotFoundError(f"missing template {template}")
        text = _render(template, {**values, "parameters": _parameters_block(params.get(name, {}))})
        (out / "config.pbtxt").write_text(text)
    return dest
