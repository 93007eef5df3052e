"""rfkp_postprocess: raw network outputs + SOURCE_SIZE (+ THRESHOLD) -> padded detections.

Thin adapter over ``rfkp.serving.runtime.Postprocessor`` (the math of ``RFDETRKeypoint.postprocess``).
"""

import triton_python_backend_utils as pb_utils

from rfkp.serving import protocol as P
from rfkp.serving.payload import RequestError
from rfkp.serving.runtime import Postprocessor, parameters_of


class TritonPythonModel:
    def initialize(self, args):
        self.postprocess = Postprocessor.from_parameters(parameters_of(args["model_config"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in P.RAW_OUTPUTS}
            sizes = pb_utils.get_input_tensor_by_name(request, P.SOURCE_SIZE).as_numpy()
            threshold = pb_utils.get_input_tensor_by_name(request, P.INPUT_THRESHOLD)
            try:
                outputs = self.postprocess(raw, sizes, None if threshold is None else threshold.as_numpy())
            except RequestError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            except Exception as exc:  # one response per request, whatever happens
                error = pb_utils.TritonError(f"{P.POSTPROCESS}: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensors = [pb_utils.Tensor(name, outputs[name]) for name in P.DETECTION_OUTPUTS]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
