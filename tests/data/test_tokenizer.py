import io
import multiprocessing as mp
import pickle
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from spactor.data.builtin_tokenizer import builtin_tokenizer, builtin_tokenizer_path
from spactor.data.tokenizer import Tokenizer, VocabularyTooLarge, atomic_write_bytes, t5_vocab


def test_t5_layout_for_32k_pieces():
    v = t5_vocab(32000)
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    assert v.sentinel_id(0) == 32099 and v.sentinel_id(99) == 32000 == v.last_sentinel_id
    assert v.mask_id == 32100
    assert v.size == 32128


def test_special_ids(small_tokenizer):
    tok = small_tokenizer
    n = tok.num_pieces
    assert n == 512
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert [tok.id_to_token(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert tok.sentinel_id(0) == n + 99 and tok.sentinel_id(99) == n
    assert tok.id_to_token(n + 99) == "<extra_id_0>" and tok.id_to_token(n) == "<extra_id_99>"
    assert tok.mask_id == n + 100 and tok.id_to_token(tok.mask_id) == "[M]"
    assert tok.vocab_size == 640 and tok.vocab_size % 128 == 0
    v = tok.vocab()
    assert (v.size, v.first_sentinel_id, v.mask_id, v.num_sentinels) == (640, n + 99, n + 100, 100)
    with pytest.raises(ValueError):
        tok.id_to_token(tok.vocab_size)


def test_encode_never_produces_special_rows(small_tokenizer, english_corpus):
    ids = torch.tensor(small_tokenizer.encode(english_corpus[0]))
    assert ids.numel() > 100
    assert int(ids.max()) < small_tokenizer.num_pieces
    assert not small_tokenizer.vocab().is_special(ids).any()


def test_round_trip(small_tokenizer):
    text = "The assert statement is a convenient way to insert debugging assertions into a program."
    assert small_tokenizer.decode(small_tokenizer.encode(text)) == text


def test_encode_batch_matches_encode(small_tokenizer):
    texts = ["Hello world.", "", "The quick brown fox jumps over the lazy dog."]
    tok = small_tokenizer
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_eos=True, num_threads=1) == [
        tok.encode(t) + [tok.eos_id] for t in texts
    ]


def test_decode_renders_sentinels_and_mask(small_tokenizer):
    tok = small_tokenizer
    ids = tok.encode("The cat") + [tok.sentinel_id(0)] + tok.encode("on the mat") + [tok.sentinel_id(1)]
    assert tok.decode(ids) == "The cat<extra_id_0> on the mat<extra_id_1>"
    masked = tok.encode("a b") + [tok.mask_id, tok.eos_id, tok.pad_id]
    assert tok.decode(masked) == "a b[M]"
    assert tok.decode(masked, show_special=True) == "a b[M]</s><pad>"
    # nothing stops decoding at EOS
    assert tok.decode(tok.encode("one") + [tok.eos_id] + tok.encode("two")) == "one two"
    assert tok.decode(torch.tensor(tok.encode("tensor input"))) == "tensor input"


def test_save_load_and_pickle(small_tokenizer, tmp_path):
    path = tmp_path / "run" / "spiece.model"
    small_tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.model_proto == small_tokenizer.model_proto
    text = "Pickled into a DataLoader worker."
    assert loaded.encode(text) == small_tokenizer.encode(text)
    assert pickle.loads(pickle.dumps(small_tokenizer)).encode(text) == small_tokenizer.encode(text)
    assert [p.name for p in path.parent.iterdir()] == ["spiece.model"]  # no temp files left


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.load(tmp_path / "nope.model")


def test_model_without_pad_is_rejected(english_corpus):
    writer = io.BytesIO()  # SentencePiece defaults: unk 0, bos 1, eos 2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_corpus[0].splitlines()),
        model_writer=writer,
        vocab_size=100,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="pad_id=0"):
        Tokenizer(writer.getvalue())


def test_train_writes_model_and_soft_vocab_limit(tmp_path):
    tiny = ["hello world"] * 20
    with pytest.raises(VocabularyTooLarge, match="vocabulary size 300 is too large") as info:
        Tokenizer.train(tiny, vocab_size=300)
    assert 0 < info.value.maximum < 300  # the largest vocabulary this corpus supports
    tok = Tokenizer.train(tiny, tmp_path / "tiny.model", vocab_size=300, hard_vocab_limit=False)
    assert tok.num_pieces < 300
    assert tok.vocab().first_sentinel_id == tok.num_pieces + 99
    assert Tokenizer.load(tmp_path / "tiny.model").model_proto == tok.model_proto


def test_train_is_reproducible_and_respects_max_lines(english_corpus):
    def train(**kw):
        return Tokenizer.train(english_corpus, vocab_size=200, num_threads=2, **kw).model_proto

    assert train() == train()
    assert train(max_lines=300) != train()


def test_builtin_tokenizer_trains_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACTOR_CACHE", str(tmp_path))
    path = builtin_tokenizer_path(8000)
    assert path.is_relative_to(tmp_path) and not path.exists()
    tok = builtin_tokenizer()
    assert tok.num_pieces == 8000 and tok.vocab_size == 8192
    assert path.is_file()
    again = builtin_tokenizer()
    assert again.model_proto == tok.model_proto
    text = "Return a new list containing all items from the iterable in ascending order."
    assert len(tok.encode(text)) < 20  # a real English vocabulary, not characters
    # a corrupt cache entry is retrained, not fatal
    path.write_bytes(b"not a model")
    assert builtin_tokenizer().num_pieces == 8000


def _hammer(path: str, payload: bytes, n: int) -> None:
    for _ in range(n):
        atomic_write_bytes(Path(path), payload)


def test_atomic_write_under_concurrency(tmp_path):
    path = tmp_path / "cache" / "model"
    payloads = [bytes([i]) * 200_000 for i in range(3)]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(path), p, 30)) for p in payloads]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            assert path.read_bytes() in payloads  # never a partial or mixed file
            seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert path.read_bytes() in payloads
    assert [p.name for p in path.parent.iterdir()] == ["model"]


def test_bos_id_comes_from_the_tokenizer(small_tokenizer, english_corpus):
    # spactor's (T5's) layout has no BOS; a SentencePiece model with one reports its id.
    assert small_tokenizer.bos_id is None and small_tokenizer.vocab().bos_id is None
    assert t5_vocab(32000).bos_id is None
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_corpus), model_writer=writer, vocab_size=200, pad_id=0, eos_id=1,
        unk_id=2, bos_id=3, minloglevel=2, num_threads=1,
    )
    tok = Tokenizer(writer.getvalue())
    assert tok.bos_id == 3 == tok.vocab().bos_id and tok.id_to_token(3) == "<s>"
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
