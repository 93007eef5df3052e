"""Export: the network with its post-processing as one graph (ONNX, portable or with the rfkp TensorRT plugin
nodes), or the network alone with its raw outputs (what the served ensemble's ``rfkp_model`` runs), TensorRT
engines and Triton ``tensorrt_plan`` model entries.

Submodules: ``graph`` (`ExportedDetector`), ``plugin_nodes`` (the plugin contract), ``onnx_export``
(`export_onnx`), ``engine`` (TensorRT builder, needs ``tensorrt``), ``triton_entry`` (config.pbtxt).
Importing this package loads neither onnx nor tensorrt.
"""

from rfkp.export.graph import DETECTIONS, INPUT_NAME, OUTPUT_NAMES, RAW, RAW_OUTPUT_NAMES, ExportedDetector
from rfkp.export.onnx_export import export_onnx, read_metadata

__all__ = [
    "DETECTIONS",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "RAW",
    "RAW_OUTPUT_NAMES",
    "ExportedDetector",
    "export_onnx",
    "read_metadata",
]
