"""Weight-sharing architecture search: the space of call-time sub-architectures, their evaluation, the front.

- ``space``: ``SearchSpace`` (resolutions x patch sizes x windows x decoder layers x queries), ``ArchChoice``.
- ``search``: accuracy (OKS AP) and batch-1 latency of each choice on one trained weight-sharing model.
- ``pareto``: the accuracy/latency Pareto front and the CSV form; ``plot``: the front as a PNG.
"""
