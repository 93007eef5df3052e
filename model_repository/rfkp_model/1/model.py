"""rfkp_model: PIXELS (N, 3, R, R) -> pred_logits, pred_boxes, pred_keypoints (python backend).

All requests of a dynamic batch are stacked into one forward pass and split back in order. The
runtime (PyTorch eager on CPU or CUDA for a checkpoint, ONNX Runtime on CPU for a raw-output ``.onnx``
export) is chosen by ``rfkp.serving.runtime.make_network`` from the ``weights`` parameter.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from rfkp.serving import protocol as P
from rfkp.serving.runtime import make_network, parameters_of


class TritonPythonModel:
    def initialize(self, args):
        self.network = make_network(parameters_of(args["model_config"]))

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, P.PIXELS).as_numpy() for r in requests]
        try:
            raw = self.network(np.concatenate(batches, axis=0))
        except Exception as exc:  # every request of the batch gets the error, the server stays up
            error = pb_utils.TritonError(f"{P.NETWORK}: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in batches:
            stop = start + batch.shape[0]
            outputs = [pb_utils.Tensor(name, raw[name][start:stop]) for name in P.RAW_OUTPUTS]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start = stop
        return responses
