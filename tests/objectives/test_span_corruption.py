"""span_corruption: exactness, T5's counting rule, statistical equivalence with the numpy
reference (and with the exact distribution), determinism, sentinel limit, loss."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spactor.architectures.base import Architecture
import reference_t5  # tests/reference_t5.py: tests/ is on sys.path (rootdir conftest)
from spactor.objectives.base import ObjectiveContext, Reduce, SharedForward, Vocab
from spactor.objectives.span_corruption import (
    SpanCorruption,
    SpanCorruptionConfig,
    max_raw_length,
    random_spans_noise_mask,
    reconstruct,
    span_corrupt,
    span_counts,
)
from spactor.registry import OBJECTIVES

from roles import ctx_for  # tests/roles.py: tests/ is on sys.path (rootdir conftest)

VOCAB = Vocab(size=32128)
DENSITY, MEAN_SPAN = 0.15, 3.0
# (encoder length, raw length, target length): T5's random_spans_helper at 0.15 / 3.0.
T5_LENGTHS = [(128, 141, 29), (512, 568, 114), (1024, 1137, 229)]


def make_originals(batch: int, length: int, seed: int = 0, eos_every: int = 97) -> torch.Tensor:
    """Random real ids with EOS at some document boundaries (never pad, never sentinels)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (batch, length), generator=g)
    ids[:, eos_every::eos_every] = VOCAB.eos_id
    return ids


def build(input_length: int = 512, name: str = "span_corruption", **cfg) -> SpanCorruption:
    entry = OBJECTIVES.get("span_corruption")
    ctx = ObjectiveContext(name=name, vocab=VOCAB, input_length=input_length, model=None)
    return entry.factory(entry.config_cls(**cfg), ctx)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- exactness and shapes --------------------------------------------------------------


@pytest.mark.parametrize(
    "length,density,mean_span", [(568, 0.15, 3.0), (141, 0.15, 3.0), (300, 0.3, 2.0), (50, 0.5, 1.0)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_is_exact(length: int, density: float, mean_span: float, seed: int) -> None:
    original = make_originals(8, length, seed=seed, eos_every=13)
    out = span_corrupt(original, density, mean_span, VOCAB, gen(seed))
    for i in range(original.shape[0]):
        assert torch.equal(reconstruct(out["encoder_input"][i], out["decoder_target"][i], VOCAB), original[i])


@pytest.mark.parametrize("input_length,raw_length,target_length", T5_LENGTHS)
def test_t5_lengths(input_length: int, raw_length: int, target_length: int) -> None:
    obj = build(input_length)
    assert obj.chunk_length == max_raw_length(input_length, DENSITY, MEAN_SPAN) == raw_length
    out = obj.transform({"original": make_originals(4, raw_length)}, gen(0))
    assert out["encoder_input"].shape == (4, input_length)
    assert out["decoder_target"].shape == out["decoder_input"].shape == (4, target_length)
    assert out["noise_mask"].shape == (4, raw_length)
    # Exactly full: no padding, EOS last.
    assert (out["encoder_input"] != VOCAB.pad_id).all()
    assert (out["encoder_input"][:, -1] == VOCAB.eos_id).all()
    assert (out["decoder_target"][:, -1] == VOCAB.eos_id).all()
    assert torch.equal(out["decoder_input"][:, 1:], out["decoder_target"][:, :-1])
    assert (out["decoder_input"][:, 0] == VOCAB.pad_id).all()
    assert obj.count(out) == 4 * target_length


@pytest.mark.parametrize("input_length,raw_length,target_length", T5_LENGTHS)
def test_agrees_with_data_chunking(input_length: int, raw_length: int, target_length: int) -> None:
    chunking = pytest.importorskip("spactor.data.chunking")
    assert chunking.span_corruption_lengths(input_length, DENSITY, MEAN_SPAN) == (raw_length, target_length)
    for n in (37, 200, 777, 1500):
        counts = span_counts(max_raw_length(n, DENSITY, MEAN_SPAN), DENSITY, MEAN_SPAN)
        assert chunking.span_corruption_lengths(n, DENSITY, MEAN_SPAN) == (
            counts.length,
            counts.target_length,
        )


def test_counts_follow_t5_rule() -> None:
    for length in range(2, 2000, 7):
        # T5's random_spans_noise_mask: float32 arithmetic, tf.round (half to even).
        num_noise = int(np.round(np.float32(length) * np.float32(DENSITY)))
        num_noise = min(max(num_noise, 1), length - 1)
        num_spans = max(1, int(np.round(np.float32(num_noise) / np.float32(MEAN_SPAN))))
        c = span_counts(length, DENSITY, MEAN_SPAN)
        assert (c.num_noise, c.num_spans) == (num_noise, num_spans)
        assert reference_t5.noise_span_counts(length, DENSITY, MEAN_SPAN) == (num_noise, num_spans)
    # The mask realises them: exactly num_noise noise tokens in num_spans runs per row,
    # starting with non-noise and ending with noise.
    mask = random_spans_noise_mask(64, 568, DENSITY, MEAN_SPAN, gen(3))
    assert (mask.sum(1) == 85).all()
    assert ((mask[:, 1:] & ~mask[:, :-1]).sum(1) == 28).all()
    assert (~mask[:, 0]).all() and mask[:, -1].all()


def test_float32_rounding_of_the_noise_count() -> None:
    """Raw length 190 at 0.15: T5 gets 29 noise tokens in 10 spans (28.500002 in
    float32), float64 rounding would give 28 in 9."""
    c = span_counts(190, DENSITY, MEAN_SPAN)
    assert (c.num_noise, c.num_spans) == (29, 10) == reference_t5.noise_span_counts(190, DENSITY, MEAN_SPAN)
    out = span_corrupt(make_originals(3, 190), DENSITY, MEAN_SPAN, VOCAB, gen(0))
    assert (out["noise_mask"].sum(1) == 29).all()
    assert out["decoder_target"].shape == (3, 29 + 10 + 1)


@pytest.mark.parametrize(
    "input_length,mean_span,raw_length", [(256, 3.0, 382), (512, 3.0, 766), (1024, 8.0, 1818)]
)
def test_density_half_raw_length_is_t5s(input_length: int, mean_span: float, raw_length: int) -> None:
    """The trainer's raw length at density 0.5 is T5's random_spans_helper's (one token
    off where the target would be longer than the input): inputs == targets."""
    helper = reference_t5.random_spans_helper(input_length, 0.5, mean_span)
    assert helper == (raw_length, input_length)
    assert max_raw_length(input_length, 0.5, mean_span) == raw_length
    if span_counts(raw_length, 0.5, mean_span).num_spans > VOCAB.num_sentinels:
        return  # 512 at μ 3 needs 128 sentinels; the length rule is what is checked there
    obj = build(input_length, noise_density=0.5, mean_noise_span_length=mean_span)
    assert obj.chunk_length == raw_length
    out = obj.transform({"original": make_originals(2, raw_length)}, gen(0))
    assert out["encoder_input"].shape == out["decoder_target"].shape == (2, input_length)
    assert (out["encoder_input"] != VOCAB.pad_id).all()


def test_density_half_mu_one_keeps_one_raw_token_more_than_t5s_helper() -> None:
    """A documented difference (README "Lengths are the mask's"; ``span_corruption_lengths``):
    at density 0.5 and μ 1 T5's helper cuts 510 raw tokens for 512, spactor 511. At 511
    T5's float32 counts are 256 noise tokens in 256 spans but only 255 non-noise tokens to
    separate them: its mask would need an empty segment, and its helper, counting a
    513-token target, steps back one. spactor's span cap (255 spans) makes 511 a valid
    chunk: 511 inputs, 512 targets, both within 512."""
    assert reference_t5.random_spans_helper(512, 0.5, 1.0) == (510, 512)
    assert max_raw_length(512, 0.5, 1.0) == 511
    f32 = np.float32
    noise = int(np.round(f32(511) * f32(0.5)))  # 255.5 -> 256, half to even (tf.round)
    t5_spans = int(np.round(f32(noise) / f32(1.0)))
    assert (noise, t5_spans, 511 - noise) == (256, 256, 255)  # more spans than separators
    c = span_counts(511, 0.5, 1.0)
    assert (c.num_noise, c.num_spans, c.encoder_length, c.target_length) == (256, 255, 511, 512)
    # Over input lengths 16-4096: one token more exactly where T5's mask at that chunk
    # cannot be built (every multiple of 4, 1021 lengths), T5's helper everywhere else.
    more = []
    for n in range(16, 4097):
        t5_raw, ours = reference_t5.random_spans_helper(n, 0.5, 1.0)[0], max_raw_length(n, 0.5, 1.0)
        assert ours in (t5_raw, t5_raw + 1), n
        if ours != t5_raw:
            k = int(np.round(f32(ours) * f32(0.5)))
            assert k > ours - k, n  # T5's spans (= noise tokens at μ 1) outnumber the rest
            more.append(n)
    assert len(more) == 1021 and all(n % 4 == 0 for n in more)
    # Where the sentinels suffice the chunk corrupts to the shapes counted: 64 -> 63 raw.
    obj = build(64, noise_density=0.5, mean_noise_span_length=1.0)
    assert obj.chunk_length == 63 == reference_t5.random_spans_helper(64, 0.5, 1.0)[0] + 1
    out = obj.transform({"original": make_originals(4, 63)}, gen(0))
    assert out["encoder_input"].shape == out["decoder_target"].shape == (4, 64)
    assert (out["encoder_input"][:, 63] == VOCAB.pad_id).all() and (out["decoder_target"] != VOCAB.pad_id).all()
    for i in range(4):
        assert torch.equal(reconstruct(out["encoder_input"][i], out["decoder_target"][i], VOCAB), out["original"][i])


def test_short_chunk_is_padded_to_input_length() -> None:
    obj = build(512)
    out = obj.transform({"original": make_originals(3, 500)}, gen(0))
    c = span_counts(500, DENSITY, MEAN_SPAN)
    assert out["encoder_input"].shape == (3, 512)
    assert (out["encoder_input"][:, c.encoder_length :] == VOCAB.pad_id).all()
    assert (out["encoder_input"][:, c.encoder_length - 1] == VOCAB.eos_id).all()
    with pytest.raises(ValueError, match="more than input_length 512"):
        span_corrupt(make_originals(3, 569), DENSITY, MEAN_SPAN, VOCAB, gen(0), pad_to=512)
    # a longer chunk (a curriculum's other stage needs it) is cut to the objective's own 568
    longer = make_originals(3, 700)
    cut = obj.transform({"original": longer[:, :568]}, gen(0))
    whole = obj.transform({"original": longer}, gen(0))
    assert all(torch.equal(cut[k], whole[k]) for k in cut if k != "original")


def test_sentinels_in_order() -> None:
    out = span_corrupt(make_originals(4, 568), DENSITY, MEAN_SPAN, VOCAB, gen(5))
    expected = torch.tensor([VOCAB.sentinel_id(k) for k in range(28)])
    for field in ("encoder_input", "decoder_target"):
        ids = out[field]
        is_sentinel = VOCAB.is_special(ids) & (ids != VOCAB.eos_id) & (ids != VOCAB.pad_id)
        for row, sel in zip(ids, is_sentinel):
            assert torch.equal(row[sel], expected)
    assert (out["decoder_target"][:, 0] == VOCAB.sentinel_id(0)).all()


@settings(max_examples=50, deadline=None)
@given(
    length=st.integers(2, 200),
    density=st.floats(0.01, 0.99),
    mean_span=st.floats(0.5, 10.0),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_reconstruction_property(
    length: int, density: float, mean_span: float, batch: int, seed: int
) -> None:
    original = make_originals(batch, length, seed=seed % 1000, eos_every=11)
    out = span_corrupt(original, density, mean_span, VOCAB, gen(seed))
    c = span_counts(length, density, mean_span)
    assert out["encoder_input"].shape == (batch, c.encoder_length)
    assert out["decoder_target"].shape == (batch, c.target_length)
    assert (out["noise_mask"].sum(1) == c.num_noise).all()
    for i in range(batch):
        assert torch.equal(reconstruct(out["encoder_input"][i], out["decoder_target"][i], VOCAB), original[i])
    # The reference produces the same shapes from the same counting rule.
    ref = reference_t5.span_corrupt_batch(
        original.numpy(), density, mean_span, VOCAB, np.random.default_rng(seed)
    )
    assert ref["encoder_input"].shape == tuple(out["encoder_input"].shape)
    assert ref["decoder_target"].shape == tuple(out["decoder_target"].shape)
    for i in range(batch):
        assert (
            reconstruct(ref["encoder_input"][i], ref["decoder_target"][i], VOCAB).tolist()
            == original[i].tolist()
        )


# -- statistics against the reference and the exact distribution -------------------------

N_EXAMPLES = 2000
ALPHA = 1e-3  # seeds are fixed, so these are deterministic; the level guards against an unlucky choice


def chi2_sf(stat: float, dof: int) -> float:
    """Chi-square survival function; scipy when installed, else Wilson–Hilferty's normal
    approximation (relative error well under 1% in the tail for dof >= 5, ample for a
    pass/fail threshold at 1e-3)."""
    try:
        from scipy.stats import chi2

        return float(chi2.sf(stat, dof))
    except ImportError:
        z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        return 0.5 * math.erfc(z / math.sqrt(2))


def chi2_goodness_of_fit(observed: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * observed.sum()
    assert expected.min() >= 5, "bins too thin for a chi-square test"
    return chi2_sf(float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1)


def chi2_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """Homogeneity test of two histograms over the same bins."""
    table = np.stack([a, b]).astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    assert expected.min() >= 5, "bins too thin for a chi-square test"
    return chi2_sf(float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1)


def composition_part_pmf(total: int, parts: int) -> np.ndarray:
    """P(a given part = j), j = 1..total-parts+1, for a uniform composition of ``total``
    into ``parts`` positive parts: C(total-j-1, parts-2) / C(total-1, parts-1)."""
    j = np.arange(1, total - parts + 2)
    return np.array([math.comb(total - x - 1, parts - 2) for x in j], float) / math.comb(total - 1, parts - 1)


def binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of integer values in [edges[i], edges[i+1])."""
    return np.histogram(values, bins=edges)[0]


def run_lengths(masks: np.ndarray) -> np.ndarray:
    """Lengths of all runs of True, rows kept apart by a False on each side."""
    padded = np.pad(masks.astype(np.int8), ((0, 0), (1, 1))).reshape(-1)
    edges = np.diff(padded)
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


@pytest.fixture(scope="module")
def masks() -> tuple[np.ndarray, np.ndarray]:
    ours = random_spans_noise_mask(N_EXAMPLES, 568, DENSITY, MEAN_SPAN, gen(1234)).numpy()
    rng = np.random.default_rng(1234)
    ref = np.stack(
        [reference_t5.random_spans_noise_mask(568, DENSITY, MEAN_SPAN, rng) for _ in range(N_EXAMPLES)]
    )
    return ours, ref


def test_noise_span_lengths_match(masks) -> None:
    ours, ref = masks
    # Pooling the 28 spans of each example: they are exchangeable and negatively
    # dependent (fixed sum), which only makes the chi-square test conservative.
    edges = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 13, 100])
    pmf = composition_part_pmf(85, 28)  # lengths 1..58
    probs = np.array([pmf[lo - 1 : hi - 1].sum() for lo, hi in itertools.pairwise(edges)])
    a, b = binned(run_lengths(ours), edges), binned(run_lengths(ref), edges)
    assert a.sum() == b.sum() == 28 * N_EXAMPLES
    assert chi2_goodness_of_fit(a, probs) > ALPHA
    assert chi2_goodness_of_fit(b, probs) > ALPHA
    assert chi2_two_sample(a, b) > ALPHA
    assert abs(run_lengths(ours).mean() - 85 / 28) < 1e-9  # the mean is fixed by construction


def test_first_span_start_matches(masks) -> None:
    ours, ref = masks
    # The first noise token sits right after the first non-noise span: a part of a uniform
    # composition of 483 into 28. Bin by the exact distribution's deciles.
    pmf = composition_part_pmf(483, 28)
    cdf = np.cumsum(pmf)
    cuts = np.unique(np.searchsorted(cdf, np.linspace(0.1, 0.9, 9)) + 2)
    edges = np.concatenate([[1], cuts, [len(pmf) + 1]])
    probs = np.array([pmf[lo - 1 : hi - 1].sum() for lo, hi in itertools.pairwise(edges)])
    a, b = binned(ours.argmax(1), edges), binned(ref.argmax(1), edges)
    assert chi2_goodness_of_fit(a, probs) > ALPHA
    assert chi2_goodness_of_fit(b, probs) > ALPHA
    assert chi2_two_sample(a, b) > ALPHA


def test_positionwise_noise_frequency_matches(masks) -> None:
    ours, ref = masks
    # Examples are iid, so per-example noise fractions in each block of 8 positions give
    # a valid two-sample z-test per block; Bonferroni over the 71 blocks.
    fa = ours.reshape(N_EXAMPLES, 71, 8).mean(2)
    fb = ref.reshape(N_EXAMPLES, 71, 8).mean(2)
    se = np.sqrt(fa.var(0, ddof=1) / N_EXAMPLES + fb.var(0, ddof=1) / N_EXAMPLES)
    z = np.abs(fa.mean(0) - fb.mean(0)) / se
    z_crit = 4.04  # two-sided normal quantile at ALPHA / 71
    assert z.max() < z_crit, f"block {z.argmax()} differs: z = {z.max():.2f}"
    # Per position, loosely: the largest gap between the two frequency profiles stays
    # within ~5 standard errors of a difference of two proportions near 0.5.
    pa, pb = ours.mean(0), ref.mean(0)
    assert np.abs(pa - pb).max() < 5 * math.sqrt(2 * 0.25 / N_EXAMPLES)
    assert pa[0] == pb[0] == 0.0 and pa[-1] == pb[-1] == 1.0
    assert abs(pa.mean() - 85 / 568) < 1e-9


# -- determinism, devices, limits -------------------------------------------------------


def test_seeded() -> None:
    obj = build(512)
    batch = {"original": make_originals(4, 568)}
    a, b, c = (obj.transform(batch, gen(s)) for s in (7, 7, 8))
    for k in ("encoder_input", "decoder_target", "decoder_input", "noise_mask"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["noise_mask"], c["noise_mask"])
    assert torch.equal(a["original"], batch["original"])  # the input batch is not modified


def test_eos_inside_chunk_survives() -> None:
    original = make_originals(6, 568, eos_every=5)  # EOS-dense: many document boundaries
    out = build(512).transform({"original": original}, gen(0))
    for i in range(6):
        assert torch.equal(reconstruct(out["encoder_input"][i], out["decoder_target"][i], VOCAB), original[i])


def test_more_than_100_sentinels_is_refused() -> None:
    build(1809)  # the longest encoder input that fits in 100 sentinels at 0.15 / 3.0
    with pytest.raises(
        ValueError, match=r"objectives\.span_corruption: .*101 noise spans.*only 100 sentinels"
    ):
        build(1810)
    with pytest.raises(ValueError, match=r"objectives\.span_corruption: .*only 100 sentinels"):
        build(2048)
    with pytest.raises(ValueError, match=r"objectives\.span_corruption: .*only 100 sentinels"):
        span_corrupt(make_originals(1, 2010), DENSITY, MEAN_SPAN, VOCAB, gen(0))


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="noise_density"):
        build(512, noise_density=1.5)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        build(512, mean_noise_span_length=0.0)


def test_registry_entry_and_knobs() -> None:
    entry = OBJECTIVES.get("span_corruption")
    assert entry.config_cls is SpanCorruptionConfig
    obj = build(512)
    assert obj.knobs() == {"weight": 1.0}
    obj.set_knob("weight", 10)
    assert obj.weight == 10.0
    assert obj.preview_fields(obj.transform({"original": make_originals(2, 568)}, gen(0)))[
        "noise_mask"
    ].shape == (
        2,
        568,
    )


# -- the loss ------------------------------------------------------------------------


class TinySeq2Seq(nn.Module):
    """Just enough of the Architecture protocol: embedding + linear 'decoder'."""

    CAPABILITIES = frozenset({"encode", "decode"})
    has_decoder = True

    def __init__(self, vocab_size: int = VOCAB.size, hidden: int = 16) -> None:
        super().__init__()
        self.hidden_size, self.vocab_size = hidden, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab_size, bias=False)
        self.seen_mask: torch.Tensor | None = None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def encode(self, input_ids, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        return self.embed(input_ids) if inputs_embeds is None else inputs_embeds

    def decode(self, decoder_input_ids, encoder_hidden, encoder_mask=None) -> torch.Tensor:
        self.seen_mask = encoder_mask
        m = encoder_mask.unsqueeze(-1).to(encoder_hidden.dtype)
        context = (encoder_hidden * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return torch.tanh(self.proj(self.embed(decoder_input_ids)) + context)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def blocks(self) -> list[nn.Module]:
        return [self.proj]


def test_loss_is_summed_cross_entropy() -> None:
    torch.manual_seed(0)
    model = TinySeq2Seq()
    assert isinstance(model, Architecture)
    obj = build(512)
    batch = obj.transform({"original": make_originals(3, 560)}, gen(0))  # padded encoder input
    # Pretend one target was shorter, to check padding is ignored everywhere.
    batch["decoder_target"][1, -5:] = VOCAB.pad_id
    forward = SharedForward(model, batch, VOCAB.pad_id)
    out = obj.loss(batch, forward, ctx_for(obj, batch))
    enc = forward.encode()

    valid = batch["decoder_target"] != VOCAB.pad_id
    assert torch.equal(model.seen_mask, batch["encoder_input"] != VOCAB.pad_id)
    assert out.loss.count == valid.sum() == obj.count(batch)
    logits = model.lm_logits(model.decode(batch["decoder_input"], enc, batch["encoder_input"] != 0))
    mean_ce = F.cross_entropy(logits.transpose(1, 2), batch["decoder_target"], ignore_index=VOCAB.pad_id)
    torch.testing.assert_close(out.loss.total / out.loss.count, mean_ce)
    acc = out.metrics["span_corruption/accuracy"]
    assert acc.reduce is Reduce.MEAN and 0.0 <= float(acc.value) <= 1.0
    out.loss.total.backward()
    assert model.head.weight.grad is not None and model.token_embedding.weight.grad.abs().sum() > 0
