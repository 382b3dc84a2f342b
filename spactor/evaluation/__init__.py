"""Downstream evaluation of checkpoints, and studies that compare arms."""
