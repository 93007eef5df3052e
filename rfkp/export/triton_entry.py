"""A Triton ``tensorrt_plan`` model folder for an exported engine: ``config.pbtxt`` and ``1/model.plan``.

Two kinds, as the engine's ONNX export:

- detections (default): the engine carries its post-processing, so this model answers on its own (no
  ensemble): input ``PIXELS`` (the normalised network input, as ``rfkp_preprocess`` makes it for the ``rfkp``
  ensemble) and the final outputs of `ExportedDetector` (input pixels of the R x R image). The folder name is
  the model name.
- raw: the ``rfkp_model`` step of the ``rfkp`` ensemble (raw outputs ``pred_logits``, ``pred_boxes``,
  ``pred_keypoints``), rendered from the very template ``rfkp serve --engine`` uses
  (``model_repository/rfkp_model/tensorrt_plan.pbtxt``), so the two cannot disagree.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rfkp.config import ModelConfig
from rfkp.export import plugin_nodes
from rfkp.export.graph import DETECTIONS, INPUT_NAME, OUTPUT_KINDS, OUTPUT_NAMES, RAW

_DATA_TYPES = dict.fromkeys(OUTPUT_NAMES, "TYPE_FP32") | {"labels": "TYPE_INT64"}
PLUGIN_NOTE = (
    "The engine uses the rfkp TensorRT plugins {ops}\n"
    "(version {version}, namespace {namespace}). Load the plugin library into the server:\n"
    "  LD_PRELOAD=/path/librfkp_trt_plugins.so tritonserver ...\n"
    "  or tritonserver --backend-config=tensorrt,plugins=/path/librfkp_trt_plugins.so\n"
    "Build it with: cmake -S csrc/tensorrt -B build/tensorrt && cmake --build build/tensorrt\n"
    "The engine only runs on the GPU model and the TensorRT version it was built with."
)
RAW_NOTE = (
    "rfkp_model of the rfkp ensemble as a TensorRT engine (rfkp export --format triton --outputs raw): put\n"
    "this folder into a repository rendered by rfkp serve (or serve with rfkp serve --engine 1/model.plan),\n"
    "at the model's resolution; the ensemble's max_batch_size must not exceed this one."
)


@dataclass(frozen=True)
class TritonEntryOptions:
    """Batching of the model entry.

    max_batch: the engine's largest batch (the max of its optimisation profile) for a dynamic-batch engine;
        None for a fixed-batch engine of `batch` images (then Triton does not batch: max_batch_size 0).
    """

    batch: int = 1
    max_batch: int | None = 8
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_us: int = 2000
    instances: int = 1
    metadata: dict[str, str] = field(default_factory=dict)

    def preferred(self) -> tuple[int, ...]:
        """Preferred sizes (default: half of max and max), checked against max_batch."""
        from rfkp.serving.repository import default_preferred_batch_sizes

        if self.max_batch is None:
            return ()
        sizes = self.preferred_batch_sizes
        if sizes is None:
            sizes = default_preferred_batch_sizes(self.max_batch)
        bad = [b for b in sizes if not 1 <= b <= self.max_batch]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside [1, max_batch={self.max_batch}]")
        return tuple(sizes)


def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _string(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_config(
    name: str,
    *,
    config: ModelConfig,
    resolution: int,
    num_select: int,
    options: TritonEntryOptions,
    plugins: bool = True,
) -> str:
    """The config.pbtxt text of a ``tensorrt_plan`` entry for `ExportedDetector`'s outputs."""
    n, k = num_select, config.max_keypoints
    shapes = {
        "scores": (n,), "labels": (n,), "boxes": (n, 4), "keypoints": (n, k, 2), "covariances": (n, k, 2, 2),
        "findable": (n, k), "visible": (n, k),
    }  # fmt: skip
    dynamic = options.max_batch is not None
    lead: tuple[int, ...] = () if dynamic else (options.batch,)
    input_dims = _dims((*lead, 3, resolution, resolution))
    lines = [
        "# rfkp keypoint detector with post-processing in the engine (rfkp export --format triton).",
        "# Input: ImageNet-normalised RGB PIXELS; outputs in pixels of the R x R input, rows in descending",
        "# order of the class probability before rescoring, not thresholded; NaN in keypoint slots a class",
        "# does not have. A standalone model: rfkp_model of the rfkp ensemble needs the raw outputs",
        "# (rfkp export --format triton --outputs raw).",
    ]
    if plugins:
        ops = ", ".join(sorted(plugin_nodes.PLUGINS))
        note = PLUGIN_NOTE.format(
            ops=ops, version=plugin_nodes.PLUGIN_VERSION, namespace=plugin_nodes.PLUGIN_NAMESPACE
        )
        lines += ["#", *("# " + line for line in note.splitlines())]
    lines += [
        f"name: {_string(name)}",
        'platform: "tensorrt_plan"',
        f"max_batch_size: {options.max_batch if dynamic else 0}",
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: {input_dims} }} ]',
        "output [",
        ",\n".join(
            f'  {{ name: "{o}" data_type: {_DATA_TYPES[o]} dims: {_dims((*lead, *shapes[o]))} }}'
            for o in OUTPUT_NAMES
        ),
        "]",
    ]
    if dynamic:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: {_dims(options.preferred())}",
            f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
            "}",
        ]
    else:
        lines.append(
            "# fixed-batch engine: every request carries exactly the engine's batch (no dynamic batching)"
        )
    lines.append(f"instance_group [ {{ count: {options.instances} kind: KIND_GPU }} ]")
    lines += [
        f"parameters {{ key: {_string(key)} value: {{ string_value: {_string(value)} }} }}"
        for key, value in options.metadata.items()
    ]
    return "\n".join(lines) + "\n"


def render_raw_config(
    config: ModelConfig,
    *,
    resolution: int,
    num_queries: int,
    options: TritonEntryOptions,
    plugins: bool = True,
) -> str:
    """The config.pbtxt text of ``rfkp_model`` as a ``tensorrt_plan`` engine of the raw outputs: the template
    of the served repository (`rfkp.serving.repository.render_tensorrt_network`) with a comment header.
    Needs a dynamic batch (``options.max_batch``): the ensemble batches."""
    from rfkp.serving.repository import BatchingOptions, ServingOptions, render_tensorrt_network

    if options.max_batch is None:
        raise ValueError("rfkp_model of the rfkp ensemble needs a dynamic-batch engine (max_batch)")
    serving = ServingOptions(
        batching=BatchingOptions(
            max_batch_size=options.max_batch, preferred_batch_sizes=options.preferred(),
            max_queue_delay_us=options.max_queue_delay_us,
        ),
        model_instances=options.instances,
    )  # fmt: skip
    lines = [*("# " + line for line in RAW_NOTE.splitlines())]
    if plugins:
        note = PLUGIN_NOTE.format(
            ops=plugin_nodes.MS_DEFORM_ATTN, version=plugin_nodes.PLUGIN_VERSION,
            namespace=plugin_nodes.PLUGIN_NAMESPACE,
        )  # fmt: skip
        lines += ["#", *("# " + line for line in note.splitlines())]
    body = render_tensorrt_network(config, serving, resolution=resolution, num_queries=num_queries)
    return "\n".join(lines) + "\n" + body


def write_model_entry(
    model_dir: str | Path,
    *,
    config: ModelConfig,
    resolution: int,
    num_select: int,
    options: TritonEntryOptions,
    engine: str | Path | None = None,
    plugins: bool = True,
    outputs: str = DETECTIONS,
    num_queries: int | None = None,
) -> Path:
    """Write ``model_dir/config.pbtxt`` (model name = folder name; ``rfkp_model`` for the raw outputs) and,
    with `engine`, copy it to ``model_dir/1/model.plan``. Returns the config path.

    outputs: "detections" (a standalone model, `render_config`) or "raw" (the ensemble's ``rfkp_model``,
        `render_raw_config`; `num_queries` defaults to the model's).
    """
    if outputs not in OUTPUT_KINDS:
        raise ValueError(f"outputs must be one of {sorted(OUTPUT_KINDS)}, got {outputs!r}")
    model_dir = Path(model_dir)
    if outputs == RAW:
        from rfkp.serving.protocol import NETWORK

        if model_dir.resolve().name != NETWORK:
            raise ValueError(f"the raw-output entry is the ensemble's {NETWORK}: name its folder {NETWORK}")
        text = render_raw_config(
            config, resolution=resolution, num_queries=num_queries or config.num_queries, options=options,
            plugins=plugins,
        )  # fmt: skip
    else:
        text = render_config(
            model_dir.resolve().name, config=config, resolution=resolution, num_select=num_select,
            options=options, plugins=plugins,
        )  # fmt: skip
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    if engine is not None:
        engine = Path(engine)
        if not engine.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {engine}")
        shutil.copyfile(engine, model_dir / "1" / "model.plan")
    return path
