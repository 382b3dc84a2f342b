"""``spactor`` command line: train, preview, components, tokenizer, flops, export, plot,
evaluate, study."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from spactor.config import QUICKSTART, ConfigError, load_config, recipe_names, split_recipe
    from spactor.errors import UsageError
    from spactor.plugins import load_plugins
    from spactor.registry import ALL_REGISTRIES, RegistryError
except KeyboardInterrupt:  # Ctrl-C while the CLI itself is still importing: no traceback
    sys.stderr.write("spactor: interrupted\n")
    raise SystemExit(130) from None

# --------------------------------------------------------------------------- commands


def load_saved_config(saved: Path, overrides: list[str]) -> Any:
    """A run's own config.yaml with resume overrides. A key this version does not know in
    the file itself means the run was written by another spactor version: say that, not
    just the key (an unknown key in the overrides is reported as the override it is)."""
    try:
        load_config(str(saved), [], saved_run=True)
    except ConfigError as e:
        if str(e).startswith("unknown config key"):
            raise ConfigError(f"--resume {saved.parent}: its config.yaml was written by a spactor version "
                              f"with different options and cannot be resumed by this one ({e})") from None
        # Any other problem is reported by the load with the overrides (one may be its fix).
    return load_config(str(saved), overrides, saved_run=True)


def cmd_train(ns: argparse.Namespace) -> int:
    from spactor.train.parallel import shutdown_distributed
    from spactor.train.loop import train

    recipe, overrides = split_recipe(ns.args)
    if ns.resume is not None:
        run_dir = Path(ns.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--resume {run_dir}: no config.yaml there (is it a spactor run directory?)")
        if recipe is not None:
            raise UsageError("--resume takes the recipe from the run directory; pass only key=value overrides")
        resolved = load_saved_config(saved, overrides)
        resolved.recipe = _saved_recipe_name(run_dir)
    else:
        resolved = load_config(recipe or QUICKSTART, overrides)
    check_run_dir(Path(ns.resume) if ns.resume else Path(resolved.cfg.run.dir or "runs"),
                  "--resume" if ns.resume else "run.dir")
    downstream = None
    if resolved.cfg.trainer.downstream_every:  # the evaluation layer scores the checkpoints
        from spactor.evaluation.downstream import downstream_scores as downstream
    try:
        result = train(resolved, resume_dir=ns.resume, downstream=downstream)
        if not result.preempted:
            _complete_on_sigterm()
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(result), flush=True)
        if result.preempted:
            print(f"stopped by {result.preempted} after step {result.steps} and checkpointed; "
                  f"resume with: spactor train --resume {result.run_dir}", flush=True)
        elif resolved.cfg.run.plot:
            print(plot_finished_run(result.run_dir), flush=True)
    return 130 if result.preempted == "SIGINT" else 0  # Ctrl-C exits as interrupted, checkpointed


def _complete_on_sigterm() -> None:
    """The run is complete (its last checkpoint written): a SIGTERM from here on, while
    the summary and plot are written or the process winds down, must not turn its exit
    into 143 (a kill, to a scheduler). Finish as usual and exit 0."""
    if threading.current_thread() is not threading.main_thread():
        return

    def complete(signum: int, frame: Any) -> None:
        print("SIGTERM after the run completed: finishing (the run is complete)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, complete)


def plot_finished_run(run_dir: Path) -> str:
    """``run.plot=true``: draw the run's curves beside its metrics and say where."""
    from spactor.tools.plot import plot_runs

    out = run_dir / "curves.png"
    try:
        plot_runs([run_dir], out, x="flops", smooth=0.6)
    except ValueError:  # no FLOPs fields (runtime.count_flops=false): plot against steps
        try:
            plot_runs([run_dir], out, x="steps", smooth=0.6)
        except ValueError as e:
            return f"no plot: {e}"
    except ImportError as e:
        return f"no plot: {e}"
    return (f"loss curves: {out}\n"
            f"compare runs at equal compute: spactor plot {run_dir} OTHER_RUN --x flops -o compare.png")


def _saved_recipe_name(run_dir: Path) -> str:
    return run_dir.name


def summary(result: Any) -> str:
    losses = result.losses
    lines = [f"run directory: {result.run_dir}"]
    if losses:
        window = max(1, min(10, len(losses) // 5))
        first = sum(losses[:window]) / window
        last = sum(losses[-window:]) / window
        lines.append(
            f"steps {result.start_step + 1}-{result.steps}: loss {first:.3f} -> {last:.3f} "
            f"(mean of first/last {window} steps) in {result.elapsed_s:.0f}s, "
            f"{result.tokens_seen:,} tokens seen"
        )
    for key, value in sorted(result.val.items()):
        lines.append(f"{key}: {value:.4f}")
    if any(result.skipped.values()):
        from spactor.data.sources import describe_skipped

        train = {k: v for k, v in result.skipped.items() if not k.startswith("val/")}
        val = {k[len("val/"):]: v for k, v in result.skipped.items() if k.startswith("val/")}
        said = [describe_skipped(train)] if any(train.values()) else []
        if any(val.values()):
            said.append(f"validation {describe_skipped(val)}")
        lines.append(f"data: {'; '.join(said)}")
    from spactor.checkpoint_layout import checkpoints_dir

    checkpoints = checkpoints_dir(result.run_dir)
    lines.append(f"metrics: {result.run_dir / 'metrics.jsonl'}; checkpoints: {checkpoints}")
    return "\n".join(lines)


def cmd_preview(ns: argparse.Namespace) -> int:
    from spactor.tools.preview import preview

    if ns.n < 1:
        raise UsageError(f"--n {ns.n}: the number of examples must be at least 1")
    recipe, overrides = split_recipe(ns.args)
    resolved = load_config(recipe or QUICKSTART, overrides)
    for line in preview(resolved, n=ns.n, as_json=ns.json):
        print(line)
    return 0


def cmd_components(ns: argparse.Namespace) -> int:
    for kind, registry in ALL_REGISTRIES.items():
        if ns.kind and kind != ns.kind:
            continue
        print(f"{kind}:")
        for entry in registry:
            print(f"  {entry.name}" + (f" — {entry.help}" if entry.help else ""))
            for f in dataclasses.fields(entry.config_cls):
                print(f"      {f.name} = {_default_repr(f)}")
    print("recipes: " + ", ".join(recipe_names()))
    return 0


def _default_repr(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "(required)"


def cmd_tokenizer_train(ns: argparse.Namespace) -> int:
    from spactor.train.batches import train_tokenizer_from_config

    if ns.vocab_size < 1:
        raise UsageError(f"--vocab-size {ns.vocab_size}: must be a positive number of pieces")
    recipe, overrides = split_recipe(ns.args)
    resolved = load_config(recipe or QUICKSTART, overrides)
    out = train_tokenizer_from_config(resolved, Path(ns.out), vocab_size=ns.vocab_size)
    print(f"wrote {out}")
    return 0


SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def tokenizer_info(path: Path, text: str = SAMPLE_TEXT) -> dict[str, Any]:
    """Sizes, special ids, sentinel range and a sample encoding of a SentencePiece model
    (a ``.model`` file, or a run/export directory holding ``spiece.model``)."""
    from spactor.data.tokenizer import MASK_TOKEN, NUM_SENTINELS, Tokenizer, sentinel_token

    model = path / "spiece.model" if path.is_dir() else path
    if not model.is_file():
        raise UsageError(
            f"{path}: no SentencePiece model there (a .model file, or a directory with spiece.model)"
        )
    try:
        tok = Tokenizer.load(model)
    except (RuntimeError, ValueError) as e:  # sentencepiece raises RuntimeError on a non-model file
        raise UsageError(f"{model}: not a usable SentencePiece model ({e})") from None
    ids = tok.encode(text)
    first_unused = tok.mask_id + 1
    return {
        "model": str(model),
        "pieces": tok.num_pieces,
        "embedding_rows": tok.vocab_size,
        "special": {
            "pad": [tok.pad_id, tok.id_to_token(tok.pad_id)],
            "eos": [tok.eos_id, tok.id_to_token(tok.eos_id)],
            "unk": [tok.unk_id, tok.id_to_token(tok.unk_id)],
            "mask": [tok.mask_id, MASK_TOKEN],
        },
        "sentinels": {
            "count": NUM_SENTINELS,
            sentinel_token(0): tok.sentinel_id(0),
            sentinel_token(NUM_SENTINELS - 1): tok.sentinel_id(NUM_SENTINELS - 1),
        },
        "unused_rows": [first_unused, tok.vocab_size - 1] if first_unused < tok.vocab_size else None,
        "sample": {"text": text, "pieces": [tok.id_to_token(i) for i in ids], "ids": ids},
    }


def cmd_tokenizer_info(ns: argparse.Namespace) -> int:
    info = tokenizer_info(Path(ns.model), ns.text)
    if ns.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    special, sentinels, sample = info["special"], info["sentinels"], info["sample"]
    last = sentinels["count"] - 1
    unused = info["unused_rows"]
    lines = [
        f"model:          {info['model']}",
        f"pieces:         {info['pieces']:,} (SentencePiece)",
        (
            f"embedding rows: {info['embedding_rows']:,} (pieces + {sentinels['count']} sentinels + [M], "
            "rounded up to a multiple of 128)"
        ),
        "special ids:    " + ", ".join(
            f"[M] {i}" if name == "mask" else f"{name} {i} {piece}" for name, (i, piece) in special.items()
        ),
        (
            f"sentinels:      <extra_id_0> = {sentinels['<extra_id_0>']} down to <extra_id_{last}> = "
            f"{sentinels[f'<extra_id_{last}>']}"
        ),
        f"unused rows:    {unused[0]}..{unused[1]} (padding)" if unused else "unused rows:    none",
        f"sample:         {sample['text']!r} -> {len(sample['ids'])} tokens (EOS not added)",
        f"  pieces:       {' '.join(sample['pieces'])}",
        f"  ids:          {' '.join(map(str, sample['ids']))}",
    ]
    print("\n".join(lines))
    return 0


def cmd_evaluate(ns: argparse.Namespace) -> int:
    from spactor.evaluation.finetune import EvaluationError, evaluate_run, parse_finetune_overrides

    if ns.step is not None and ns.all:
        raise UsageError("--step and --all exclude each other")
    from spactor.evaluation.zero_shot import evaluate_zero_shot_run, is_zero_shot

    try:
        budget, options = parse_finetune_overrides(list(ns.args))
        if is_zero_shot(ns.task):  # scored as it is: no fine-tuning budget
            written = evaluate_zero_shot_run(ns.run_dir, ns.task, step=ns.step, every=ns.all, seeds=ns.seeds,
                                             init=ns.init, task_options=options, device=budget.device)
        else:
            written = evaluate_run(ns.run_dir, ns.task, step=ns.step, every=ns.all, seeds=ns.seeds,
                                   init=ns.init, finetune=budget, task_options=options)
    except (EvaluationError, ValueError) as e:  # a task's bad content (missing file, field) included
        if isinstance(e, ConfigError):
            raise
        raise UsageError(str(e)) from None
    for path, result in written:
        where = "random init" if result.step is None else f"step {result.step}"
        print(f"{result.task} @ {where}: {result.metric} {result.score:.4f} ± {result.std:.4f} "
              f"({result.seeds} seed{'s' if result.seeds != 1 else ''}) -> {path}")
    return 0


def cmd_score(ns: argparse.Namespace) -> int:
    from spactor.evaluation.finetune import EvaluationError, build_model, load_model_weights, open_run
    from spactor.evaluation.finetune import select_checkpoints
    from spactor.evaluation.zero_shot import score_lines

    try:
        run = open_run(ns.run_dir)
        model = build_model(run)
        if ns.init == "checkpoint":
            load_model_weights(model, select_checkpoints(run, ns.step, False)[0][1])
        if ns.input == "-":
            lines: Any = sys.stdin
        else:
            path = Path(ns.input)
            if not path.is_file():
                raise EvaluationError(f"--input {ns.input}: no such file")
            lines = path.read_text(encoding="utf-8").splitlines()
        for record in score_lines(model, run, lines):
            print(json.dumps(record), flush=True)
    except (EvaluationError, UnicodeDecodeError) as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_study(ns: argparse.Namespace) -> int:
    from spactor.evaluation.study import StudyError, run_study

    try:
        return run_study(Path(ns.study), out_dir=ns.out, print_commands=ns.print_commands,
                         nproc_per_node=ns.nproc_per_node)
    except StudyError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt as e:
        print(f"spactor: study interrupted ({e or 'Ctrl-C'}); run the same command again to resume", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spactor", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe (no arguments: the quickstart)")
    p.add_argument("args", nargs="*", metavar="[RECIPE|PATH] [key=value ...]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("preview", help="show what the objectives do to real text")
    p.add_argument("args", nargs="*", metavar="[RECIPE|PATH] [key=value ...]")
    p.add_argument("--n", type=int, default=2, help="number of examples")
    p.add_argument("--json", action="store_true", help="one JSON object per example")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("components", help="list every registered plugin and its config")
    p.add_argument("kind", nargs="?", choices=sorted(ALL_REGISTRIES), help="only this kind")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a SentencePiece unigram model on the configured data source")
    t.add_argument("args", nargs="*", metavar="[RECIPE|PATH] [key=value ...]")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--out", "-o", required=True, help="output .model path")
    t.set_defaults(func=cmd_tokenizer_train)
    t = tsub.add_parser("info", help="vocabulary size, special ids, sentinels and a sample encoding")
    t.add_argument(
        "model", metavar="MODEL", help="a SentencePiece .model, or a run/export directory with spiece.model"
    )
    t.add_argument("--text", default=SAMPLE_TEXT, help="the sentence to encode as a sample")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=cmd_tokenizer_info)

    p = sub.add_parser("evaluate", help="fine-tune a run's checkpoints on a downstream task and score them")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--task", required=True, help="a registered task (spactor components task)")
    p.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    p.add_argument("--all", action="store_true", help="every kept checkpoint")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds (mean ± std)")
    p.add_argument("--init", choices=("checkpoint", "random"), default="checkpoint",
                   help="random: the same architecture from random init (eval/<task>/random.json)")
    p.add_argument("args", nargs="*", metavar="key=value",
                   help="finetune.steps=N etc. (the budget), other keys: task options (train=PATH ...)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="the log-likelihood of each input line under a run's model (JSON lines)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", "-i", default="-", help="a text file, one text per line (default: standard input)")
    p.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    p.add_argument("--init", choices=("checkpoint", "random"), default="checkpoint",
                   help="random: the same architecture from random init (the control)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("study", help="pre-train a study's arms, evaluate them, write study.md/study.png")
    p.add_argument("study", metavar="STUDY.yaml", help="a study file, or a shipped one by name (spactor_tiny)")
    p.add_argument("--out", help="the study directory (default: studies/<name> under the current directory)")
    p.add_argument("--print-commands", action="store_true", help="print torchrun commands instead of running")
    p.add_argument("--nproc-per-node", type=int, default=8, help="with --print-commands: ranks per node")
    p.set_defaults(func=cmd_study)

    # These modules are argparse-only at import; the work they do imports lazily.
    from spactor.tools.export import add_export_parser
    from spactor.cli.flops import add_flops_parser
    from spactor.tools.plot import add_plot_parser

    add_flops_parser(sub)
    add_export_parser(sub)
    add_plot_parser(sub)
    __import__("spactor.cli.data", fromlist=["add_data_parser"]).add_data_parser(sub)  # spactor data
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    as_program = argv is None  # the process's own command line: its handlers may outlive main()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    # Until the trainer installs its own handler (finish the step, checkpoint), Ctrl-C
    # ends the process at once: a KeyboardInterrupt raised while torch imports is
    # swallowed there and the run would carry on.
    previous = previous_term = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _exit_interrupted)
        previous_term = signal.getsignal(signal.SIGTERM)
    try:
        return _dispatch(argv, debug)
    except KeyboardInterrupt:  # the trainer's second Ctrl-C: stop now, no traceback
        if debug:
            traceback.print_exc()
        print("spactor: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if previous_term is not None and not as_program:  # called in-process: leave SIGTERM as it was
            signal.signal(signal.SIGTERM, previous_term)


def _exit_interrupted(signum: int, frame: Any) -> None:
    sys.stderr.write("spactor: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def _dispatch(argv: list[str], debug: bool) -> int:
    parser = build_parser()
    # key=value overrides may come after flags too (`spactor flops sc --json model.size=tiny`).
    ns, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(ns, "args")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        ns.args = [*ns.args, *extra]
    load_plugins()
    func: Callable[[argparse.Namespace], int] = ns.func
    try:
        return func(ns)
    except (ConfigError, UsageError, RegistryError) as e:
        if debug:
            traceback.print_exc()
        print(f"spactor: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # trainer.nonfinite=stop: already checkpointed, say so in one line
        if debug:
            traceback.print_exc()
        print(f"spactor: stopped: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the machine's edge: full disk, permissions, a file where a directory goes
        if debug:
            traceback.print_exc()
        print(f"spactor: error: {describe_os_error(e)}", file=sys.stderr)
        return 1 if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else 2
    except Exception as e:  # noqa: BLE001 — a one-line message unless --debug
        if _is_checkpoint_write_error(e):  # says why and which checkpoint is intact
            if debug:
                traceback.print_exc()
            print(f"spactor: error: {e}", file=sys.stderr)
            return 1
        if debug or _is_data_error(e) is False:
            traceback.print_exc()
        print(f"spactor: {type(e).__name__}: {e}", file=sys.stderr)
        return 2 if _is_data_error(e) else 1


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path and what is wrong with it, in words."""
    path = e.filename if e.filename is not None else "a file"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        import shutil

        where = Path(str(e.filename)) if e.filename else Path.cwd()
        free = next((shutil.disk_usage(p).free for p in (where, *where.parents) if p.exists()), None)
        room = f" ({free / 2**20:.1f} MB free)" if free is not None else ""
        return f"{path}: no space left on device{room}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied"
    if e.errno == errno.EROFS:
        return f"{path}: read-only file system"
    if e.errno == errno.ENOTDIR:
        return f"{path}: part of this path is a file, not a directory"
    if e.errno == errno.EEXIST:
        return f"{path}: exists and is not a directory"
    if e.errno == errno.EISDIR:
        return f"{path}: is a directory, not a file"
    if e.errno == errno.ENOENT:
        return f"{path}: no such file or directory"
    return f"{path}: {e.strerror or e}"


def check_run_dir(path: Path, key: str) -> None:
    """Fail before any work if the run directory cannot be written: it is a file, it or
    the nearest existing parent is not writable, or a parent is a file."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{key}: '{path}' is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{key}: '{path}' is not writable (permission denied)")
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise UsageError(f"{key}: cannot create '{path}': '{parent}' is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{key}: cannot create '{path}': '{parent}' is not writable (permission denied)")


def _is_checkpoint_write_error(e: Exception) -> bool:
    mod = sys.modules.get("spactor.train.checkpoint")
    return mod is not None and isinstance(e, mod.CheckpointWriteError)


def _is_data_error(e: Exception) -> bool:
    try:
        from spactor.data.sources import DataError
    except ImportError:
        return False
    return isinstance(e, DataError)


if __name__ == "__main__":
    sys.exit(main())
