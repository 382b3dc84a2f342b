"""Building the model and the objectives from a resolved config.

The training loop, the FLOPs counter and ``spactor preview`` all build the same modules
the same way, so the builders live here rather than in the loop (``trainer`` imports the
FLOPs counter, which must not import ``trainer`` back).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from spactor.architectures.base import capabilities_of, capability_problem, protocol_problem, spec_for
from spactor.config import ConfigError, Resolved
from spactor.objectives.base import Objective, ObjectiveContext, Vocab, has_loss
from spactor.registry import ARCHITECTURES, OBJECTIVES
from spactor.train.meta_init import InitProgram, NotReplayable, record_init


def build_model(resolved: Resolved, vocab: Vocab) -> nn.Module:
    """The architecture's factory, then the protocol check of what it built: the members
    every model has and the methods its ``CAPABILITIES`` promise (one line, exit 2)."""
    entry = ARCHITECTURES.get(resolved.model.type)
    model = entry.factory(resolved.model.config, vocab.size)
    problem = protocol_problem(model, resolved.model.type)
    if problem is not None:
        raise ConfigError(problem)
    return model


def build_on_meta(resolved: Resolved, vocab: Vocab) -> tuple[nn.Module, dict[str, Objective], InitProgram | None]:
    """The model and the objectives' modules on the meta device, with the program that
    initialises them once sharded (``spactor.train.meta_init``), or built eagerly on
    CPU (program None) when the build loads weights (``model.init_from``, a generator
    checkpoint), the architecture's spec says it cannot (``meta_init=False``) or it
    initialises in a way the program cannot replay."""
    if _loads_weights(resolved) or not spec_for(resolved.model.type).meta_init:
        model = build_model(resolved, vocab)
        return model, build_objectives(resolved, vocab, model), None
    rng = torch.get_rng_state()
    try:
        with record_init() as program:
            model = build_model(resolved, vocab)
            objectives = build_objectives(resolved, vocab, model)
        return model, objectives, program
    except NotReplayable as e:
        warnings.warn(f"building on the meta device is not possible ({e}); building on CPU")
        torch.set_rng_state(rng)
        model = build_model(resolved, vocab)
        return model, build_objectives(resolved, vocab, model), None


def _loads_weights(resolved: Resolved) -> bool:
    if getattr(resolved.model.config, "init_from", None):
        return True
    return any(getattr(p.config, "generator_checkpoint", None) for p in resolved.objectives.values())


def build_objectives(resolved: Resolved, vocab: Vocab, model: nn.Module) -> dict[str, Objective]:
    objectives: dict[str, Objective] = {}
    for name, plugin in resolved.objectives.items():
        ctx = ObjectiveContext(name=name, vocab=vocab, input_length=resolved.cfg.data.input_length, model=model)
        objectives[name] = OBJECTIVES.get(plugin.type).factory(plugin.config, ctx)
        # The config check saw the classes the factories are annotated to return; this
        # sees the built ones (a factory without the annotation).
        needs = getattr(type(objectives[name]), "NEEDS", ())
        problem = capability_problem(f"objectives.{name}", needs, resolved.model.type, capabilities_of(model))
        if problem is not None:
            raise ConfigError(problem)
    if not any(has_loss(type(o)) for o in objectives.values()):
        raise ValueError("no objective with a loss is configured (e.g. objectives.span_corruption)")
    return objectives


def raw_length_for(objectives: dict[str, Objective], input_length: int) -> int:
    """Fold the objectives' length needs, last transform first: each maps the length it
    must output to the length it needs as input (span corruption: 512 → 568)."""
    length = input_length
    for obj in reversed(list(objectives.values())):
        length = obj.raw_length(length)
    return length


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
