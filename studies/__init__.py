"""Studies (YAML) shipped as package data under ``spactor.studies`` (``spactor study NAME``)."""
