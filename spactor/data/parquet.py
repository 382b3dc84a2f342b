"""The ``parquet`` source: one document per row of a text column (needs ``pyarrow``).

Hugging Face datasets and many web corpora ship as Parquet. Files are read row group by
row group, only the ``text_field`` column, and only when the reader gets there; the
document number is the row's position over all files, so a resumed stream skips whole
row groups from the file metadata without reading them, and a shard converts only its
own rows to Python strings.

Skipped and counted like JSON lines (``spactor.data.sources``): a row whose value is
null (or in a file without the column) is ``missing_field``, one that is not a string
``non_string_field``, a blank one
``empty_text``, a binary value that is not UTF-8 ``invalid_utf8``, a longer one than
``max_document_chars`` ``too_long``; a file with no rows is ``empty_file`` and one
pyarrow cannot read (not Parquet, truncated) ``corrupt_file``.

``pyarrow`` is optional (``pip install 'spactor[parquet]'``); without it, building the
source is a one-line ``DataError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spactor.data.sources import (
    _SURROGATE,
    DEFAULT_MAX_DOCUMENT_CHARS,
    DataError,
    Source,
    _check_limit,
    _describe_files,
    _owns,
    resolve_paths,
)
from spactor.registry import SOURCES

READ_BATCH_ROWS = 8192  # rows converted per step inside a row group


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "source 'parquet' needs pyarrow, which is not installed: pip install pyarrow (or 'spactor[parquet]')"
        ) from None
    return pa, pq


@dataclass
class ParquetSourceConfig:
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS  # longer texts: skipped (too_long)


class ParquetSource(Source):
    """Parquet files; each row's ``text_field`` is a document (see the module docstring)."""

    name = "parquet"
    SKIP_REASONS = ("missing_field", "non_string_field", "empty_text")

    def __init__(
        self,
        paths: list[str],
        text_field: str = "text",
        max_document_chars: int | None = DEFAULT_MAX_DOCUMENT_CHARS,
    ) -> None:
        _pyarrow()  # fail at build time, in one line, when pyarrow is missing
        self.files = resolve_paths(paths, self.name)
        self.text_field = text_field
        self.max_document_chars = _check_limit(max_document_chars, self.name)
        self.skipped = {reason: 0 for reason in self.SKIP_REASONS}

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, str | None]]:
        pa, pq = _pyarrow()
        index = 0
        for path in self.files:
            try:
                pf = pq.ParquetFile(path)
                rows = pf.metadata.num_rows
            except (pa.ArrowException, OSError) as e:
                if _owns(index, start, shard, num_shards):
                    self._skip("corrupt_file", f"{path} ({e})")
                continue
            if rows == 0:
                if _owns(index, start, shard, num_shards):
                    self._skip("empty_file", f"{path} (no rows)")
                continue
            first, end = index, index + rows
            if end <= start:  # wholly before the resume point: nothing read
                index = end
                continue
            position = [first]  # the next row to read, kept current for the error below
            try:
                yield from self._file_records(pf, path, first, position, start, shard, num_shards)
            except (pa.ArrowException, OSError) as e:
                at = max(position[0], start)
                if _owns(at, start, shard, num_shards):
                    self._skip(
                        "corrupt_file", f"{path} after row {position[0] - first} ({e}); the rest of it"
                    )
            index = end

    def _file_records(
        self, pf: Any, path: Path, first: int, position: list[int], start: int, shard: int, num_shards: int
    ) -> Iterator[tuple[int, str | None]]:
        rows = pf.metadata.num_rows
        if self.text_field not in pf.schema_arrow.names:
            for index in range(max(first, start), first + rows):
                if _owns(index, start, shard, num_shards):
                    self._skip(
                        "missing_field", f"{path}, row {index - first} (no column '{self.text_field}')"
                    )
                    yield index, None
            return
        # Row groups that end before ``start`` are skipped from the metadata, unread.
        groups: list[int] = []
        index = first
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if groups or index + n > start:
                groups.append(g)
            else:
                index += n
        position[0] = index
        for batch in pf.iter_batches(
            batch_size=READ_BATCH_ROWS, row_groups=groups, columns=[self.text_field]
        ):
            n = batch.num_rows
            lo = max(index, start)
            lo += (shard - lo) % num_shards  # this shard's rows: lo, lo + num_shards, ...
            picks = np.arange(lo - index, n, num_shards)
            if len(picks):
                values = batch.column(0).take(picks).to_pylist()
                for pos, value in zip(picks.tolist(), values):
                    yield index + pos, self._check(value, path, index + pos - first)
            index += n
            position[0] = index

    def _check(self, value: Any, path: Path, row: int) -> str | None:
        reason = None
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                reason = "invalid_utf8"
        if reason is None:
            if value is None:
                reason = "missing_field"
            elif not isinstance(value, str):  # a numeric or nested column
                reason = "non_string_field"
            elif not value.strip():
                reason = "empty_text"
            elif _SURROGATE.search(value):
                reason = "invalid_utf8"
        if reason is not None:
            self._skip(reason, f"{path}, row {row}")
            return None
        return value

    def describe(self) -> str:
        return f"parquet: {_describe_files(self.files)} (column '{self.text_field}')" + self._skipped_suffix()


@SOURCES.register("parquet", ParquetSourceConfig)
def parquet_source(cfg: ParquetSourceConfig) -> ParquetSource:
    """Parquet files (needs pyarrow), one document per row, text in column ``text_field``."""
    return ParquetSource(list(cfg.paths), cfg.text_field, cfg.max_document_chars)
