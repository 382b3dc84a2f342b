"""Will the run fit? A peak-memory estimate made at start-up, before the first step.

The estimate (:func:`estimate`) adds, for one rank:

* **parameters**: every parameter (trainable or frozen) at its dtype, divided over the
  ranks under FSDP;
* **gradients**: the trainable parameters once more;
* **optimizer state**: Adafactor keeps factored second moments, ``rows + cols`` floats
  per matrix and one float per element of a vector; AdamW (and any optimizer not known
  here) two fp32 moments per element;
* **activations** of one micro-batch (``b = trainer.batch_size / ranks /
  trainer.grad_accum_steps`` sequences) kept for the backward pass, per transformer
  block and token (``e`` bytes an element: 4 in fp32, 2 under bf16 autocast):

  - every ``nn.Linear`` keeps its input (for the weight gradient) and its output (for
    the activation, softmax or residual that follows): ``in + out`` elements;
  - every norm keeps its input and its fp32 output: ``2 d_model`` elements;
  - an eager attention keeps its scores and probabilities, ``2 · heads · L_k`` elements
    per query token; SDPA (the default) runs a fused kernel on CUDA and on CPU, which
    keeps O(L) only (measured: counting the probabilities on CPU overshoots by ~50 %);
  - a decoder block's cross-attention projects keys and values from the encoder's
    tokens (``L_enc``), the rest of the block runs over the decoder's (``L_dec``): which
    blocks run over which tokens, and which of their submodules read the encoder's, the
    architecture's spec says (``ArchitectureSpec.block_roles``);
  - blocks with activation checkpointing keep only their input (``d_model``);

  plus the additive attention masks, ``b · heads · L_q · L_k`` fp32 elements per stack
  and kind of attention (shared by the layers); on CPU the backward of one attention at
  a time, about three score-sized temporaries; plus the output layer: logits, their
  log-softmax and its gradient, ``3 · b · L · V`` fp32 elements, ``L`` the length the
  loss is taken over (decoder targets for T5, the encoder input for an MLM generator). The lengths come from running the objectives'
  transforms on one dummy row, so every objective's own lengths are used.

On CPU the estimate is compared with the memory the system has available
(``MemAvailable`` in ``/proc/meminfo``, shared by the ranks on this host) on top of what
the process holds already; a run that cannot fit is refused with one line (exit 2). On
CUDA the device's free memory (``torch.cuda.mem_get_info``) is the bound and a run that
may not fit gets a warning: allocator caching and fragmentation make GPU peaks less
predictable, and a refusal there would cost more than an OOM at step 1.
``runtime.memory_check=false`` skips the check.

Measured against the growth of peak RSS during training on CPU (the README's "Memory"
section): tiny at 512 tokens, batch 64: 1.63 GB estimated, 1.53 GB measured; small at
512, batch 8 and 24: 1.95 / 5.52 GB estimated, 1.67 / 4.70 GB measured. A test checks
the forward part against the bytes autograd saves.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spactor.architectures.base import BlockRole, spec_for
from spactor.config import ConfigError, Resolved

GB = 1 << 30


@dataclass
class MemoryEstimate:
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    micro_batch: int
    lengths: tuple[int, int]  # (encoder, decoder) tokens per sequence; decoder 0 if none

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (f"about {self.total / GB:.1f} GB (parameters {self.parameters / GB:.2f}, gradients "
                f"{self.gradients / GB:.2f}, optimizer {self.optimizer / GB:.2f}, activations "
                f"{self.activations / GB:.2f} GB for a micro-batch of {self.micro_batch})")


def _optimizer_bytes(kind: str, params: list[nn.Parameter]) -> int:
    total = 0
    for p in params:
        if kind == "adafactor" and p.dim() >= 2:
            total += (p.shape[-2] + p.shape[-1] + (p.numel() // (p.shape[-2] * p.shape[-1]) - 1)) * 4
        elif kind == "adafactor":
            total += p.numel() * 4
        else:  # AdamW's two moments; unknown optimizers are assumed to keep as much
            total += 2 * p.numel() * 4
    return total


def _lengths(objectives: dict[str, Any], raw_length: int, vocab_size: int) -> tuple[int, int]:
    from spactor.train.step import apply_transforms

    gen = torch.Generator().manual_seed(0)
    # Ids well inside the vocabulary and away from the special ones, as real text is.
    row = torch.randint(3, max(4, vocab_size - 200), (1, raw_length), generator=gen)
    batch = apply_transforms(objectives, {"original": row}, gen)
    encoder = int(batch["encoder_input"].shape[-1])
    decoder = next((int(batch[k].shape[-1]) for k in ("decoder_input", "decoder_target") if k in batch), 0)
    return encoder, decoder


def _block_elements(role: BlockRole, enc: int, dec: int, fused_attention: bool) -> int:
    """Activation elements one block keeps per sequence (see the module docstring)."""
    length = dec if role.target else enc
    total = 0
    for name, module in role.block.named_modules():
        reads_source = name in role.reads_source
        if isinstance(module, nn.Linear):
            tokens = enc if reads_source else length
            total += tokens * (module.in_features + module.out_features)
        elif hasattr(module, "num_heads") and hasattr(module, "d_kv"):  # an attention
            keys = enc if reads_source else length
            eager = getattr(module, "backend", "sdpa") == "eager"
            if eager or not fused_attention:
                total += 2 * module.num_heads * length * keys
        elif type(module).__name__.endswith("Norm") and hasattr(module, "weight"):
            total += 2 * length * module.weight.numel()
    return total


def estimate(resolved: Resolved, modules: nn.Module, objectives: dict[str, Any], raw_length: int,
             vocab_size: int, device: torch.device, world_size: int, fsdp: bool) -> MemoryEstimate:
    cfg = resolved.cfg
    params = list(modules.parameters())
    trainable = [p for p in params if p.requires_grad]
    shard = world_size if fsdp else 1
    param_bytes = sum(p.numel() * p.element_size() for p in params) // shard
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable) // shard
    optim_bytes = _optimizer_bytes(resolved.optimizer.type, trainable) // shard

    micro = max(1, cfg.trainer.batch_size // max(1, world_size) // max(1, cfg.trainer.grad_accum_steps))
    enc, dec = _lengths(objectives, raw_length, vocab_size)
    bf16 = cfg.runtime.precision == "bf16" or (cfg.runtime.precision == "auto" and device.type == "cuda")
    elem = 2 if bf16 else 4
    fused = True  # SDPA's flash/memory-efficient kernels, CPU included (torch >= 2.3); eager is counted
    checkpointed = cfg.runtime.activation_checkpointing == "full"
    # The objectives' blocks (an RTD generator's) run over the encoder input.
    roles = spec_for(resolved.model.type).roles(modules.model) + [
        BlockRole(b) for o in objectives.values() for b in o.repeated_blocks()]
    blocks = [role.block for role in roles]
    per_sequence = 0
    for role in roles:
        if checkpointed:
            norms = [m for m in role.block.modules() if type(m).__name__.endswith("Norm")]
            d_model = norms[0].weight.numel() if norms else 0
            per_sequence += (dec if role.target else enc) * d_model
        else:
            per_sequence += _block_elements(role, enc, dec, fused)
    activations = micro * per_sequence * elem
    spec = spec_for(resolved.model.type)
    if not spec.score_sized_masks:  # a RoPE model: only the objectives' blocks (a generator's bias)
        blocks = [b for o in objectives.values() for b in o.repeated_blocks()]
    heads = max((m.num_heads for b in blocks for m in b.modules() if hasattr(m, "num_heads")), default=0)
    # The additive masks (position bias with padding folded in), one per stack and kind
    # of attention, shared by its layers; on CPU the backward of one attention also
    # holds about three score-sized temporaries at a time.
    score_elems = enc * enc + (dec * dec + dec * enc if dec and spec.score_sized_masks else 0)
    activations += micro * heads * score_elems * 4
    if device.type != "cuda":
        activations += 3 * micro * heads * enc * enc * 4
    loss_length = dec or enc
    activations += 3 * micro * loss_length * vocab_size * 4  # logits, log-softmax, their gradient (fp32)
    return MemoryEstimate(param_bytes, grad_bytes, optim_bytes, activations, micro, (enc, dec))


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def check_memory(resolved: Resolved, modules: nn.Module, objectives: dict[str, Any], raw_length: int,
                 vocab_size: int, device: torch.device, world_size: int, fsdp: bool) -> MemoryEstimate | None:
    """Refuse (CPU) or warn (CUDA) when the run's estimated peak does not fit; call it
    once the model and objectives are built on the CPU, before they move or train."""
    if not getattr(resolved.cfg.runtime, "memory_check", True):
        return None
    est = estimate(resolved, modules, objectives, raw_length, vocab_size, device, world_size, fsdp)
    advice = (f"raise trainer.grad_accum_steps (now {resolved.cfg.trainer.grad_accum_steps}) or lower "
              f"trainer.batch_size (now {resolved.cfg.trainer.batch_size}), or runtime.memory_check=false "
              "to try anyway")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if est.total > free:
            warnings.warn(f"this run may not fit on {device}: it needs {est.describe()}, "
                          f"{free / GB:.1f} GB is free; {advice}", stacklevel=2)
        return est
    available = _meminfo_available()
    if available is None:
        return est
    # The parameters exist already (they are in this process's memory); the rest is to come.
    needed = est.total - est.parameters
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if needed * ranks_here > available:
        per = f" per process, {ranks_here} processes on this host" if ranks_here > 1 else ""
        raise ConfigError(
            f"trainer.batch_size: this run needs {est.describe()}{per}, but "
            f"{available / GB:.1f} GB of memory is available; {advice}"
        )
    return est
