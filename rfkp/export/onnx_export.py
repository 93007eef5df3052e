"""`export_onnx`: an `ExportedDetector` as an ONNX graph, portable or with the rfkp plugin nodes, with the final
detections or the network's raw outputs as outputs.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used on purpose: it traces one forward
pass with concrete values, so the network's shape-dependent Python (proposal grids, level sizes, window
layout) becomes constants of the chosen resolution, and autograd.Function ``symbolic`` methods write the
plugin nodes. ``torch.export`` (the dynamo exporter) refuses the same network on data-dependent guards and
needs onnxscript; see docs/export.md.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from rfkp.api import RFDETRKeypoint
from rfkp.checkpoint import remove_stale_partials
from rfkp.export import plugin_nodes
from rfkp.export.graph import DETECTIONS, INPUT_NAME, RAW, ExportedDetector
from rfkp.nn.detector import KeypointDETR
from rfkp.ops.backend import forced_ops_backend
from rfkp.serving.repository import metadata_parameters

DEFAULT_OPSET = 17
BATCH_AXIS = "batch"
PORTABLE, PLUGINS = "portable", "plugins"
ONNX_INSTALL_HINT = "pip install 'rfkp[export]' (or pip install onnx)"

# metadata_props keys
META_CONFIG = "rfkp_config"
META_FLAVOUR = "rfkp_flavour"
META_RESOLUTION = "rfkp_resolution"
META_INPUT = "rfkp_input"
META_OUTPUTS = "rfkp_outputs"
META_OUTPUT_KIND = "rfkp_output_kind"
META_OUTPUT_SHAPES = "rfkp_output_shapes"
META_ARCH = "rfkp_sub_architecture"
META_BATCH = "rfkp_batch"
META_PLUGINS = "rfkp_plugins"
META_CONVENTIONS = "rfkp_conventions"
CONVENTIONS = (
    "input: ImageNet-normalised RGB float32 (B, 3, R, R), bilinear resize without antialias; "
    "outputs: rows in descending order of the class probability before rescoring, not thresholded; "
    "coordinates in input pixels (origin top-left, pixel centres at +0.5); covariances in input "
    "pixels^2; NaN in keypoint slots the class does not have"
)
RAW_CONVENTIONS = (
    "input: ImageNet-normalised RGB float32 (B, 3, R, R), bilinear resize without antialias; "
    "outputs: the network's raw outputs (RFDETRKeypoint.forward_raw): pred_logits (B, Q, C) class logits, "
    "pred_boxes (B, Q, 4) cxcywh normalised to [0, 1], pred_keypoints (B, Q, C_kp * K, 8) = x, y normalised, "
    "findable logit, visible logit, log_l11, l21, log_l22, class term; zeros in padding slots"
)


def _cpu_copy(detector: ExportedDetector) -> ExportedDetector:
    """The detector on CPU in eval mode (a copy when it lives elsewhere, so the caller's model stays put)."""
    if any(p.device.type != "cpu" for p in detector.parameters()):
        detector = copy.deepcopy(detector).cpu()
        detector.warm_caches()
    return detector.eval()


def _metadata(
    detector: ExportedDetector, flavour: str, batch: int | None, max_batch: int | None, plugin_ops: list[str]
) -> dict[str, str]:
    cfg = detector.config
    meta = {
        META_CONFIG: json.dumps(cfg.to_dict()),
        **metadata_parameters(cfg),  # class_names, keypoint_names, skeletons: as the served ensemble has them
        META_FLAVOUR: flavour,
        META_RESOLUTION: str(detector.resolution),
        META_INPUT: INPUT_NAME,
        META_OUTPUT_KIND: detector.outputs,
        META_OUTPUTS: json.dumps(list(detector.output_names)),
        META_OUTPUT_SHAPES: json.dumps(detector.output_shapes(batch if batch is not None else BATCH_AXIS)),
        META_ARCH: json.dumps(
            {
                "patch_size": detector.patch_size,
                "num_windows": detector.num_windows,
                "dec_layers": detector.arch.dec_layers or cfg.dec_layers,
                "num_queries": detector.num_queries,
                **({"num_select": detector.num_select} if detector.outputs == DETECTIONS else {}),
            }
        ),
        META_BATCH: json.dumps({"batch": batch, "max_batch": max_batch}),
        META_CONVENTIONS: RAW_CONVENTIONS if detector.outputs == RAW else CONVENTIONS,
    }
    if flavour == PLUGINS:
        meta[META_PLUGINS] = json.dumps(
            {
                "domain": plugin_nodes.DOMAIN,
                "plugin_version": plugin_nodes.PLUGIN_VERSION,
                "plugin_namespace": plugin_nodes.PLUGIN_NAMESPACE,
                "ops": plugin_ops,  # those in the graph: a raw export has no rescoring node
            }
        )
    return meta


def _declare_output_shapes(graph: Any, detector: ExportedDetector, batch: int | str) -> None:
    """Write the exact output shapes into the graph (the tracer leaves the top-k sizes symbolic)."""
    shapes = detector.output_shapes(batch)
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[output.name]:
            dim = dims.add()
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph as a dict (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_onnx(
    model: RFDETRKeypoint | KeypointDETR | ExportedDetector,
    path: str | Path,
    *,
    resolution: int | None = None,
    batch: int = 1,
    dynamic_batch: int | None = None,
    plugins: bool | None = None,
    opset: int = DEFAULT_OPSET,
    dec_layers: int | None = None,
    num_queries: int | None = None,
    num_select: int = 100,
    patch_size: int | None = None,
    num_windows: int | None = None,
    outputs: str | None = None,
    check: bool = True,
) -> Path:
    """Write the model with its post-processing as one ONNX graph (`ExportedDetector`'s inputs and outputs),
    or with ``outputs="raw"`` the network alone (outputs ``pred_logits``, ``pred_boxes``, ``pred_keypoints``).

    Args:
        model: a model (the knobs below build the `ExportedDetector`) or a ready `ExportedDetector` (then the
            knobs must be left at their defaults).
        batch: the fixed batch size of the graph, unless `dynamic_batch` is given.
        dynamic_batch: MAX: the batch axis is symbolic (named "batch"); MAX is recorded in the metadata for
            engine optimisation profiles and serving configs.
        plugins: False (default): standard ONNX ops only (GridSample samples the deformable attention).
            True: deformable attention and rescoring as ``rfkp`` domain nodes for the TensorRT plugins.
        outputs: "detections" (default) or "raw" (`ExportedDetector`).
        check: run ``onnx.checker.check_model(full_check=True)`` on the result.

    Returns:
        The written path.
    """
    if importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError(f"ONNX export needs the 'onnx' package: {ONNX_INSTALL_HINT}")

    if isinstance(model, ExportedDetector):
        knobs = (resolution, dec_layers, num_queries, patch_size, num_windows)
        if (
            any(k is not None for k in knobs)
            or num_select != 100
            or plugins not in (None, model.plugins)
            or outputs not in (None, model.outputs)
        ):
            raise ValueError("pass the knobs to ExportedDetector, not to export_onnx, when giving a detector")
        detector = model
    else:
        detector = ExportedDetector(
            model, resolution=resolution, dec_layers=dec_layers, num_queries=num_queries,
            num_select=num_select, patch_size=patch_size, num_windows=num_windows, plugins=bool(plugins),
            outputs=outputs or DETECTIONS,
        )  # fmt: skip
    if dynamic_batch is not None and dynamic_batch < 1:
        raise ValueError(f"dynamic_batch must be >= 1, got {dynamic_batch}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    modes = {module: module.training for module in detector.modules()}
    try:
        return _export(detector, Path(path), batch, dynamic_batch, opset, check)
    finally:
        for module, training in modes.items():  # the caller's model keeps its train/eval state
            module.train(training)


def _export(
    detector: ExportedDetector, path: Path, batch: int, dynamic_batch: int | None, opset: int, check: bool
) -> Path:
    """Trace, annotate and check the graph in a ``.NAME.PID.tmp`` file beside ``path``, then rename it: an
    export that fails or is interrupted leaves an older file at ``path`` as it was."""
    import onnx

    detector = _cpu_copy(detector)
    flavour = PLUGINS if detector.plugins else PORTABLE
    example_batch = min(2, dynamic_batch) if dynamic_batch else batch
    example = torch.zeros(example_batch, 3, detector.resolution, detector.resolution)
    output_names = list(detector.output_names)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: BATCH_AXIS} for name in (INPUT_NAME, *output_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _trace(detector, example, tmp, opset, output_names, dynamic_axes)
        graph = onnx.load(str(tmp))
        _annotate(graph, detector, flavour, batch, dynamic_batch)
        if check:
            onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _trace(
    detector: ExportedDetector, example: torch.Tensor, path: Path, opset: int, output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> None:
    with torch.no_grad(), forced_ops_backend("reference"), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(TorchScript-based ONNX export|Constant folding).*")
        detector.warm_caches()
        torch.onnx.export(
            detector,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            custom_opsets={plugin_nodes.DOMAIN: plugin_nodes.DOMAIN_VERSION} if detector.plugins else None,
            do_constant_folding=True,
        )


def _annotate(
    graph: Any, detector: ExportedDetector, flavour: str, batch: int, dynamic_batch: int | None
) -> None:
    """Output shapes, metadata and doc string of the traced graph."""
    import onnx

    _declare_output_shapes(graph, detector, BATCH_AXIS if dynamic_batch else batch)
    plugin_ops = sorted({node.op_type for node in graph.graph.node if node.domain == plugin_nodes.DOMAIN})
    meta = _metadata(detector, flavour, None if dynamic_batch else batch, dynamic_batch, plugin_ops)
    graph.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items())
    if detector.outputs == RAW:
        graph.doc_string = f"rfkp keypoint detector network, raw outputs ({flavour}); {RAW_CONVENTIONS}"
    else:
        graph.doc_string = f"rfkp keypoint detector with post-processing ({flavour}); {CONVENTIONS}"
