"""Drive an rfkp IPluginV3 through the stub build's C shim (ctypes), as TensorRT's builder and runtime would.

Tensors are given as (DataType code, shape) or (DataType code, shape, TensorFormat code) tuples; in shape
queries an extent -k stands for the symbol "s<k>" (a dynamic dimension) and comes back as that text.
"""

from __future__ import annotations

import ctypes
import json
import struct
from collections.abc import Sequence

from rfkp.tensorrt_plugins import (
    BUILD_PHASE,
    FIELD_CHAR,
    FIELD_FLOAT32,
    TensorRTPluginError,
    shim_tensors,
)

Spec = tuple  # (type, shape) or (type, shape, format)


def float32_field(name: str, *values: float) -> tuple[str, int, bytes, int]:
    """A kFLOAT32 plugin field holding `values`."""
    return name, FIELD_FLOAT32, struct.pack(f"{len(values)}f", *values), len(values)


def char_field(name: str, text: str) -> tuple[str, int, bytes, int]:
    """A kCHAR plugin field (as the ONNX parser passes string attributes)."""
    data = text.encode() + b"\0"
    return name, FIELD_CHAR, data, len(data)


class Plugin:
    """One IPluginV3 object created by a creator of the stub registry; deleted on close()."""

    def __init__(self, shim: ctypes.CDLL, handle: int | None, what: str) -> None:
        if not handle:
            raise TensorRTPluginError(f"{what}: {shim.rfkp_shim_last_error().decode(errors='replace')}")
        self.shim, self.handle = shim, handle

    @classmethod
    def create(cls, shim: ctypes.CDLL, name: str, fields: Sequence[tuple[str, int, bytes, int]] = (),
               phase: int = BUILD_PHASE, version: str = "1", namespace: str = "rfkp") -> Plugin:
        """createPlugin through the registry's creator for (name, version, namespace)."""
        n = len(fields)
        buffers = [ctypes.create_string_buffer(f[2], len(f[2])) for f in fields]
        names = (ctypes.c_char_p * n)(*(f[0].encode() for f in fields))
        types = (ctypes.c_int32 * n)(*(f[1] for f in fields))
        data = (ctypes.c_void_p * n)(*(ctypes.cast(b, ctypes.c_void_p) for b in buffers))
        lengths = (ctypes.c_int32 * n)(*(f[3] for f in fields))
        handle = shim.rfkp_shim_create(name.encode(), version.encode(), namespace.encode(), n, names, types, data,
                                       lengths, phase)
        return cls(shim, handle, f"createPlugin {name}")

    def close(self) -> None:
        if self.handle:
            self.shim.rfkp_shim_destroy(self.handle)
            self.handle = None

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last_error(self) -> str:
        return self.shim.rfkp_shim_last_error().decode(errors="replace")

    def _json(self, fn_name: str, *args: object) -> list | dict:
        text = getattr(self.shim, fn_name)(self.handle, *args)
        if text is None:
            raise TensorRTPluginError(f"{fn_name}: {self.last_error()}")
        return json.loads(text)

    def describe(self) -> dict:
        """name, version, namespace, interface kind and whether build / runtime capabilities exist."""
        return self._json("rfkp_shim_describe_json")

    def nb_outputs(self) -> int:
        return self.shim.rfkp_shim_nb_outputs(self.handle)

    def output_types(self, input_types: Sequence[int]) -> list[int]:
        n_out = self.nb_outputs()
        out = (ctypes.c_int32 * n_out)(*([-1] * n_out))
        status = self.shim.rfkp_shim_output_types(self.handle, (ctypes.c_int32 * len(input_types))(*input_types),
                                                  len(input_types), out, n_out)
        if status != 0:
            raise TensorRTPluginError(f"getOutputDataTypes: {self.last_error()}")
        return list(out)

    def supports(self, pos: int, io: Sequence[Spec], n_in: int) -> bool:
        """supportsFormatCombination(pos) for inputs io[:n_in] and outputs io[n_in:]."""
        return self.shim.rfkp_shim_supports(self.handle, pos, shim_tensors(io), n_in, len(io) - n_in) == 1

    def output_shapes(self, inputs: Sequence[Spec]) -> list[list[str]]:
        return self._json("rfkp_shim_output_shapes_json", shim_tensors(inputs), len(inputs), self.nb_outputs())

    def configure(self, io: Sequence[Spec], n_in: int) -> None:
        if self.shim.rfkp_shim_configure(self.handle, shim_tensors(io), n_in, len(io) - n_in) != 0:
            raise TensorRTPluginError(f"configurePlugin: {self.last_error()}")

    def workspace_size(self, io: Sequence[Spec], n_in: int) -> int:
        return self.shim.rfkp_shim_workspace_size(self.handle, shim_tensors(io), n_in, len(io) - n_in)

    def clone(self) -> Plugin:
        return Plugin(self.shim, self.shim.rfkp_shim_clone(self.handle), "clone")

    def attach_to_context(self) -> Plugin:
        return Plugin(self.shim, self.shim.rfkp_shim_attach_to_context(self.handle), "attachToContext")

    def serialized_fields(self) -> list[dict]:
        """getFieldsToSerialize: name, type, length (and values for kFLOAT32) of each field."""
        return self._json("rfkp_shim_serialized_fields_json")

    def deserialize(self) -> Plugin:
        """The engine-load path: getFieldsToSerialize, then the registry's creator with TensorRTPhase::kRUNTIME."""
        return Plugin(self.shim, self.shim.rfkp_shim_deserialize(self.handle), "deserialize")

    def enqueue(self, io: Sequence[Spec], n_in: int, pointers: Sequence[int], workspace: int = 0,
                stream: int = 0) -> int:
        """onShapeChange then enqueue on device pointers (inputs then outputs); returns the plugin's status."""
        ptrs = [ctypes.c_void_p(p) for p in pointers]
        inputs = (ctypes.c_void_p * n_in)(*ptrs[:n_in])
        outputs = (ctypes.c_void_p * (len(io) - n_in))(*ptrs[n_in:])
        return self.shim.rfkp_shim_enqueue(self.handle, shim_tensors(io), n_in, len(io) - n_in, inputs, outputs,
                                           ctypes.c_void_p(workspace or None), ctypes.c_void_p(stream or None))
