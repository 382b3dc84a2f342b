"""What a model can do, and what an objective needs of it: the capability names.

An architecture class declares the passes it offers in ``CAPABILITIES``; an objective
class declares what it needs in ``NEEDS`` (alternatives, any one of which suffices). The
config check (``spactor.validation``) compares the two from the classes the factories
are annotated to return, before any work; ``spactor.architectures.base`` re-exports these
names with the model protocol. Core: it imports nothing of spactor's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# What a model can do, as the passes it offers. An architecture class declares the set it
# has in ``CAPABILITIES``; an objective declares what it needs in ``NEEDS`` (alternatives,
# any one of which suffices), and the config check refuses a pairing that cannot work.
ENCODE = "encode"  # a bidirectional encoder pass: ``encode(ids, attention_mask)``
DECODE = "decode"  # a decoder with cross-attention to encoder states: ``decode(...)``
CAUSAL_LM = "causal_lm"  # a decoder-only causal pass: ``causal(ids, attention_mask)``
PREFIX_LM = "prefix_lm"  # a decoder-only pass bidirectional over a prefix: ``causal(..., prefix_length=)``
CAPABILITY_NAMES: tuple[str, ...] = (ENCODE, DECODE, CAUSAL_LM, PREFIX_LM)


def capabilities_of(model_or_class: Any) -> frozenset[str]:
    """The capabilities a model (or its class) declares; a class without the declaration
    is taken by the passes it has (an out-of-tree model written before it existed)."""
    declared = getattr(model_or_class, "CAPABILITIES", None)
    if declared is not None:
        return frozenset(declared)
    found = {ENCODE} if hasattr(model_or_class, "encode") else set()
    if getattr(model_or_class, "has_decoder", False):
        found.add(DECODE)
    return frozenset(found)


def satisfies(capabilities: Iterable[str], needs: Iterable[Iterable[str]]) -> bool:
    """Whether ``capabilities`` meets one of the alternative capability sets ``needs``
    (an empty ``needs``: the objective needs no model pass)."""
    have = set(capabilities)
    alternatives = [set(alt) for alt in needs]
    return not alternatives or any(alt <= have for alt in alternatives)


_DESCRIBED = {
    ENCODE: "a bidirectional encoder",
    DECODE: "a decoder with cross-attention",
    CAUSAL_LM: "a causal decoder",
    PREFIX_LM: "a prefix-bidirectional decoder",
}


def describe_needs(needs: Iterable[Iterable[str]]) -> str:
    """``a bidirectional encoder (encode)``; alternatives joined with ``or``."""
    parts = []
    for alt in needs:
        names = [c for c in CAPABILITY_NAMES if c in set(alt)] + sorted(set(alt) - set(CAPABILITY_NAMES))
        words = " and ".join(_DESCRIBED.get(c, c) for c in names)
        parts.append(f"{words} ({', '.join(names)})")
    return " or ".join(parts)


def capability_problem(where: str, needs: Iterable[Iterable[str]], arch: str, capabilities: Iterable[str]) -> str | None:
    """The one-line refusal of an objective (at ``where``) whose ``needs`` the architecture
    ``arch`` with ``capabilities`` cannot meet, or None when it can."""
    needs = [frozenset(alt) for alt in needs]
    if satisfies(capabilities, needs):
        return None
    offered = [c for c in CAPABILITY_NAMES if c in set(capabilities)]
    offered += sorted(set(capabilities) - set(CAPABILITY_NAMES))
    return (f"{where}: needs {describe_needs(needs)}; model.arch '{arch}' offers "
            f"{', '.join(offered) or 'no model pass'}")
