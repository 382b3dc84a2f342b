"""Recipes (YAML) shipped as package data under ``spactor.configs``."""
