"""Text sources, tokenizer, packing and loading.

Importing any module of this package registers every built-in source: the ones in
``sources`` and those in modules of their own (pre-tokenised caches, weighted mixtures,
parquet, the installed packages' docs ``site_docs``), which import ``sources`` and so
cannot be imported by it.
"""

from spactor.data import mixture, parquet, prepared, site_docs, sources  # noqa: F401
