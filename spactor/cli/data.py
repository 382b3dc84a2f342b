"""``spactor data prepare [RECIPE] [key=value ...] --out DIR``: pre-tokenise a source.

Reads the recipe's data source (``data.source``, ``data.paths``, ...) once with its
tokenizer (``data.tokenizer``, or the built-in one) and writes a memory-mapped cache
(``tokens.bin``, ``index.npy``, ``meta.json``, ``spiece.model``: see
``spactor.data.prepared``). Train from it with
``data.source=prepared data.paths=[DIR] data.tokenizer=DIR/spiece.model``: the same
chunks as from the raw source, without tokenising at start-up or during the run.
Progress (documents read, records skipped by reason, tokens written, documents per
second) goes to stderr, the summary to stdout.

This module stays import-light (argparse only): ``spactor --help`` builds every parser.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="data tools: pre-tokenise a source into a cache")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser(
        "prepare",
        help="tokenise the configured data source once into a memory-mapped cache",
        description=__doc__.split("\n\n")[1].replace("``", "'"),
    )
    d.add_argument("args", nargs="*", metavar="[RECIPE|PATH] [key=value ...]")
    d.add_argument("--out", "-o", required=True, metavar="DIR", help="the cache directory to write")
    d.add_argument(
        "--force", action="store_true", help="replace DIR if it exists (once the new cache is complete)"
    )
    d.add_argument(
        "--block-docs",
        type=int,
        default=4096,
        metavar="N",
        help="documents tokenised per batch (default 4096)",
    )
    d.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    d.set_defaults(func=cmd_data_prepare)
    return p


def cmd_data_prepare(ns: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from spactor.config import QUICKSTART, load_config, split_recipe
    from spactor.data.prepared import prepare
    from spactor.data.sources import describe_skipped
    from spactor.errors import UsageError
    from spactor.train.batches import build_source, load_tokenizer

    if ns.block_docs < 1:
        raise UsageError(f"--block-docs must be >= 1, got {ns.block_docs}")
    recipe, overrides = split_recipe(ns.args)
    resolved = load_config(recipe or QUICKSTART, overrides)
    cfg = resolved.cfg.data
    if cfg.source == "prepared":
        raise UsageError("data.source=prepared is already tokenised; prepare the original source instead")
    out = Path(ns.out)
    if out.exists() and not ns.force:
        raise UsageError(f"--out {out} already exists; pass --force to replace it")
    tokenizer = load_tokenizer(cfg)
    source = build_source(cfg)
    config = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k in ("source", "paths", "text_field", "source_options")
    }
    stats = prepare(
        source,
        tokenizer,
        out,
        overwrite=ns.force,
        block_documents=ns.block_docs,
        progress=not ns.no_progress,
        source_config=config,
    )
    summary = {
        "out": str(stats.out_dir),
        "documents": stats.documents,
        "records": stats.records,
        "tokens": stats.tokens,
        "dtype": stats.dtype,
        "skipped": stats.skipped,
        "seconds": round(stats.seconds, 3),
        "docs_per_s": round(stats.docs_per_s, 1),
        "tokens_per_s": round(stats.tokens_per_s, 1),
    }
    if ns.json:
        print(json.dumps(summary))
        return 0
    print(
        f"wrote {stats.out_dir}: {stats.documents:,} documents, {stats.tokens:,} tokens ({stats.dtype}), "
        f"{describe_skipped(stats.skipped)}, in {stats.seconds:.1f}s "
        f"({stats.docs_per_s:,.0f} docs/s, {stats.tokens_per_s:,.0f} tokens/s)"
    )
    print(
        f"train from it with: data.source=prepared 'data.paths=[{stats.out_dir}]' "
        f"data.tokenizer={stats.out_dir / 'spiece.model'}"
    )
    return 0
