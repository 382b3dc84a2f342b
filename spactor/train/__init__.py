"""Training: the loop, the step, stages, callbacks, checkpoints, optimizers, FLOPs."""
