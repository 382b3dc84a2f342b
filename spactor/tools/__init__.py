"""Tools around runs: preview, plots, Hugging Face export."""
