"""TensorRT engine from an exported ONNX graph (TensorRT 10 Python API; needs ``tensorrt`` and, for the
plugin flavour, the rfkp plugin library built from ``csrc/tensorrt``).

The network part runs in FP16 by default; the post-processing layers (top-k, decoding, rescoring: every
layer outside the ``/network/`` scope of `ExportedDetector`) are pinned to FP32, because pixel-squared
covariances overflow FP16 and rescoring takes logs of small numbers.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfkp.export import plugin_nodes
from rfkp.export.graph import INPUT_NAME

logger = logging.getLogger(__name__)

PLUGIN_LIB_ENV = "RFKP_TRT_PLUGIN_LIB"
NETWORK_SCOPE = "/network/"
INSTALL_HINT = (
    "building a TensorRT engine needs the TensorRT Python package and the rfkp plugin library:\n"
    "  pip install 'tensorrt>=10,<11'   # the TensorRT Python wheel (needs an NVIDIA GPU and driver)\n"
    "  cmake -S csrc/tensorrt -B build/tensorrt && cmake --build build/tensorrt -j\n"
    f"then pass the built library with --plugin-lib PATH or set {PLUGIN_LIB_ENV}=PATH"
)


class EngineBuildError(RuntimeError):
    """TensorRT is missing, the plugins are not registered, or the builder failed."""


def tensorrt_available() -> bool:
    """True when the TensorRT Python package imports (a mere folder named ``tensorrt`` does not count)."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def plugin_library(explicit: str | Path | None = None) -> Path | None:
    """The plugin library to load: `explicit`, else $RFKP_TRT_PLUGIN_LIB, else None."""
    value = explicit or os.environ.get(PLUGIN_LIB_ENV)
    return Path(value) if value else None


@dataclass(frozen=True)
class BatchProfile:
    """Optimisation profile of the batch axis: min 1, opt, max (all equal for a fixed-batch graph)."""

    min: int
    opt: int
    max: int

    @classmethod
    def fixed(cls, batch: int) -> BatchProfile:
        return cls(batch, batch, batch)

    @classmethod
    def dynamic(cls, max_batch: int, opt: int | None = None) -> BatchProfile:
        """min 1, opt (default: half of max, at least 1), max."""
        return cls(1, opt or max(1, max_batch // 2), max_batch)

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


def _missing_plugins(registry: Any) -> list[str]:
    # IPluginV3 creators are looked up with get_creator (get_plugin_creator only sees IPluginV2 creators)
    version, namespace = plugin_nodes.PLUGIN_VERSION, plugin_nodes.PLUGIN_NAMESPACE
    return [
        f"{op_type} v{version} ({namespace})"
        for op_type in plugin_nodes.PLUGINS
        if registry.get_creator(op_type, version, namespace) is None
    ]


def _load_plugins(trt: Any, trt_logger: Any, library: Path | None) -> None:
    registry = trt.get_plugin_registry()
    trt.init_libnvinfer_plugins(trt_logger, "")
    if library is not None:
        if not library.is_file():
            raise EngineBuildError(f"plugin library not found: {library}\n{INSTALL_HINT}")
        # the default build registers its creators when loaded (static registration, as Triton loads it)
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise EngineBuildError(f"cannot load the plugin library {library}: {exc}") from None
        if _missing_plugins(registry):  # built with -DRFKP_TRT_STATIC_REGISTRATION=OFF: library entry points
            registry.load_library(str(library))
    missing = _missing_plugins(registry)
    if missing:
        raise EngineBuildError(f"TensorRT plugins not registered: {', '.join(missing)}\n{INSTALL_HINT}")


def check_plugin_library(plugin_lib: str | Path | None = None) -> Path | None:
    """Load the plugin library into TensorRT and check that it registers every rfkp plugin creator (what
    `build_engine` does first), so that a wrong library is reported before a long export. Returns the
    library loaded (None: none was named, and the creators came from one already loaded).

    Raises:
        EngineBuildError: TensorRT is missing, or the library cannot be loaded or lacks a creator.
    """
    if not tensorrt_available():
        raise EngineBuildError(f"the 'tensorrt' Python package is not installed\n{INSTALL_HINT}")
    import tensorrt as trt

    library = plugin_library(plugin_lib)  # None: the creators must come from a library already loaded
    _load_plugins(trt, trt.Logger(trt.Logger.WARNING), library)
    return library


def _pin_postprocess_fp32(trt: Any, network: Any) -> int:
    """Run every floating-point layer outside the network scope in FP32; returns how many were pinned."""
    floating = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name.startswith(NETWORK_SCOPE) or layer.type == trt.LayerType.CONSTANT:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        float_outputs = [j for j, t in enumerate(outputs) if t.dtype in floating]
        if not float_outputs:  # shapes, indices, masks
            continue
        # also top-k, whose indices output keeps its integer type; a plugin gets only its output types (its float
        # inputs follow them through supportsFormatCombination), as a layer precision on a plugin with an int32
        # input (the rescoring's mask) is not something TensorRT documents
        if layer.type != trt.LayerType.PLUGIN_V3:
            layer.precision = trt.float32
        for j in float_outputs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    resolution: int,
    profile: BatchProfile,
    fp16: bool = True,
    plugins: bool = True,
    plugin_lib: str | Path | None = None,
    workspace_bytes: int | None = None,
) -> Path:
    """Parse an exported graph and write a serialized engine (a ``.plan``) for this GPU and TensorRT version.

    Args:
        resolution: R of the graph's `PIXELS (B, 3, R, R)` input.
        profile: batch sizes the engine is optimised for (use `BatchProfile.fixed` for a fixed-batch graph).
        fp16: allow FP16 kernels in the network (post-processing stays FP32); False builds FP32 only.
        plugins: the graph has ``rfkp`` plugin nodes: load and check the plugin library first.
        plugin_lib: the library; default $RFKP_TRT_PLUGIN_LIB.
        workspace_bytes: builder workspace limit (default: TensorRT's).

    Raises:
        EngineBuildError: TensorRT or the plugins are missing, or parsing or building failed.
    """
    if not tensorrt_available():
        raise EngineBuildError(f"the 'tensorrt' Python package is not installed\n{INSTALL_HINT}")
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    if plugins:
        _load_plugins(trt, trt_logger, plugin_library(plugin_lib))
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode of TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineBuildError(
                "this TensorRT has no FP16 builder flag (strongly typed networks only): build with --fp32"
            )
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        logger.info(
            "FP16 network, %d post-processing layers pinned to FP32", _pin_postprocess_fp32(trt, network)
        )
    shape = (3, resolution, resolution)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, (profile.min, *shape), (profile.opt, *shape), (profile.max, *shape))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path
