"""``data.backend=fairseq2``: the same batches as the default loader, through fairseq2.

fairseq2 0.8 pins torch 2.9.1, so these tests run in an environment of their own
(``.ci/fairseq2``); elsewhere they skip, except the one that checks the error a run
gets without fairseq2 (which skips where fairseq2 is installed).
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from spactor.data.fairseq2_backend import build_fairseq2_loader, fairseq2_available
from spactor.data.loader import build_loader, skipped_counts
from spactor.data.mixture import MixtureSource
from spactor.data.prepared import PreparedSource, prepare
from spactor.data.sources import DataError, JsonlSource, ListSource, TextSource

# .ci/fairseq2 sets SPACTOR_REQUIRE_FAIRSEQ2=1: there a broken install fails instead of skipping.
needs_fairseq2 = pytest.mark.skipif(
    not fairseq2_available() and not os.environ.get("SPACTOR_REQUIRE_FAIRSEQ2"),
    reason="fairseq2 is not importable here (it has an environment of its own: .ci/fairseq2)",
)


@pytest.fixture(scope="module")
def docs(english_corpus) -> list[str]:
    return [p.strip() for doc in english_corpus[:10] for p in doc.split("\n\n") if len(p.strip()) > 30][:60]


def take(loader, n):
    it = iter(loader)
    return [next(it)["original"] for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(fairseq2_available(), reason="fairseq2 is installed")
def test_without_fairseq2_the_backend_is_one_clear_error(docs, small_tokenizer):
    with pytest.raises(
        DataError, match=r"data.backend=fairseq2 needs fairseq2 .*pip install 'spactor\[fairseq2\]'"
    ):
        build_fairseq2_loader(ListSource(docs), small_tokenizer, 16, 2)


# The default loader's order no longer depends on ranks or workers (one global stream);
# this backend still shards documents by rank and worker, so the two agree on one rank
# without workers only.
@needs_fairseq2
@pytest.mark.parametrize("num_workers", [0])
@pytest.mark.parametrize("shuffle_window", [0, 8])
def test_train_batches_equal_the_default_loader(docs, small_tokenizer, num_workers, shuffle_window):
    kw = {"shuffle_window": shuffle_window, "seed": 3, "num_workers": num_workers, "validation_fraction": 0.1}
    default = take(build_loader(ListSource(docs), small_tokenizer, 24, 4, **kw), 40)  # several epochs
    assert same(take(build_fairseq2_loader(ListSource(docs), small_tokenizer, 24, 4, **kw), 40), default)


@needs_fairseq2
@pytest.mark.parametrize("num_workers", [0])
def test_validation_batches_equal_the_default_loader(docs, small_tokenizer, num_workers):
    kw = {"split": "validation", "validation_fraction": 0.3, "num_workers": num_workers}
    default = [b["original"] for b in build_loader(ListSource(docs), small_tokenizer, 8, 3, **kw)]
    got = [b["original"] for b in build_fairseq2_loader(ListSource(docs), small_tokenizer, 8, 3, **kw)]
    assert same(got, default) and got[-1].shape[0] <= 3  # the last partial batch is kept


@needs_fairseq2
def test_same_files_same_chunks(tmp_path, docs, small_tokenizer):
    """Text files, JSON lines with bad records, a prepared cache and a mixture of them."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(docs[:30]) + "\n")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": d}) if i % 7 else "{bad" for i, d in enumerate(docs)) + "\n"
    )
    prepare(JsonlSource([str(jsonl)]), small_tokenizer, tmp_path / "cache")

    def sources():
        yield lambda: TextSource([str(text)])
        yield lambda: JsonlSource([str(jsonl)])
        yield lambda: PreparedSource([str(tmp_path / "cache")])
        yield lambda: MixtureSource(
            [TextSource([str(text)]), PreparedSource([str(tmp_path / "cache")])], [2, 1]
        )

    for make in sources():
        kw = {"shuffle_window": 16, "seed": 11, "validation_fraction": 0.05}
        default = build_loader(make(), small_tokenizer, 32, 2, **kw)
        backend = build_fairseq2_loader(make(), small_tokenizer, 32, 2, **kw)
        assert same(take(backend, 30), take(default, 30))
        # Past the first epoch both have counted every skipped record once (before, the
        # counts may differ by the documents each has read ahead).
        epoch = sum(len(small_tokenizer.encode(d)) for d in docs) // 64 + 1
        rest_default, rest_backend = take(default, 2 * epoch), take(backend, 2 * epoch)
        assert same(rest_backend, rest_default)
        assert skipped_counts(backend) == skipped_counts(default)


@needs_fairseq2
@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume(docs, small_tokenizer, num_workers):
    def make():
        return build_fairseq2_loader(
            ListSource(docs), small_tokenizer, 24, 4, shuffle_window=8, seed=3, num_workers=num_workers
        )

    loader = make()
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = pickle.loads(pickle.dumps(loader.state_dict()))
    expected = [next(it)["original"] for _ in range(15)]
    resumed = make()
    resumed.load_state_dict(state)
    assert same(take(resumed, 15), expected)
    with pytest.raises(DataError, match="same world size and num_workers"):
        build_fairseq2_loader(
            ListSource(docs), small_tokenizer, 24, 4, num_workers=num_workers + 2
        ).load_state_dict(state)
    default_state = build_loader(ListSource(docs), small_tokenizer, 24, 4).state_dict()
    with pytest.raises(DataError, match="saved by the default backend"):
        make().load_state_dict(default_state)


@needs_fairseq2
def test_run_pipeline_uses_the_backend(docs, small_tokenizer):
    from spactor.config import DataConfig
    from spactor.train.batches import DataPipeline

    batches = {}
    for backend in ("default", "fairseq2"):
        cfg = DataConfig(source="text", backend=backend, validation_fraction=0.1)
        pipeline = DataPipeline(cfg, small_tokenizer, ListSource(docs), torch.device("cpu"), seed=5)
        pipeline.start(raw_length=20, batch_size=4)
        it = pipeline.train_batches()
        batches[backend] = [next(it)["original"] for _ in range(10)]
        batches[backend + "/val"] = [b["original"] for b in pipeline.validation_batches()]
        assert pipeline.skipped_counts()["invalid_json"] == 0
    assert same(batches["fairseq2"], batches["default"])
    assert same(batches["fairseq2/val"], batches["default/val"])
