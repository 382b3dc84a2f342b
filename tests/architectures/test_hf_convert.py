"""Hugging Face interop: spactor T5 ⇄ ``T5ForConditionalGeneration``.

Exports of random v1.0 (tied, scaled head) and v1.1 (untied) models must give the same
logits in ``transformers`` (fp32, CPU, within 1e-4) and come back bit-exact through
``model.init_from=hf:PATH``; a trained run exports through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spactor.architectures.hf_convert import (
    hf_config,
    hf_to_spactor_key,
    hf_to_t5_state_dict,
    save_hf_pretrained,
    spactor_to_hf_key,
    t5_to_hf_state_dict,
)
from spactor.architectures.t5 import T5Config, T5Model
from spactor.architectures.t5_plugin import build_t5

VOCAB = 384  # rows; above the largest id the inputs use

# (version, T5Config overrides): tiny presets, and small widths with few layers (512 wide
# is where a wrong head scale or eps would show, at a cost of a fraction of a second).
MODELS = [
    ("1.0", {"size": "tiny"}),
    ("1.1", {"size": "tiny"}),
    ("1.0", {"size": "small", "num_layers": 1, "num_decoder_layers": 2}),
    ("1.1", {"size": "small", "num_layers": 2, "num_decoder_layers": 1}),
]
IDS = ["v1.0-tiny", "v1.1-tiny", "v1.0-small-1x2", "v1.1-small-2x1"]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="pip install -e '.[test]' for the HF interop tests")


def random_model(version: str, overrides: dict, seed: int = 0) -> T5Model:
    torch.manual_seed(seed)
    model = build_t5(T5Config(version=version, **overrides), VOCAB)
    # Norm weights start at 1 and the relative bias is small: randomise them so a
    # misplaced norm or bias table cannot hide behind an identity.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def inputs(
    batch: int = 2, length: int = 13, target: int = 7
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    decoder_ids = torch.randint(3, VOCAB, (batch, target), generator=g)
    decoder_ids[:, 0] = 0  # T5 decoding starts from pad
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, length - 4 :] = False
    ids[~mask] = 0
    return ids, decoder_ids, mask


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_every_parameter_has_a_hf_name_and_back(version):
    model = random_model(version, {"size": "tiny", "num_decoder_layers": 3})
    for key in model.state_dict():
        assert hf_to_spactor_key(spactor_to_hf_key(key)) == key
    hf_keys = set(t5_to_hf_state_dict(model))
    assert ("lm_head.weight" in hf_keys) == (version == "1.1")  # tied: written once, as shared
    assert "decoder.block.2.layer.2.DenseReluDense.wo.weight" in hf_keys
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in hf_keys
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in hf_keys


def test_hf_config_follows_the_version():
    v10 = hf_config(T5Config(version="1.0", size="small"), 32128)
    v11 = hf_config(T5Config(version="1.1", size="base"), 32128)
    assert (v10["feed_forward_proj"], v10["tie_word_embeddings"]) == ("relu", True)
    assert (v11["feed_forward_proj"], v11["tie_word_embeddings"]) == ("gated-gelu", False)
    assert (v10["d_model"], v10["d_ff"], v10["num_heads"], v10["num_layers"], v10["d_kv"]) == (
        512,
        2048,
        8,
        6,
        64,
    )
    assert (v11["d_model"], v11["d_ff"], v11["num_heads"], v11["num_decoder_layers"]) == (768, 2048, 12, 12)
    assert (v10["pad_token_id"], v10["eos_token_id"], v10["decoder_start_token_id"]) == (0, 1, 0)
    assert v10["vocab_size"] == 32128 and v10["layer_norm_epsilon"] == 1e-6


# --------------------------------------------------------------------------- logits


@pytest.mark.parametrize(("version", "overrides"), MODELS, ids=IDS)
def test_exported_model_gives_the_same_logits_in_transformers(transformers, tmp_path, version, overrides):
    model = random_model(version, overrides)
    files = save_hf_pretrained(model, tmp_path)
    assert files == ["config.json", "model.safetensors"]
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, decoder_ids, mask = inputs()
    with torch.no_grad():
        ours = model(ids, decoder_ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=decoder_ids).logits
    assert theirs.shape == ours.shape == (2, 7, VOCAB)
    # Random weights give logits of order 1-10; a missing d_model**-0.5 would be ~20x off.
    assert ours.abs().max() > 1.0
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # The padded positions of the last row carry no information: their logits agree too.
    with torch.no_grad():
        enc = hf.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(enc[mask], model.encode(ids, mask)[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("version", "overrides"), MODELS[:2], ids=IDS[:2])
def test_init_from_round_trips_exactly(tmp_path, version, overrides):
    model = random_model(version, overrides)
    save_hf_pretrained(model, tmp_path)
    torch.manual_seed(123)  # a different random init, overwritten by the load
    loaded = build_t5(T5Config(version=version, init_from=f"hf:{tmp_path}", **overrides), VOCAB)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_what_transformers_saves_converts_back(transformers, tmp_path, version):
    """HF's own state dict (embed_tokens aliases, a tied lm_head) and its own
    ``save_pretrained`` directory (transformers 5 writes ``tie_word_embeddings: true``
    even for v1.1) come back exactly."""
    model = random_model(version, {"size": "tiny"})
    save_hf_pretrained(model, tmp_path / "ours")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours")
    back = hf_to_t5_state_dict(dict(hf.state_dict()), model.config)
    hf.save_pretrained(tmp_path / "theirs")
    loaded = build_t5(T5Config(version=version, size="tiny", init_from=f"hf:{tmp_path / 'theirs'}"), VOCAB)
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key
        assert torch.equal(loaded.state_dict()[key], value), key


def hf_v11(transformers, tie_word_embeddings: bool):
    """A tiny v1.1 as transformers builds it from a config (its own init, then norms and
    the relative bias randomised too)."""
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=tie_word_embeddings,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(3)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_()
    return hf


def hf_logits(hf, ids, decoder_ids, mask):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=decoder_ids).logits


def test_tied_v1_1_from_transformers_imports_with_its_scaled_head(transformers, tmp_path):
    """transformers 5's v1.1 from a default config: tie_word_embeddings true, no
    lm_head.weight, decoder output scaled by d_model**-0.5. HF is the oracle: the logits
    of the imported model are HF's, and its export loads back into HF with HF's logits."""
    hf = hf_v11(transformers, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["tie_word_embeddings"] is True
    from spactor.architectures.hf_convert import read_hf_weights

    assert "lm_head.weight" not in read_hf_weights(tmp_path / "hf")
    init_from = f"hf:{tmp_path / 'hf'}"
    refused = r"tie_word_embeddings: checkpoint True, model False.*model\.tie_embeddings"
    with pytest.raises(ValueError, match=refused):
        build_t5(T5Config(version="1.1", size="tiny", init_from=init_from), VOCAB)
    tied = T5Config(version="1.1", size="tiny", tie_embeddings=True, init_from=init_from)
    model = build_t5(tied, VOCAB).eval()
    assert model.lm_head is None
    ids, decoder_ids, mask = inputs()
    expected = hf_logits(hf, ids, decoder_ids, mask)
    assert expected.abs().max() > 1.0
    with torch.no_grad():
        ours = model(ids, decoder_ids, mask)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # Without the scaling the logits would be d_model**0.5 = 8x off: the check has teeth.
    assert (ours * 8 - expected).abs().max() > 1.0
    save_hf_pretrained(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["tie_word_embeddings"] is True
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert back.config.scale_decoder_outputs is True
    torch.testing.assert_close(hf_logits(back, ids, decoder_ids, mask), expected, atol=1e-4, rtol=0)


def test_v1_1_that_transformers_ties_unscaled_imports_untied(transformers, tmp_path):
    """tie_word_embeddings=False in transformers 5: still tied in memory (no lm_head.weight
    saved) but unscaled. spactor's untied v1.1 takes shared as its lm_head: HF's logits."""
    hf = hf_v11(transformers, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "hf")
    model = build_t5(T5Config(version="1.1", size="tiny", init_from=f"hf:{tmp_path / 'hf'}"), VOCAB).eval()
    assert model.lm_head is not None
    assert torch.equal(model.lm_head.weight, model.token_embedding.weight)
    ids, decoder_ids, mask = inputs()
    expected = hf_logits(hf, ids, decoder_ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, decoder_ids, mask), expected, atol=1e-4, rtol=0)
    save_hf_pretrained(model, tmp_path / "ours")
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(hf_logits(back, ids, decoder_ids, mask), expected, atol=1e-4, rtol=0)


def test_init_from_reads_a_legacy_pytorch_model_bin(tmp_path):
    model = random_model("1.1", {"size": "tiny"})
    save_hf_pretrained(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(t5_to_hf_state_dict(model), tmp_path / "pytorch_model.bin")
    loaded = build_t5(T5Config(version="1.1", size="tiny", init_from=f"hf:{tmp_path}"), VOCAB)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_an_untied_head_cannot_become_v1_0():
    model = random_model("1.1", {"size": "tiny"})
    sd = t5_to_hf_state_dict(model)  # v1.1: lm_head.weight is its own tensor
    with pytest.raises(ValueError, match="lm_head.weight differs from shared.weight"):
        hf_to_t5_state_dict(sd, T5Config(version="1.0", size="tiny"))


def test_init_from_rejects_a_different_architecture(tmp_path):
    save_hf_pretrained(random_model("1.0", {"size": "tiny"}), tmp_path)
    with pytest.raises(ValueError, match=r"model\.init_from.*d_model: checkpoint 64, model 128"):
        build_t5(T5Config(version="1.0", size="tiny", d_model=128, init_from=f"hf:{tmp_path}"), VOCAB)
    with pytest.raises(ValueError, match=r"model\.init_from.*feed_forward_proj.*tie_word_embeddings"):
        build_t5(T5Config(version="1.1", size="tiny", d_ff=256, init_from=f"hf:{tmp_path}"), VOCAB)
    with pytest.raises(ValueError, match=r"model\.init_from.*vocab_size: checkpoint 384, model 256"):
        build_t5(T5Config(version="1.0", size="tiny", init_from=f"hf:{tmp_path}"), 256)
    with pytest.raises(ValueError, match=r"model\.init_from must be 'hf:PATH'"):
        build_t5(T5Config(version="1.0", size="tiny", init_from=str(tmp_path)), VOCAB)
    with pytest.raises(ValueError, match=r"model\.init_from=hf:.*no config\.json"):
        build_t5(T5Config(version="1.0", size="tiny", init_from=f"hf:{tmp_path / 'missing'}"), VOCAB)


def test_init_from_checks_but_does_not_read_on_meta(tmp_path):
    """``spactor preview``/``flops`` build on meta: the check runs, the weights are not read."""
    save_hf_pretrained(random_model("1.0", {"size": "tiny"}), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with torch.device("meta"):
        build_t5(T5Config(version="1.0", size="tiny", init_from=f"hf:{tmp_path}"), VOCAB)
        with pytest.raises(ValueError, match="model.init_from"):
            build_t5(T5Config(version="1.0", size="tiny", num_layers=3, init_from=f"hf:{tmp_path}"), VOCAB)
    with pytest.raises(ValueError, match=r"model\.init_from.*no model\.safetensors"):
        build_t5(T5Config(version="1.0", size="tiny", init_from=f"hf:{tmp_path}"), VOCAB)


# --------------------------------------------------------------------------- runs


def _train(recipe: str, run_dir: Path, overrides: list[str], steps: int) -> None:
    from spactor.config import load_config
    from spactor.plugins import load_plugins
    from spactor.train.loop import train

    load_plugins()
    resolved = load_config(recipe, [*overrides, f"trainer.max_steps={steps}", f"run.dir={run_dir}"])
    train(resolved)


def test_trained_run_exports_through_the_cli(transformers, tmp_path, tiny_overrides):
    from spactor.data.tokenizer import Tokenizer
    from spactor.train.checkpoint import Checkpointer
    from spactor.tools.export import read_discriminator

    run = tmp_path / "run"
    _train("quickstart", run, tiny_overrides, steps=3)
    out = tmp_path / "hf"
    done = subprocess.run(check=False, args=
        [sys.executable, "-m", "spactor", "export", str(run), "--format", "hf", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported step 3" in done.stdout
    assert (out / "spiece.model").read_bytes() == (run / "spiece.model").read_bytes()
    assert json.loads((out / "config.json").read_text())["feed_forward_proj"] == "relu"

    hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    checkpoint, _ = Checkpointer(run / "checkpoints").latest_valid()
    assert checkpoint is not None
    weights = read_discriminator(checkpoint)
    model = T5Model(T5Config(version="1.0", size="tiny"), weights["token_embedding.weight"].shape[0]).eval()
    model.load_state_dict(weights)
    tok = Tokenizer.load(out / "spiece.model")
    ids = torch.tensor([tok.encode("Span corruption replaces spans with sentinels.") + [tok.eos_id]])
    decoder_ids = torch.tensor([[0, tok.sentinel_id(0), 5, 6]])
    with torch.no_grad():
        theirs = hf(input_ids=ids, decoder_input_ids=decoder_ids).logits
        ours = model(ids, decoder_ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # HF's T5Tokenizer reads the exported spiece.model with the same ids and sentinels.
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("Span corruption replaces spans.").input_ids == tok.encode(
        "Span corruption replaces spans."
    ) + [1]
    assert hf_tok.convert_tokens_to_ids("<extra_id_0>") == tok.sentinel_id(0)


def test_export_of_a_checkpoint_drops_the_generator_and_rtd_head(tmp_path, tiny_overrides):
    from safetensors import safe_open

    from spactor.tools.export import export_hf, read_discriminator

    run = tmp_path / "run"
    _train("spactor", run, tiny_overrides, steps=1)
    checkpoint = run / "checkpoints" / "step_00000001"
    result = export_hf(checkpoint, tmp_path / "hf")
    assert result.step == 1 and result.checkpoint == checkpoint
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == "pt"
    assert "shared.weight" in keys and "lm_head.weight" not in keys
    assert not any("generator" in k or "rtd" in k for k in keys)
    # The export starts a new run: same architecture, exactly the checkpoint's weights.
    weights = read_discriminator(checkpoint)
    assert not any(k.startswith("objectives.") for k in weights)
    rows = weights["token_embedding.weight"].shape[0]
    torch.manual_seed(7)
    started = build_t5(T5Config(version="1.0", size="tiny", init_from=f"hf:{tmp_path / 'hf'}"), rows)
    for key, value in started.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_export_errors_are_one_line(tmp_path):
    from spactor.cli import main

    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
