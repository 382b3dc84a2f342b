"""The ``t5`` architecture: a :class:`T5Model` built from its config, starting from Hugging
Face weights when ``model.init_from`` names them.

The builder has a module of its own because the weight converter (``hf_convert``) imports
the model module; with the builder there the two would import each other.
"""

from __future__ import annotations

from spactor.architectures.hf_convert import load_hf_weights
from spactor.architectures.t5 import T5Config, T5Model
from spactor.registry import ARCHITECTURES


@ARCHITECTURES.register("t5", T5Config)
def build_t5(cfg: T5Config, vocab_size: int) -> T5Model:
    """T5 v1.0/v1.1 encoder-decoder (SpacTor's discriminator, plain T5 span corruption)."""
    model = T5Model(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
    if cfg.init_from is not None:
        load_hf_weights(model, cfg.init_from)
    return model
