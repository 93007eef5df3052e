"""rfkp_preprocess: IMAGE_BYTES (N, 1) encoded or IMAGE_RAW (N, H, W, 3) uint8 (+ THRESHOLD, checked only)
-> PIXELS, SOURCE_SIZE.

Thin adapter: the work is ``rfkp.serving.runtime.Preprocessor``. A bad request gets its own
INVALID_ARG error naming the input and the problem; the other requests of the batch go on.
"""

import triton_python_backend_utils as pb_utils

from rfkp.serving import protocol as P
from rfkp.serving.payload import RequestError
from rfkp.serving.runtime import Preprocessor, parameters_of


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.preprocess = Preprocessor.from_parameters(parameters_of(args["model_config"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                pixels, sizes = self.preprocess(
                    _optional(request, P.INPUT_BYTES),
                    _optional(request, P.INPUT_RAW),
                    _optional(request, P.INPUT_THRESHOLD),  # checked here too: a bad one fails before decoding
                )
            except RequestError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except Exception as exc:  # one response per request, whatever happens
                error = pb_utils.TritonError(f"{P.PREPROCESS}: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            outputs = [pb_utils.Tensor(P.PIXELS, pixels), pb_utils.Tensor(P.SOURCE_SIZE, sizes)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
