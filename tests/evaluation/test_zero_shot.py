"""Zero-shot scoring: minimal pairs (BLiMP's format, the built-in pydoc_pairs) and
``spactor score``, on a tiny pre-trained T5 and an encoder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from spactor.cli import main
from spactor.config import load_config
from spactor.data.pydoc_pairs import first_sentence, pydoc_minimal_pairs, swapped
from spactor.evaluation.likelihood import (
    CAUSAL,
    DISCRIMINATOR,
    MLM_PLL,
    SPAN_PLL,
    likelihood_family,
    text_log_likelihoods,
    word_spans,
)
from spactor.plugins import load_plugins
from spactor.registry import ARCHITECTURES
from spactor.tasks.minimal_pairs import MinimalPair, read_pairs, score_pairs
from spactor.train.loop import train
from spactor.vocab import Vocab

load_plugins()
VOCAB = Vocab(size=128, first_sentinel_id=120, num_sentinels=10, mask_id=121)


def _model(arch: str):
    torch.manual_seed(0)
    entry = ARCHITECTURES.get(arch)
    recipe = {"t5": "sc", "encoder": "mlm", "llama": "causal_lm"}[arch]
    cfg = load_config(recipe, ["model.size=tiny"]).model.config
    return entry.factory(cfg, VOCAB.size).eval()


def test_span_pll_scores_each_token_as_the_single_noise_span():
    model = _model("t5")
    assert likelihood_family(model) == SPAN_PLL
    text = [10, 11, 12]
    [total] = text_log_likelihoods(model, VOCAB, [text])
    s0, s1, eos = VOCAB.sentinel_id(0), VOCAB.sentinel_id(1), VOCAB.eos_id
    want = 0.0
    for p, (enc, tgt) in enumerate([([s0, 11, 12, eos], [s0, 10, s1, eos]), ([10, s0, 12, eos], [s0, 11, s1, eos]),
                                    ([10, 11, s0, eos], [s0, 12, eos])]):
        enc_t, tgt_t = torch.tensor([enc]), torch.tensor([tgt])
        dec_in = F.pad(tgt_t[:, :-1], (1, 0), value=VOCAB.pad_id)
        with torch.no_grad():
            logits = model.lm_logits(model.decode(dec_in, model.encode(enc_t), None))
        want += F.log_softmax(logits[0, 1], -1)[text[p]].item()
    assert total == pytest.approx(want, abs=1e-4)
    # batching and padding change nothing
    again = text_log_likelihoods(model, VOCAB, [[5, 6, 7, 8, 9], text], batch_rows=3)
    assert again[1] == pytest.approx(total, abs=1e-4)


def test_a_whole_word_is_one_noise_span_scored_token_by_token():
    assert word_spans([10, 11, 12, 13, 14], lambda t: t in (10, 13)) == [(0, 3), (3, 5)]
    model = _model("t5")
    text, spans = [10, 11, 12, 13], [(0, 2), (2, 4)]
    [total] = text_log_likelihoods(model, VOCAB, [text], spans=[spans])
    s0, s1, eos = VOCAB.sentinel_id(0), VOCAB.sentinel_id(1), VOCAB.eos_id
    want = 0.0
    for enc, tgt, word in [([s0, 12, 13, eos], [s0, 10, 11, s1, eos], [10, 11]),
                           ([10, 11, s0, eos], [s0, 12, 13, eos], [12, 13])]:
        tgt_t = torch.tensor([tgt])
        dec_in = F.pad(tgt_t[:, :-1], (1, 0), value=VOCAB.pad_id)
        with torch.no_grad():
            log_probs = F.log_softmax(model.lm_logits(model.decode(dec_in, model.encode(torch.tensor([enc])), None)), -1)
        want += sum(log_probs[0, 1 + i, w].item() for i, w in enumerate(word))
    assert total == pytest.approx(want, abs=1e-4)
    mlm = _model("encoder")
    [masked] = text_log_likelihoods(mlm, VOCAB, [text], spans=[spans])
    want = 0.0
    for start, end in spans:
        ids = list(text)
        ids[start:end] = [VOCAB.mask_id] * (end - start)
        with torch.no_grad():
            log_probs = F.log_softmax(mlm.lm_logits(mlm.encode(torch.tensor([ids]))), -1)
        want += sum(log_probs[0, p, text[p]].item() for p in range(start, end))
    assert masked == pytest.approx(want, abs=1e-4)


def test_discriminator_sums_log_p_original_over_the_unmasked_text():
    model = _model("encoder")
    head = torch.nn.Linear(model.hidden_size, 1)
    scorer = lambda hidden: F.logsigmoid(-head(hidden).squeeze(-1))  # noqa: E731  (an RTD head's scores)
    texts = [[10, 11, 12, 13], [14, 15]]
    totals = text_log_likelihoods(model, VOCAB, texts, token_scorer=scorer, batch_rows=2)
    for text, total in zip(texts, totals):
        with torch.no_grad():
            want = scorer(model.encode(torch.tensor([text]))).sum().item()  # alone: no padding
        assert total == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="needs a token_scorer"):
        text_log_likelihoods(model, VOCAB, texts, family=DISCRIMINATOR)


def test_mlm_pll_masks_one_token_at_a_time():
    model = _model("encoder")
    assert likelihood_family(model) == MLM_PLL
    text = [10, 11, 12, 13]
    [total] = text_log_likelihoods(model, VOCAB, [text])
    want = 0.0
    for p in range(len(text)):
        ids = torch.tensor([text[:p] + [VOCAB.mask_id] + text[p + 1:]])
        with torch.no_grad():
            want += F.log_softmax(model.lm_logits(model.encode(ids))[0, p], -1)[text[p]].item()
    assert total == pytest.approx(want, abs=1e-4)


def test_a_causal_decoder_sums_its_next_token_log_probabilities():
    model = _model("llama")
    assert likelihood_family(model) == CAUSAL
    text = [10, 11, 12, 13]
    [total] = text_log_likelihoods(model, VOCAB, [text])
    ids = torch.tensor([[VOCAB.eos_id, *text]])  # no BOS in this vocabulary: EOS starts a document
    with torch.no_grad():
        log_probs = F.log_softmax(model.lm_logits(model.causal(ids)), -1)[0]
    want = sum(log_probs[p, t].item() for p, t in enumerate(text))
    assert total == pytest.approx(want, abs=1e-4)
    again = text_log_likelihoods(model, VOCAB, [[5, 6, 7, 8, 9, 10, 11], text], batch_rows=2)
    assert again[1] == pytest.approx(total, abs=1e-4)  # right padding changes nothing


def test_pairs_count_ties_as_wrong_and_break_down_by_uid():
    pairs = [MinimalPair("a", "b", "x"), MinimalPair("c", "d", "x"), MinimalPair("e", "f", "y")]
    accuracy, per_uid = score_pairs(pairs, [-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0])
    assert accuracy == pytest.approx(1 / 3) and per_uid == {"x": 0.5, "y": 0.0}


@pytest.mark.parametrize("content, message", [
    (b'{"sentence_good": "A b.", "sentence_bad": 3}\n', "p.jsonl:1: 'sentence_bad' must be a non-empty string"),
    (b'{"sentence_good": "A b.", "sentence_bad": "B a.", "UID": ["x"]}\n', "p.jsonl:1: 'UID' must be a string"),
    (b'\n{"sentence_good": "A \xff b."}\n', "p.jsonl:2 is not valid UTF-8"),
    (b"[1]\n", "p.jsonl:1 is not a JSON object"),
    (b"", "holds no pairs"),
])
def test_bad_pair_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        read_pairs(str(path))
    with pytest.raises(ValueError, match="is a directory"):
        read_pairs(str(tmp_path))


def test_pydoc_pairs_reorder_the_words_of_a_held_out_first_sentence():
    pairs = pydoc_minimal_pairs()
    assert len(pairs) > 500 and {p.uid for p in pairs} == {"adjacent_swap", "distant_swap"}
    for p in pairs[:200]:
        assert sorted(p.good[:-1].lower().split()) == sorted(p.bad[:-1].lower().split()) and p.good != p.bad
    assert first_sentence("Return the value.\n\nMore text.") is None  # 3 words: too short
    assert first_sentence("Return the value of the key given, or a default.") is not None
    assert first_sentence("Call f(x) with the given value of the key.") is None  # code
    assert swapped("Return the value of the key.", 1) == swapped("Return the value of the key.", 1)


@pytest.fixture(scope="module")
def sc_run(tmp_path_factory, tiny_overrides):
    run_dir = tmp_path_factory.mktemp("zero-shot") / "run"
    train(load_config("sc", [*tiny_overrides, f"run.dir={run_dir}", "trainer.max_steps=4",
                             "trainer.checkpoint_every=4", "runtime.count_flops=false"]))
    return run_dir


def test_evaluate_minimal_pairs_and_the_random_control_through_the_cli(sc_run, tmp_path, capsys):
    pairs = tmp_path / "blimp.jsonl"
    pairs.write_text('{"sentence_good": "The value is returned.", "sentence_bad": "The is value returned.", '
                     '"UID": "order"}\n{"sentence_good": "Close the file.", "sentence_bad": "File the close."}\n')
    assert main(["evaluate", str(sc_run), "--task", "minimal_pairs", f"path={pairs}"]) == 0
    sha = __import__("hashlib").sha256(pairs.read_bytes()).hexdigest()
    result = json.loads((sc_run / "eval" / f"minimal_pairs-{sha[:12]}" / "step_4.json").read_text())
    for key in ("score", "std", "metric", "seeds", "step", "flops_cum", "scores", "task", "init"):
        assert key in result, key
    assert result["step"] == 4 and result["pairs"] == 2 and set(result["per_uid"]) == {"order"}
    assert result["likelihood"] == SPAN_PLL and result["files"][0]["sha256"] == sha
    assert main(["evaluate", str(sc_run), "--task", "pydoc_pairs", "limit=8", "--init", "random",
                 "--seeds", "2"]) == 0
    control = json.loads((sc_run / "eval" / "pydoc_pairs" / "random.json").read_text())
    assert control["init"] == "random" and control["seeds"] == 2 and len(control["scores"]) == 2
    capsys.readouterr()
    lines = tmp_path / "lines.txt"
    lines.write_text("Return the value.\n\nClose the file.\n")
    assert main(["score", str(sc_run), "--input", str(lines)]) == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["Return the value.", "Close the file."]
    assert all(r["log_likelihood"] < 0 and r["tokens"] > 0 for r in records)
    assert main(["score", str(sc_run), "--input", str(tmp_path / "missing.txt")]) == 2
