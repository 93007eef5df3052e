"""Export: the network with its post-processing as one graph (ONNX, portable or with the rfkp TensorRT plugin
nodes), TensorRT engines and a Triton ``tensorrt_plan`` model entry.

Submodules: ``graph`` (`ExportedDetector`), ``plugin_nodes`` (the plugin contract), ``onnx_export``
(`export_onnx`), ``engine`` (TensorRT builder, needs ``tensorrt``), ``triton_entry`` (config.pbtxt).
Importing this package loads neither onnx nor tensorrt.
"""

from rfkp.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportedDetector
from rfkp.export.onnx_export import export_onnx, read_metadata

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ExportedDetector", "export_onnx", "read_metadata"]
