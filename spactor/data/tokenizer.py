"""SentencePiece tokenizer with T5's id conventions.

Ids, for a model with ``n`` SentencePiece pieces (T5: n = 32,000):

* ``0`` pad, ``1`` EOS (``</s>``), ``2`` unk: the pieces a T5-style model is trained with
  (``pad_id=0, eos_id=1, unk_id=2, bos_id=-1``);
* ``n .. n+99``: 100 sentinels appended on top, counting *down*: ``<extra_id_k>`` is
  ``n + 99 - k`` (T5: extra_id_0 = 32099, extra_id_99 = 32000, exactly like T5/HF);
* ``n + 100``: ``[M]``, the token-level mask used by MLM/RTD objectives. In T5's
  32,128-row embedding this is one of the padding rows, so T5 checkpoints load unchanged;
* embedding rows: ``n + 101`` rounded up to a multiple of 128 (32,000 → 32,128).

The serialized model proto is kept in memory so a run can copy its tokenizer into the
run directory (``save``) and so the tokenizer pickles into DataLoader workers.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from spactor.vocab import MODE_TOKENS, Vocab

NUM_SENTINELS = 100
EMBEDDING_MULTIPLE = 128  # rows padded like T5's 32,128 (tensor-core friendly)
MASK_TOKEN = "[M]"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁": the piece starts a new word


def sentinel_token(k: int) -> str:
    return f"<extra_id_{k}>"


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def t5_vocab(
    num_pieces: int, pad_id: int = 0, eos_id: int = 1, unk_id: int = 2, bos_id: int | None = None
) -> Vocab:
    """The id layout T5 uses on top of a ``num_pieces``-piece SentencePiece model;
    ``bos_id``: the model's BOS piece, if it has one (SentencePiece: ``bos_id >= 0``)."""
    return Vocab(
        size=round_up(num_pieces + NUM_SENTINELS + 1, EMBEDDING_MULTIPLE),
        pad_id=pad_id,
        eos_id=eos_id,
        unk_id=unk_id,
        num_sentinels=NUM_SENTINELS,
        first_sentinel_id=num_pieces + NUM_SENTINELS - 1,
        mask_id=num_pieces + NUM_SENTINELS,
        bos_id=bos_id,
    )


class VocabularyTooLarge(ValueError):
    """The corpus has fewer distinct pieces than the vocabulary asked for."""

    def __init__(self, requested: int, maximum: int) -> None:
        super().__init__(
            f"vocabulary size {requested} is too large for this corpus: it supports at most {maximum}"
        )
        self.requested = requested
        self.maximum = maximum


class TokenizerFileError(ValueError):
    """A model that is not a usable SentencePiece tokenizer. ``reason`` says what is wrong
    without the name, so a caller that knows where the file comes from (a run directory's
    own ``spiece.model``) can say so instead; ``hint`` is how to make a new one."""

    def __init__(self, name: str, reason: str, hint: str = "") -> None:
        super().__init__(f"{name}: {reason}" + (f"; {hint}" if hint else ""))
        self.reason = reason


class Tokenizer:
    """A SentencePiece model plus T5's sentinels and an ``[M]`` mask token."""

    def __init__(self, model_proto: bytes, name: str = "") -> None:
        self._proto = bytes(model_proto)
        self.name = name
        # sentencepiece accepts an empty proto and reports pad_id=-1 afterwards, so an
        # empty file would read as "a model trained without a pad piece"
        if not self._proto:
            raise TokenizerFileError(name or "tokenizer", "empty (0 bytes), not a SentencePiece model")
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError:  # sentencepiece's C++ error says only which check failed
            raise TokenizerFileError(
                name or "tokenizer", "not a SentencePiece model (the file does not parse as one)"
            ) from None
        # The rest of spactor pads with pad_id and separates documents with eos_id; a
        # model trained with SentencePiece's defaults (pad_id=-1) cannot do either.
        if self._sp.pad_id() < 0 or self._sp.eos_id() < 0:
            raise TokenizerFileError(
                f"tokenizer {name or '(in memory)'}",
                f"has no pad or EOS piece (pad_id={self._sp.pad_id()}, eos_id={self._sp.eos_id()})",
                "train it with pad_id=0, eos_id=1, unk_id=2, bos_id=-1 (Tokenizer.train does)",
            )
        bos = self._sp.bos_id()
        self._vocab = t5_vocab(self.num_pieces, self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id(),
                               bos if bos >= 0 else None)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load any SentencePiece ``.model`` file (T5's own ``spiece.model`` included)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        return cls(path.read_bytes(), name=str(path))

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        out_path: str | os.PathLike[str] | None = None,
        vocab_size: int = 32000,
        model_type: str = "unigram",
        *,
        input_sentence_size: int = 2_000_000,
        max_lines: int | None = None,
        character_coverage: float = 0.9995,
        byte_fallback: bool = False,
        hard_vocab_limit: bool = True,
        num_threads: int | None = None,
        seed: int = 0,
        verbose: bool = False,
        **trainer_options: Any,
    ) -> Tokenizer:
        """Train a SentencePiece model with T5's special ids on ``texts`` (documents).

        Documents are fed to the trainer one line at a time: SentencePiece drops
        "sentences" longer than ``max_sentence_length`` (4,192 bytes) and cannot
        represent a newline anyway (normalised to a space), so lines lose nothing.

        ``input_sentence_size`` caps how many lines the trainer samples (with
        ``shuffle_input_sentence``), which bounds its memory and time; it still reads
        the whole iterator to sample from, so on a corpus like C4 also pass
        ``max_lines`` (e.g. 10x ``input_sentence_size``) to stop reading early.
        ``hard_vocab_limit=False`` lets a corpus too small to support ``vocab_size``
        pieces train anyway (the model then has fewer pieces); all ids here derive from
        the actual piece count, so that is safe. It stays True by default so that a
        32k tokenizer is exactly 32k, like T5's.

        The model is reproducible for a fixed ``num_threads`` (and ``seed``), but differs
        between thread counts: SentencePiece splits its floating-point sums per thread.
        """
        lines = itertools.islice(_training_lines(texts), max_lines)
        writer = io.BytesIO()
        # The sampler behind shuffle_input_sentence uses SentencePiece's global RNG.
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines,
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                character_coverage=character_coverage,
                byte_fallback=byte_fallback,
                hard_vocab_limit=hard_vocab_limit,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=0 if verbose else 2,
                **trainer_options,
            )
        except RuntimeError as e:
            too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", str(e))
            if too_high:
                raise VocabularyTooLarge(int(too_high.group(1)), int(too_high.group(2))) from None
            raise
        tok = cls(writer.getvalue(), name=str(out_path) if out_path else f"trained-{model_type}-{vocab_size}")
        if out_path is not None:
            tok.save(out_path)
        return tok

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ``.model`` file atomically (temp file + rename)."""
        atomic_write_bytes(Path(path), self._proto)

    @property
    def model_proto(self) -> bytes:
        return self._proto

    # -- pickling (DataLoader workers): the C++ processor is rebuilt from the proto ----
    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._proto, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"], state["name"])  # type: ignore[misc]

    # -- sizes and ids ------------------------------------------------------------------
    @property
    def num_pieces(self) -> int:
        """SentencePiece pieces (32,000 for T5), without sentinels/[M]/padding rows."""
        return self._sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Embedding rows: pieces + 100 sentinels + [M], rounded up to 128."""
        return self._vocab.size

    def vocab(self) -> Vocab:
        return self._vocab

    @property
    def pad_id(self) -> int:
        return self._vocab.pad_id

    @property
    def eos_id(self) -> int:
        return self._vocab.eos_id

    @property
    def unk_id(self) -> int:
        return self._vocab.unk_id

    @property
    def bos_id(self) -> int | None:
        """The BOS piece's id, or None (spactor's tokenizers, like T5's, have none)."""
        return self._vocab.bos_id

    @property
    def mask_id(self) -> int:
        return self._vocab.mask_id

    def sentinel_id(self, k: int) -> int:
        if not 0 <= k < NUM_SENTINELS:
            raise ValueError(f"sentinel index {k} out of range [0, {NUM_SENTINELS})")
        return self._vocab.sentinel_id(k)

    def id_to_token(self, i: int) -> str:
        """The piece for ``i``, or ``<extra_id_k>`` / ``[M]`` / ``<unused_i>`` above the pieces."""
        n = self.num_pieces
        if 0 <= i < n:
            return self._sp.id_to_piece(i)
        if n <= i < n + NUM_SENTINELS:
            return sentinel_token(n + NUM_SENTINELS - 1 - i)
        if i == self.mask_id:
            return MASK_TOKEN
        if self.mask_id < i <= self.mask_id + len(MODE_TOKENS) and i < self.vocab_size:
            return MODE_TOKENS[i - self.mask_id - 1]  # UL2's [R] / [S] / [X]
        if n + NUM_SENTINELS < i < self.vocab_size:
            return f"<unused_{i}>"  # embedding padding rows: never produced by encode
        raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")

    # -- encode / decode ----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without EOS (the packer adds EOS between documents)."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(
        self, texts: Sequence[str], add_eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """Encode many texts in one call; SentencePiece spreads them over ``num_threads``
        C++ threads without the GIL (-1: all cores). DataLoader workers should pass 1."""
        return self._sp.encode(list(texts), out_type=int, add_eos=add_eos, num_threads=num_threads)

    def decode(self, ids: Iterable[int] | Any, show_special: bool = False) -> str:
        """Text of ``ids``; sentinels render as ``<extra_id_k>`` and the mask as ``[M]``.

        Nothing stops decoding: EOS and pad are skipped (SentencePiece control pieces),
        or shown as ``</s>`` / ``<pad>`` with ``show_special=True``.
        """
        if hasattr(ids, "tolist"):  # torch / numpy
            ids = ids.tolist()
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if 0 <= i < self.num_pieces and not (show_special and i in (self.eos_id, self.pad_id)):
                run.append(i)
                continue
            self._flush(run, out)
            if i == self.eos_id:
                out.append(EOS_TOKEN)
            elif i == self.pad_id:
                out.append(PAD_TOKEN)
            else:
                out.append(self.id_to_token(i))
        self._flush(run, out)
        return "".join(out)

    def _flush(self, run: list[int], out: list[str]) -> None:
        """Decode a run of ordinary pieces. SentencePiece drops the leading space of what
        it decodes; keep it when the run follows other output and starts a new word, so
        ``▁cat <extra_id_0> ▁sat`` reads ``cat<extra_id_0> sat`` (as HF's T5 tokenizer)."""
        if not run:
            return
        text = self._sp.decode(run)
        first = next((i for i in run if not self._sp.is_control(i)), None)
        if out and first is not None and self._sp.id_to_piece(first).startswith(WORD_BOUNDARY):
            text = " " + text
        out.append(text)
        run.clear()

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, pieces={self.num_pieces}, rows={self.vocab_size})"


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line:
                yield line


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file: concurrent
    writers each write a private temp file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp's file is private (0600); the result is ordinary data, as open() makes it
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
