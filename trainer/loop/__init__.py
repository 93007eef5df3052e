"""The training loop: optimiser groups, EMA, checkpoints, the step-deterministic data pipeline, the trainer."""
