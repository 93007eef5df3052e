"""Serving on NVIDIA Triton Inference Server: repository rendering, launcher, server-side runtime.

Submodules (imported on demand; nothing here starts or loads anything):

- ``protocol``: tensor names and shapes of the ``rfkp`` ensemble;
- ``repository``: render ``model_repository/`` templates for one set of weights;
- ``embedded`` / ``launcher``: find and run a real ``tritonserver`` (the one in ``nvidia-pytriton`` by
  default, or one on ``PATH``);
- ``deploy``: weights -> network runtime (ONNX Runtime on a cached raw ONNX export, or torch) -> rendered
  repository -> ready server, as ``rfkp serve`` does it;
- ``payload`` / ``runtime`` / ``packing``: what the python-backend models run;
- ``rfkp.client``: the gRPC clients.
"""
