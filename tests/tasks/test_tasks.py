"""Downstream tasks: metrics, the built-in pydoc tasks' splits, the jsonl task."""

from __future__ import annotations

import json

import pytest

from spactor.config import ConfigError
from spactor.plugins import load_plugins
from spactor.registry import TASKS, RegistryError
from spactor.tasks import Example, Task, build_task
from spactor.tasks.metrics import accuracy, exact_match, f1, lcs_length, rouge_l

load_plugins()


def test_metrics_known_values():
    assert accuracy(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    assert exact_match(["The Cat!", "dog"], ["cat", "dogs"]) == 0.5  # articles, case, punctuation dropped
    # get_value vs get_item: tokens {get, value} vs {get, item}: P = R = 1/2
    assert f1(["get_value"], ["get_item"]) == pytest.approx(0.5)
    assert f1(["x"], ["y"]) == 0.0 and f1([""], [""]) == 1.0
    assert lcs_length("abcbdab", "bdcaba") == 4
    # LCS of (w x y z) and (w y z q) is w y z: P = R = 3/4
    assert rouge_l(["w x y z"], ["w y z q"]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_task_registry_lists_tasks():
    assert {"jsonl", "minimal_pairs", "pydoc_cloze", "pydoc_module", "pydoc_name", "pydoc_pairs"} <= set(TASKS.names())
    with pytest.raises(RegistryError,
                       match="unknown task 'nope'; valid: jsonl, minimal_pairs, pydoc_cloze, pydoc_module, pydoc_name, pydoc_pairs"):
        build_task("nope")
    with pytest.raises(ConfigError, match="num_modulez"):
        build_task("pydoc_module", {"num_modulez": 3})


@pytest.mark.parametrize("name", ["pydoc_module", "pydoc_name"])
def test_pydoc_splits_are_fixed_disjoint_and_held_out_of_pretraining(name):
    from spactor.data.sources import builtin_documents, pretraining_documents

    task, again = build_task(name), build_task(name)
    assert task.train == again.train and task.test == again.test  # deterministic
    train_inputs, test_inputs = {e.input for e in task.train}, {e.input for e in task.test}
    assert not train_inputs & test_inputs
    assert len(train_inputs) == len(task.train) and len(test_inputs) == len(task.test)  # no duplicates
    pretraining = set(pretraining_documents())
    assert not (train_inputs | test_inputs) & pretraining  # pre-training never sees them
    assert (train_inputs | test_inputs) <= set(builtin_documents())  # they are corpus documents
    assert len(task.train) > 300 and len(task.test) > 100


def test_pydoc_module_labels_come_from_the_corpus_structure():
    from spactor.data.sources import task_docstring_records

    task = build_task("pydoc_module")
    assert task.kind == "classification" and len(task.labels) == 8
    where: dict[str, str] = {}
    for r in task_docstring_records():
        where.setdefault(r.text, r.module)  # a text found in two modules is the first one's example
    assert all(where[e.input] == e.target for e in task.train + task.test)
    assert task.chance_level() == 1 / 8
    assert 1 / 8 < task.majority_baseline() < 0.5


def test_pydoc_name_targets_are_public_names():
    task = build_task("pydoc_name")
    assert task.kind == "generation" and task.metric == "f1"
    assert all(e.target.isidentifier() and not e.target.startswith("_") for e in task.train + task.test)


def test_pydoc_cloze_blanks_one_word_of_a_held_out_docstring_on_its_split_side():
    from spactor.data.pydoc_tasks import CLOZE_MARKER, cloze_example, is_test, unique_records
    from spactor.data.sources import pretraining_documents, task_docstring_records

    task, again = build_task("pydoc_cloze"), build_task("pydoc_cloze")
    assert task.kind == "generation" and task.metric == "exact_match"
    assert task.train == again.train and task.test == again.test  # deterministic
    train_inputs, test_inputs = {e.input for e in task.train}, {e.input for e in task.test}
    assert not train_inputs & test_inputs
    assert len(train_inputs) == len(task.train) and len(test_inputs) == len(task.test)
    assert len(task.train) > 300 and len(task.test) > 100
    # Each example is the cloze of one held-out docstring, on the side the other pydoc
    # tasks put that docstring; pre-training never read the docstring.
    source = {}
    for r in unique_records(task_docstring_records()):
        example = cloze_example(r.text)
        if example is not None:
            source.setdefault(example.input, r.text)
    pretraining = set(pretraining_documents())
    for e, side in [(e, False) for e in task.train] + [(e, True) for e in task.test]:
        text = source[e.input]
        assert is_test(text) == side and text not in pretraining
        assert e.input.count(CLOZE_MARKER) == 1 and len(e.target) >= 4 and e.target.isalpha()
        assert text.startswith(e.input.replace(CLOZE_MARKER, e.target))  # the word put back: the text
    assert task.majority_baseline() < 0.05


def test_cloze_example_picks_a_middle_word():
    from spactor.data.pydoc_tasks import CLOZE_MARKER, cloze_example

    text = "one two three four alpha beta gamma delta five six seven eight"
    example = cloze_example(text)
    assert example is not None and example == cloze_example(text)
    assert example.target in {"four", "alpha", "beta", "gamma", "delta", "five"}  # words 3..8 of 12
    assert example.input == text.replace(example.target, CLOZE_MARKER, 1)
    assert cloze_example("too short to blank") is None
    assert cloze_example("a b c d e f g h i j k l") is None  # no word of 4 letters
    long = " ".join(f"word{i} longword" for i in range(40))
    assert len(cloze_example(long).input.split()) == 32  # cut at max_words


def test_builtin_source_without_the_holdout_is_the_whole_corpus():
    from spactor.data.sources import BuiltinSource, builtin_documents

    assert BuiltinSource(holdout_tasks=False).docs == builtin_documents()
    assert len(BuiltinSource().docs) < len(builtin_documents())


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_classification_and_text_to_text(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"t": "good film", "y": 1}, {"t": "bad film", "y": 0}])
    test = _write(tmp_path / "test.jsonl", [{"t": "fine film", "y": 1}])
    task = build_task("jsonl", {"train": train, "test": test, "text_field": "t", "label_field": "y"})
    assert task.kind == "classification" and task.metric == "accuracy" and task.labels == ["0", "1"]
    assert task.score(["1"]) == 1.0
    t2t = build_task("jsonl", {"train": train, "test": test, "input_field": "t", "target_field": "y",
                               "metric": "rouge_l", "name": "mine"})
    assert t2t.kind == "generation" and t2t.name == "mine" and t2t.metric == "rouge_l"


def test_jsonl_bad_input_names_the_problem(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"t": "x"}])
    with pytest.raises(ValueError, match="either input_field and target_field"):
        build_task("jsonl", {"train": train, "test": train})
    with pytest.raises(ValueError, match=r"train.jsonl:1 has no field 'y'"):
        build_task("jsonl", {"train": train, "test": train, "text_field": "t", "label_field": "y"})
    with pytest.raises(ValueError, match="no such file"):
        build_task("jsonl", {"train": str(tmp_path / "nope.jsonl"), "test": train, "text_field": "t",
                             "label_field": "y"})
    with pytest.raises(ValueError, match="unknown metric"):
        build_task("jsonl", {"train": train, "test": train, "input_field": "t", "target_field": "t",
                             "metric": "bleu"})


def test_jsonl_task_names_its_files_and_results_of_other_data_go_elsewhere(tmp_path):
    import hashlib

    train = _write(tmp_path / "train.jsonl", [{"t": "good film", "y": 1}, {"t": "bad film", "y": 0}])
    test = _write(tmp_path / "test.jsonl", [{"t": "fine film", "y": 1}])
    options = {"train": train, "test": test, "text_field": "t", "label_field": "y"}
    task = build_task("jsonl", options)
    assert task.files == [
        {"split": split, "path": str((tmp_path / f"{split}.jsonl").resolve()),
         "sha256": hashlib.sha256((tmp_path / f"{split}.jsonl").read_bytes()).hexdigest()}
        for split in ("train", "test")
    ]
    assert task.name == "jsonl" and task.results.startswith("jsonl-") and len(task.results) == len("jsonl-") + 12
    other = _write(tmp_path / "other.jsonl", [{"t": "dull film", "y": 0}])
    assert build_task("jsonl", {**options, "test": other}).results != task.results  # other data
    assert build_task("jsonl", {**options, "metric": "f1"}).results != task.results
    (tmp_path / "copy").mkdir()
    same = _write(tmp_path / "copy" / "test.jsonl", [{"t": "fine film", "y": 1}])
    assert build_task("jsonl", {**options, "test": same}).results == task.results  # the same bytes
    assert build_task("jsonl", {**options, "name": "mine"}).results == "mine" + task.results[len("jsonl"):]
    builtin = Task("pydoc_module", "classification", "accuracy", [Example("a", "b")], [Example("a", "b")])
    assert builtin.results == "pydoc_module" and builtin.files == []  # a built-in task: its name


def _refused(tmp_path, lines: bytes, **fields) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(lines)
    good = _write(tmp_path / "good.jsonl", [{"t": "a", "y": "b", "q": "c"}])
    with pytest.raises(ValueError) as err:
        build_task("jsonl", {"train": good, "test": str(path), **(fields or {"text_field": "t", "label_field": "y"})})
    assert "\n" not in str(err.value)
    return str(err.value)


def test_jsonl_invalid_utf8_is_reported_with_file_and_line(tmp_path):
    message = _refused(tmp_path, b'{"t": "fine", "y": 1}\n{"t": "caf\xe9", "y": 1}\n')
    assert f"{tmp_path / 'bad.jsonl'}:2 is not valid UTF-8 (byte 11 of the line is 0xe9)" in message
    # a BOM is not an error (editors write it)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"t": "fine", "y": 1}\n')
    assert len(build_task("jsonl", {"train": str(path), "test": str(path), "text_field": "t",
                                    "label_field": "y"}).test) == 1


def test_jsonl_a_number_as_text_or_a_list_as_label_is_refused(tmp_path):
    where = tmp_path / "bad.jsonl"
    message = _refused(tmp_path, b'{"t": "fine", "y": 1}\n{"t": 42, "y": 1}\n')
    assert f"{where}:2: field 't' must be a string, got a number (42)" in message
    message = _refused(tmp_path, b'{"t": "fine", "y": ["pos", "neg"]}\n')
    assert f"{where}:1: field 'y' must be a string or a number, got a list ([\"pos\", \"neg\"])" in message
    message = _refused(tmp_path, b'{"q": {"a": 1}, "y": "x"}\n', input_field="q", target_field="y")
    assert f"{where}:1: field 'q' must be a string, got an object" in message


def test_jsonl_a_directory_is_reported_as_one(tmp_path):
    good = _write(tmp_path / "good.jsonl", [{"t": "a", "y": "b"}])
    with pytest.raises(ValueError, match=f"task jsonl: {tmp_path} is a directory, not a .jsonl file"):
        build_task("jsonl", {"train": str(tmp_path), "test": good, "text_field": "t", "label_field": "y"})
