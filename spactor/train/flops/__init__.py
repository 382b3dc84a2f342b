"""FLOPs per step and per stage, and model FLOPs utilisation."""
