"""ul2: every denoiser's span statistics against UL2's definition, the mixture's
proportions, exact reconstruction, mode tokens, static shapes, composition with MLM
masking, config errors, and the registry / CLI listing."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from spactor.objectives.base import MODE_TOKENS, ObjectiveContext, Vocab
from spactor.config import load_recipe
from spactor.objectives.mlm_mask import choose_positions
from spactor.objectives.prefix_lm import min_prefix_length
from spactor.objectives.span_corruption import reconstruct, span_counts
from spactor.objectives.ul2 import MODES, UL2, DenoiserConfig, UL2Config, ul2_denoisers
from spactor.plugins import load_plugins
from spactor.registry import OBJECTIVES

VOCAB = Vocab(size=32128)
LENGTH = 128  # encoder length: short enough for many samples, long enough for μ 64


def build(cfg: UL2Config | None = None, length: int = LENGTH, vocab: Vocab = VOCAB) -> UL2:
    return UL2(cfg or UL2Config(), ObjectiveContext(name="ul2", vocab=vocab, input_length=length, model=None))


def originals(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (batch, length), generator=g)
    ids[:, 97::97] = VOCAB.eos_id  # document boundaries inside a chunk stay
    return ids


def corrupt(ul2: UL2, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    return ul2.transform({"original": originals(batch, ul2.raw_length(ul2.input_length), seed)}, g)


def only(index: int) -> UL2Config:
    """UL2's denoisers with all the weight on one of them."""
    denoisers = ul2_denoisers()
    for i, d in enumerate(denoisers):
        d.rate = 1.0 if i == index else 0.0
    return UL2Config(denoisers=denoisers)


def spans_of(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    runs, current = [], 0
    for m in mask.tolist():
        if m:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


SPAN_DENOISERS = [i for i, d in enumerate(ul2_denoisers()) if d.mode != "S"]


@pytest.mark.parametrize("index", SPAN_DENOISERS)
def test_span_denoiser_statistics_match_ul2_definition(index):
    """Noise fraction, number of spans and mean span length per example, and the span
    length distribution over many examples, against (μ, r) of UL2's denoiser."""
    ul2 = build(only(index))
    plan, d = ul2.plans[index], ul2.cfg.denoisers[index]
    counts = span_counts(plan.raw_length, d.noise_density, d.mean_noise_span_length)
    out = corrupt(ul2, 400, seed=index)
    mask = out["noise_mask"]
    assert (out["denoiser"] == index).all()
    assert not mask[:, plan.raw_length:].any()  # past its own raw length nothing is used
    # Every example: exactly T5's counts, which are UL2's (μ, r) up to rounding.
    assert (mask.sum(1) == counts.num_noise).all()
    assert abs(counts.num_noise / plan.raw_length - d.noise_density) <= 0.5 / plan.raw_length + 1e-9
    lengths = []
    for row in mask:
        runs = spans_of(row[: plan.raw_length])
        assert len(runs) == counts.num_spans and min(runs) >= 1
        lengths += runs
    assert counts.num_spans == max(1, round(counts.num_noise / d.mean_noise_span_length))
    mean = sum(lengths) / len(lengths)
    assert mean == pytest.approx(counts.num_noise / counts.num_spans)
    # A uniform composition of n noise tokens into s parts: each part's length has mean
    # n/s and variance (n/s)(1 - 1/s)(n - s)/(n + 1); check the first span's sample mean.
    first = torch.tensor([spans_of(row[: plan.raw_length])[0] for row in mask], dtype=torch.float64)
    n, s = counts.num_noise, counts.num_spans
    var = (n / s) * (1 - 1 / s) * (n - s) / (n + 1)
    assert abs(first.mean().item() - n / s) <= 5 * math.sqrt(var / len(first)) + 1e-9
    # The mean span length is UL2's μ up to the rounding of the span count (and the
    # sentinel budget, which does not bind at this length).
    if d.mean_noise_span_length < n:
        assert abs(mean - d.mean_noise_span_length) / d.mean_noise_span_length < 0.5 / s + 0.05


@pytest.mark.parametrize("density", [0.25, 0.5])  # UL2 §3.1.2's S; its appendix code's
def test_s_denoiser_is_one_uniform_split(density):
    index = next(i for i, d in enumerate(ul2_denoisers()) if d.mode == "S")
    cfg = only(index)
    cfg.denoisers[index].noise_density = density
    ul2 = build(cfg)
    n = ul2.plans[index].raw_length
    assert n == LENGTH - 1  # T5's prefix_lm chunk at the input length; [S] takes EOS's room
    out = corrupt(ul2, 4000, seed=5)
    suffix = out["noise_mask"][:, :n]
    # One split: the suffix is a single run that ends at the chunk's end.
    assert (suffix[:, -1]).all() and (suffix.long().diff(dim=1) >= 0).all()
    prefix = n - suffix.sum(1)
    low = min_prefix_length(n, density)  # 1 at 0.5; about n / 2 at 0.25 (suffix ~ L/4)
    assert prefix.min() == low and prefix.max() == n - 1
    # Uniform over [low, n - 1]: mean and a chi-square over 8 near-equal bins.
    k = n - low  # the allowed prefix lengths, equally likely
    assert abs(prefix.double().mean().item() - (low + n - 1) / 2) < 5 * math.sqrt((k * k - 1) / 12 / len(prefix))
    if density == 0.25:  # UL2's (μ = L/4, r = 0.25): the decoder predicts about a quarter
        assert (n - prefix).double().mean().item() / n == pytest.approx(0.25, abs=0.02)
    values = torch.arange(low, n)
    bin_of = lambda x: (x - low) * 8 // k  # noqa: E731 — 8 near-equal bins
    observed = torch.bincount(bin_of(prefix), minlength=8).double()
    expected = torch.bincount(bin_of(values), minlength=8).double() / k * len(prefix)
    chi2 = (((observed - expected) ** 2) / expected).sum().item()
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001


# UL2's final mixture, arXiv 2205.05131 v3 §3.1.2: R (μ 3, r 0.15), (μ 8, r 0.15);
# S (μ = L/4, r = 0.25, one span); X (μ 3, r 0.5), (μ 8, r 0.5), (μ 64, r 0.15),
# (μ 64, r 0.5). Equal rates: the appendix's ul2_objective (§9.2) samples its tasks
# uniformly when no rates are given. (FAT5's variant has X μ 8 at 0.15 — with the [X]
# token the same corruption as R's second — and is a commented block in configs/ul2.yaml.)
UL2_PAPER_MIXTURE = [
    ("R", 3.0, 0.15), ("R", 8.0, 0.15), ("S", None, 0.25),
    ("X", 3.0, 0.5), ("X", 8.0, 0.5), ("X", 64.0, 0.15), ("X", 64.0, 0.5),
]


def mixture(denoisers) -> list[tuple]:
    def get(d, key, default=None):
        return d.get(key, default) if isinstance(d, dict) else getattr(d, key)

    return [
        (get(d, "mode"), None if get(d, "mode") == "S" else float(get(d, "mean_noise_span_length")),
         float(get(d, "noise_density")), float(get(d, "rate", 1.0)))
        for d in denoisers
    ]


@pytest.mark.parametrize("source", ["default", "ul2", "spactor_ul2_sc"])
def test_mixture_is_the_papers(source):
    """The default denoisers, the `ul2` recipe and `spactor_ul2_sc`'s UL2 stage are UL2's
    seven denoisers as the paper states them, in equal proportions."""
    if source == "default":
        got = mixture(ul2_denoisers())
    else:
        got = mixture(load_recipe(source).objectives.ul2.denoisers)
    assert [g[:3] for g in got] == UL2_PAPER_MIXTURE
    assert len({g[3] for g in got}) == 1  # equal rates
    spans = [(mu, r) for mode, mu, r, _ in got if mode != "S"]
    assert len(set(spans)) == len(spans)  # no denoiser repeats another's corruption


def test_denoisers_drawn_with_configured_rates():
    denoisers = ul2_denoisers()
    rates = [1.0, 2.0, 0.0, 3.0, 1.0, 1.0, 2.0]
    for d, r in zip(denoisers, rates):
        d.rate = r
    ul2 = build(UL2Config(denoisers=denoisers))
    chosen = corrupt(ul2, 20000, seed=2)["denoiser"]
    freq = torch.bincount(chosen, minlength=len(rates)).double() / len(chosen)
    p = torch.tensor(rates, dtype=torch.float64) / sum(rates)
    tol = 5 * torch.sqrt(p * (1 - p) / len(chosen)) + 1e-12
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    assert freq[2] == 0


@pytest.mark.parametrize("length", [64, LENGTH, 512])
def test_every_denoiser_reconstructs_the_original_exactly(length):
    ul2 = build(length=length)
    out = corrupt(ul2, 70, seed=length)
    assert set(out["denoiser"].tolist()) == set(range(len(ul2.plans)))
    for i in range(70):
        plan = ul2.plans[int(out["denoiser"][i])]
        chunk = out["original"][i, : plan.raw_length]
        enc, tgt = out["encoder_input"][i, 1:], out["decoder_target"][i]
        if plan.mode == "S":
            p = int((enc != VOCAB.pad_id).sum()) - 1
            assert enc[p] == VOCAB.eos_id
            s = int((tgt != VOCAB.pad_id).sum()) - 1
            assert tgt[s] == VOCAB.eos_id
            assert torch.equal(torch.cat([enc[:p], tgt[:s]]), chunk)
        else:
            assert torch.equal(reconstruct(enc, tgt, VOCAB), chunk)


def test_mode_token_first_and_nowhere_else():
    ul2 = build()
    out = corrupt(ul2, 64, seed=3)
    enc = out["encoder_input"]
    expected = torch.tensor([VOCAB.mode_id(MODES.index(ul2.plans[k].mode)) for k in out["denoiser"].tolist()])
    assert torch.equal(enc[:, 0], expected)
    modes = torch.tensor([VOCAB.mode_id(k) for k in range(len(MODE_TOKENS))])
    assert not torch.isin(enc[:, 1:], modes).any() and not torch.isin(out["decoder_target"], modes).any()
    assert VOCAB.is_mode_token(modes).all() and not VOCAB.is_mode_token(torch.arange(VOCAB.mask_id + 1)).any()
    assert torch.equal(out["decoder_input"][:, 1:], out["decoder_target"][:, :-1])
    assert (out["decoder_input"][:, 0] == VOCAB.pad_id).all()


def test_without_mode_tokens_the_encoder_starts_with_text():
    ul2 = build(UL2Config(mode_tokens=False))
    out = corrupt(ul2, 16)
    assert not VOCAB.is_mode_token(out["encoder_input"]).any()
    assert out["encoder_input"].shape == (16, LENGTH)


def test_shapes_depend_only_on_the_config():
    shapes = set()
    for seed in range(4):
        for index in range(len(ul2_denoisers())):  # whichever denoisers the batch draws
            out = corrupt(build(only(index)), 8, seed=seed)
            shapes.add(tuple((k, tuple(v.shape)) for k, v in sorted(out.items()) if k != "original"))
    assert len(shapes) == 1, shapes
    ul2 = build()
    assert dict(next(iter(shapes)))["decoder_target"] == (8, ul2.target_length)
    assert ul2.target_length == max(p.target_length for p in ul2.plans)
    assert build(UL2Config(target_length=ul2.target_length + 5)).target_length == ul2.target_length + 5


def test_raw_length_is_the_longest_any_denoiser_needs():
    ul2 = build(length=512)
    assert ul2.raw_length(512) == max(p.raw_length for p in ul2.plans)
    by_label = dict(zip(ul2.labels, ul2.plans))
    assert by_label["R(μ=3,r=0.15)"].raw_length == 567  # T5's 568 for 512, one row for [R]
    assert by_label["S(r=0.25)"].raw_length == 511  # T5's prefix_lm chunk for 512
    # μ 3 at 50% would need 128 sentinels at 511 tokens: its chunk stops at the 100 there are.
    x3 = by_label["X(μ=3,r=0.5)"]
    assert span_counts(x3.raw_length, 0.5, 3.0).num_spans <= VOCAB.num_sentinels
    assert span_counts(x3.raw_length + 1, 0.5, 3.0).num_spans > VOCAB.num_sentinels


def test_same_seed_same_corruption():
    a, b = corrupt(build(), 16, seed=7), corrupt(build(), 16, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_masking_never_picks_mode_tokens_or_sentinels():
    out = corrupt(build(), 32, seed=4)
    chosen = choose_positions(out["encoder_input"], 1.0, VOCAB, torch.Generator().manual_seed(0))
    assert not chosen[:, 0].any()
    picked = out["encoder_input"][chosen]
    assert not (VOCAB.is_special(picked) | VOCAB.is_mode_token(picked)).any()
    real = ~(VOCAB.is_special(out["encoder_input"]) | VOCAB.is_mode_token(out["encoder_input"]))
    assert torch.equal(chosen, real)  # ratio 1: every real token and nothing else


def test_config_errors_are_one_line():
    full = Vocab(size=32101)  # no padding row after [M]
    with pytest.raises(ValueError, match=r"^objectives\.ul2\.mode_tokens: .*set mode_tokens: false$"):
        build(vocab=full)
    build(UL2Config(mode_tokens=False), vocab=full)
    with pytest.raises(ValueError, match=r"objectives\.ul2\.denoisers\[0\]\.mode: 'Q'"):
        build(UL2Config(denoisers=[DenoiserConfig(mode="Q")]))
    with pytest.raises(ValueError, match=r"denoisers\[0\]\.noise_density must be in \(0, 0.5\]"):
        build(UL2Config(denoisers=[DenoiserConfig(mode="S", noise_density=0.7)]))
    with pytest.raises(ValueError, match=r"objectives\.ul2\.target_length: 10 is shorter than"):
        build(UL2Config(target_length=10))
    with pytest.raises(ValueError, match="every rate is 0"):
        build(UL2Config(denoisers=[DenoiserConfig(rate=0.0)]))
    with pytest.raises(ValueError, match="empty"):
        build(UL2Config(denoisers=[]))


def test_registered_and_listed_by_components():
    load_plugins()
    assert OBJECTIVES.get("ul2").config_cls is UL2Config
    out = subprocess.run([sys.executable, "-m", "spactor", "components"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ul2" in out.stdout and "prefix_lm" in out.stdout


def test_flops_of_a_ul2_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "spactor", "flops", "ul2", "model.size=tiny"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    ratio = float(rows["ratio"][-2])  # UL2's 511-token targets cost more decoder than SC's 114
    assert ratio > 1.0 and float(rows["decoder"][0]) > float(rows["decoder"][1])


def test_preview_shows_every_denoiser_on_real_text(tiny_data):
    import json

    out = subprocess.run([sys.executable, "-m", "spactor", "preview", "ul2", *tiny_data, "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    examples = [json.loads(line) for line in out.stdout.splitlines()]
    labels = [e["denoiser"] for e in examples]
    assert labels == build(length=64).labels  # one example per denoiser, in config order
    from spactor.data.tokenizer import Tokenizer

    vocab = Tokenizer.load(next(o.split("=", 1)[1] for o in tiny_data if o.startswith("data.tokenizer="))).vocab()
    for e in examples:
        assert e["encoder_input"][0] == vocab.mode_id(MODES.index(e["denoiser"][0]))
    text = subprocess.run([sys.executable, "-m", "spactor", "preview", "ul2", *tiny_data],
                          capture_output=True, text=True).stdout
    for token in MODE_TOKENS:
        assert f"{token}" in text


SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "item",
            "equal", "is_nonzero", "index_with_bool_mask"}


def test_transform_has_no_host_sync_or_value_dependent_shape():
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            name = func.overloadpacket.__name__
            if name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1]):
                name = "index_with_bool_mask"  # a value-dependent shape
            self.names.append(name)
            return func(*args, **(kwargs or {}))

    ul2 = build()
    corrupt(ul2, 8)  # the first call places the rates / mode-id tables on the device
    with CountOps() as ops:
        corrupt(ul2, 8, seed=1)
    assert ops.names and not SYNC_OPS & set(ops.names), sorted(SYNC_OPS & set(ops.names))
