"""Command line interface: ``pacsim --help``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pacsim",
        description="Transfer scientific surrogate models to data-poor settings with PAC-Net.",
    )
    p.add_argument("--version", action="version", version=f"pacsim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="end-to-end transfer on the built-in Friedman problem")
    demo.add_argument("--n-source", type=int, default=4000, help="source samples (default 4000)")
    demo.add_argument("--n-target", type=int, default=100, help="target samples (default 100)")
    demo.add_argument("--q", type=float, default=1.0, help="target distance from source")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--source-epochs", type=int, default=60)
    demo.add_argument("--target-steps", type=int, default=600)
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    sim = sub.add_parser("simulate", help="run a simulator and write a pacsim-h5 file",
                         description="Run a simulator for one setting and write its samples "
                                     "to a pacsim-h5 file. --list shows every simulator.")
    sim.add_argument("name", nargs="?", help="simulator name (see --list)")
    sim.add_argument("--list", action="store_true", help="list simulators and their parameters")
    sim.add_argument("--setting", default="source", help="source or target (default source)")
    sim.add_argument("--n", type=int, help="number of samples")
    sim.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    sim.add_argument("--out", help="output file")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter (repeatable); lists as 1,2,3")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file")
    ds = sub.add_parser("datasets", help="build the transfer-pair datasets from recipes")
    ds.add_argument("recipes", nargs="*", help="recipe files (default: datasets/*.toml)")
    ds.add_argument("--out", default="datasets/built", help="output folder (default "
                                                           "datasets/built)")
    ds.add_argument("--overwrite", action="store_true", help="rebuild existing files")
    b = sub.add_parser("bench", help="run a benchmark suite (resumable)")
    b.add_argument("suite", help="suite TOML file, e.g. benchmarks/suites/quick.toml")
    b.add_argument("--out", required=True, help="results folder")
    b.add_argument("--jobs", type=int, default=None,
                   help="cells run in N processes (default 1); with --executor ray and no "
                        "--address, the embedded Ray's size in cells (default: every core)")
    b.add_argument("--devices", default=None, metavar="LIST",
                   help="devices of the workers, e.g. cuda:0,cuda:1 or cpu (default: every "
                        "visible CUDA device, else cpu); one worker per device first")
    b.add_argument("--device", dest="devices", help=argparse.SUPPRESS)
    b.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local processes (default) or Ray tasks (pip install 'pacsim[ray]')")
    b.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="with --executor ray: join the running Ray cluster there (auto: the "
                        "one `ray start` left on this machine or RAY_ADDRESS); default: "
                        "start an embedded Ray on this machine")
    b.add_argument("--cpus-per-cell", type=float, default=1.0, metavar="N",
                   help="with --executor ray: CPUs of each task (default 1)")
    b.add_argument("--gpus-per-cell", type=float, default=0.0, metavar="N",
                   help="with --executor ray: GPUs of each task, fractions share a GPU "
                        "(e.g. 0.25; default 0: the CPU)")
    b.add_argument("--stack", default="auto", choices=("auto", "on", "off"),
                   help="train each cell's cross-validation folds x configurations at once "
                        "(fit_many); auto (default): where measured faster (CUDA; on the "
                        "CPU models without 2D convolutions, spectral ones included), on: "
                        "wherever the model allows, off: one by one")
    b.add_argument("--batch-cells", default="auto", type=_batch_cells, metavar="K|auto",
                   help="train up to K cells of one pair and target size (any method and "
                        "seed) together, their cross-validations as shared fit_many "
                        "stacks; 1: one cell a task; auto (default): 64 for pairs whose "
                        "cells stack (see --stack), else 1")
    b.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    b.add_argument("--dry-run", action="store_true",
                   help="list the cells that would run and why (new, changed, failed); "
                        "run nothing")
    b.add_argument("--report", action="store_true", help="write the report when done")
    rep = sub.add_parser("report", help="write DIR/report.md and figures from results")
    rep.add_argument("dir", help="results folder of pacsim bench")
    _workflow_parsers(sub)
    ins = sub.add_parser("inspect", help="describe a pacsim-h5, PDEBench or The Well HDF5 file")
    ins.add_argument("file", help="path of the HDF5 file")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    ins.add_argument("--check", action="store_true",
                     help="also scan every value for NaN or inf (reads the whole file)")
    return p


def _common(p: argparse.ArgumentParser, *, train: bool = True) -> None:
    if train:
        p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
        p.add_argument("--weight-decay", type=float, default=0.0, help="(default 0)")
        p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches "
                                                           "and sample draws (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _workflow_parsers(sub: Any) -> None:
    t = sub.add_parser("train", help="train a surrogate on a pacsim-h5 file",
                       description="Fit a surrogate on the file's train split, keep the epoch "
                                   "with the lowest val loss, write a checkpoint. Under "
                                   "torchrun it trains data-parallel (DDP).")
    t.add_argument("data", help="pacsim-h5 file (e.g. from pacsim simulate or convert)")
    t.add_argument("--model", default="auto",
                   help="auto: mlp for flat samples, cnn for fields (default); or the name "
                        "of a registered model (pacsim.models.registered()), e.g. fno: a "
                        "Fourier neural operator (pip install 'pacsim[operators]')")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. hidden=64,64 (mlp) or width=32 (cnn)")
    t.add_argument("--out", required=True, help="checkpoint to write")
    t.add_argument("--epochs", type=int, default=100, help="(default 100)")
    t.add_argument("--batch-size", type=int, default=64, help="(default 64)")
    t.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without a better val loss")
    t.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    t.add_argument("--compile", action="store_true",
                   help="run the training forward through torch.compile (CUDA graphs on "
                        "CUDA; on the CPU it was not faster for small models)")
    _common(t)
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    x = sub.add_parser("transfer", help="transfer a checkpoint to another setting's data",
                       description="Adapt a source checkpoint to the train split of a target "
                                   "file with one method; hyper-parameters chosen by "
                                   "cross-validation on the target samples only (--select "
                                   "cv, default) or fixed.")
    x.add_argument("checkpoint", help="source checkpoint (from pacsim train)")
    x.add_argument("target", help="target pacsim-h5 file")
    x.add_argument("--method", default="pac",
                   help="pac (default), pac-paper, finetune, head, l2sp, bitfit, scratch, "
                        "another registered method (pacsim.transfer.names()), or auto: "
                        "every default method's CV on the same folds, the lowest CV loss "
                        "retrained")
    x.add_argument("--keep-source", action="store_true",
                   help="with --method auto: choose among the PAC methods only, so the "
                        "source setting stays exact")
    x.add_argument("--n", type=int, default=None,
                   help="use N samples of the target train split (default: all)")
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. ratio=0.5, lam=0.01, alpha=0.1")
    x.add_argument("--source", default=None,
                   help="source data for PAC's allocate (default: the file the checkpoint "
                        "was trained on)")
    x.add_argument("--select", default="cv", choices=("cv", "fixed"),
                   help="cv: choose lr, options and steps on the target samples (default); "
                        "fixed: --lr, --set and --steps as given")
    x.add_argument("--folds", type=int, default=5, help="CV folds (default 5)")
    x.add_argument("--final", default=None, choices=("last", "best"),
                   help="with --select cv, the final retrain's state to keep: last (at the "
                        "chosen step) or best (its epoch with the lowest loss on the target "
                        "samples); default: pacsim.transfer.SelectionConfig's")
    x.add_argument("--steps", type=int, default=500,
                   help="optimiser steps (fixed), or a third of CV's maximum (default 500)")
    x.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    x.add_argument("--allocate-epochs", type=int, default=None,
                   help="PAC allocate budget (default: a third of the source training's)")
    x.add_argument("--setting", default=None, metavar="NAME",
                   help="PAC: the new setting's name (default 'target'); from a PAC "
                        "checkpoint, required: adds a setting to the same network")
    x.add_argument("--extend-ratio", type=float, default=0.5,
                   help="PAC, adding a setting: share of the newest setting's entries freed "
                        "for it (default 0.5)")
    _common(x)
    x.add_argument("--out", required=True, help="checkpoint to write")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p = sub.add_parser("predict", help="predict with a checkpoint, write a pacsim-h5 file")
    p.add_argument("checkpoint")
    p.add_argument("inputs", help="pacsim-h5 file whose inputs are predicted")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which samples (default test)")
    p.add_argument("--source-view", action="store_true",
                   help="a PAC checkpoint's source setting instead of its target")
    p.add_argument("--setting", default=None, metavar="NAME",
                   help="a PAC checkpoint's setting (source, target or an added one)")
    p.add_argument("--batch-size", type=int, default=1024, help="samples per read")
    p.add_argument("--out", required=True, help="predictions file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _common(p, train=False)
    c = sub.add_parser("convert", help="turn a The Well or PDEBench file into pacsim-h5",
                       description="Read trajectories of a The Well or PDEBench HDF5 file "
                                   "one at a time and write (input, target) pairs as "
                                   "pacsim-h5.")
    c.add_argument("file", help="The Well or PDEBench HDF5 file")
    c.add_argument("--to", default="pacsim-h5", choices=("pacsim-h5",), help="output format")
    c.add_argument("--out", required=True, help="pacsim-h5 file to write")
    c.add_argument("--pairs", default="next", choices=("next", "ic-to-T"),
                   help="next: state -> next state (default); ic-to-T: initial state -> "
                        "state at --t-index")
    c.add_argument("--t-index", type=int, default=None,
                   help="with ic-to-T: the target step (default last; negative from the end)")
    c.add_argument("--stride", type=int, default=None, help="with next: steps ahead (default 1)")
    c.add_argument("--fields", default=None, help="comma-separated field names (default all)")
    c.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a pacsim-h5 file")
    e.add_argument("checkpoint")
    e.add_argument("data")
    e.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="(default test)")
    e.add_argument("--source-view", action="store_true",
                   help="a PAC checkpoint's source setting instead of its target")
    e.add_argument("--setting", default=None, metavar="NAME",
                   help="a PAC checkpoint's setting (source, target or an added one)")
    e.add_argument("--json", action="store_true", help="print JSON")
    _common(e, train=False)


def _settings(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items: words (``subspace=all``) stay strings, everything else is
    read as ``pacsim simulate --set`` reads it (JSON, or comma-separated numbers)."""
    from .sims import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        v = value.strip()
        word = (v[:1].isalpha() and v.replace("-", "_").isidentifier()  # not "-1"
                and v not in ("true", "false", "null"))
        out[key.strip()] = v if word else parse_value(v)
    return out


def _train(args: argparse.Namespace) -> int:
    from .workflow import TrainSettings, train_surrogate

    settings = TrainSettings(model=args.model, options=_settings(args.set), epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, patience=args.patience,
                             device=args.device, seed=args.seed, amp=args.amp,
                             compile=args.compile)
    train_surrogate(args.data, args.out, settings, overwrite=args.overwrite)
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from .workflow import TransferSettings, transfer_surrogate

    settings = TransferSettings(method=args.method, n=args.n, options=_settings(args.set),
                                source=args.source, selection=args.select, folds=args.folds,
                                steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                weight_decay=args.weight_decay,
                                allocate_epochs=args.allocate_epochs, device=args.device,
                                seed=args.seed, setting=args.setting,
                                extend_ratio=args.extend_ratio, keep_source=args.keep_source,
                                **({"final": args.final} if args.final else {}))
    transfer_surrogate(args.checkpoint, args.target, args.out, settings,
                       overwrite=args.overwrite)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .workflow import predict_file
    from .workflow.inference import view_setting

    path = predict_file(args.checkpoint, args.inputs, args.out, split=args.split,
                        setting=view_setting(args.source_view, args.setting),
                        batch_size=args.batch_size, device=args.device,
                        overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data.inspect import printable, to_json
    from .workflow import evaluate_file

    res = evaluate_file(args.checkpoint, args.data, split=args.split,
                        source_view=args.source_view, setting=args.setting, device=args.device)
    if args.json:
        print(to_json(res))  # strict JSON: a metric that is not finite is null
        return 0
    view = f" (setting {printable(res['setting'])})" if res["setting"] else ""
    print(f"{printable(args.checkpoint)}{view} on {printable(args.data)}, split {args.split} "
          f"({res['n']} samples)")
    from .metrics import METRICS as names

    print(f"{'':<10}" + "".join(f"{m:>12}" for m in names))
    print(f"{'all':<10}" + "".join(f"{res[m]:>12.4g}" for m in names))
    for c, ch in enumerate(res.get("channels", [])):
        print(f"{'channel ' + str(c):<10}" + "".join(f"{ch[m]:>12.4g}" for m in names))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .data import convert

    kwargs = {} if args.stride is None else {"stride": args.stride}
    path = convert(args.file, args.out, pairs=args.pairs, t_index=args.t_index,
                   fields=args.fields, seed=args.seed, overwrite=args.overwrite, **kwargs)
    print(f"wrote {path}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from . import sims

    if args.list:
        print(sims.listing())
        return 0
    missing = [f for f, v in (("NAME", args.name), ("--n", args.n), ("--out", args.out))
               if v is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --list)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = sims.parse_value(value)
    path = sims.simulate(args.name, setting=args.setting, n=args.n, seed=args.seed,
                         out=args.out, overwrite=args.overwrite, **overrides)
    print(f"wrote {path}")
    return 0


def _batch_cells(value: str) -> int | str:
    """``--batch-cells``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be auto or an integer >= 1, got {value!r}")
    return k


def _bench(args: argparse.Namespace) -> int:
    from .bench.execute import RunnerError
    from .bench.runner import RunOptions, run_suite

    options = RunOptions(jobs=args.jobs, devices=args.devices, executor=args.executor,
                         address=args.address, cpus_per_cell=args.cpus_per_cell,
                         gpus_per_cell=args.gpus_per_cell,
                         stack={"on": True, "off": False}.get(args.stack, "auto"),
                         batch_cells=args.batch_cells)
    try:
        run_suite(args.suite, args.out, options, retry_failed=args.retry_failed,
                  dry_run=args.dry_run)
    except RunnerError as exc:
        print(f"pacsim bench: error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    failed = _failed_cells(args.suite, args.out)
    code = _report(argparse.Namespace(dir=args.out)) if args.report else 0
    if failed:
        print(f"pacsim bench: {failed} cell(s) of the suite failed (errors in "
              f"{os.path.join(args.out, 'results.jsonl')}; --retry-failed runs them again)",
              file=sys.stderr)
        return 1
    return code


def _failed_cells(suite: str, out: str) -> int:
    """How many of the suite's cells end in a failure (their newest record)."""
    from .bench import load_suite
    from .bench.results import read_results
    from .bench.runner import plan_suite

    return plan_suite(load_suite(suite), read_results(out)).kept_failed


def _report(args: argparse.Namespace) -> int:
    from .bench.report import write_report

    path = write_report(args.dir)
    print(f"report: {path}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from .sims import recipes

    files = args.recipes or recipes.find("datasets")
    if not files:
        raise ValueError("no recipe files given and none found in datasets/")
    recipes.build_all(files, args.out, overwrite=args.overwrite)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .data import render
    from .data.inspect import describe_isolated, to_json

    d = describe_isolated(args.file, check=args.check)  # a crash inside HDF5: one line
    print(to_json(d) if args.json else render(d))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    run_demo(DemoSettings(n_source=args.n_source, n_target=args.n_target, q=args.q,
                          seed=args.seed, source_epochs=args.source_epochs,
                          target_steps=args.target_steps), device=args.device)
    return 0


def _one_line(exc: BaseException) -> str:
    """An error as one line: ``FILE: reason`` for system errors, else the first line."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, FileExistsError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def _warning_line(message: Warning | str, category: type[Warning], *args: Any,
                  **kwargs: Any) -> None:
    """Warnings of a command as one line each on stderr."""
    text = _one_line(message) if isinstance(message, BaseException) else str(message)
    print(f"pacsim: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pacsim`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"demo": _demo, "inspect": _inspect, "simulate": _simulate,
                "datasets": _datasets, "bench": _bench, "report": _report, "train": _train,
                "transfer": _transfer, "predict": _predict, "evaluate": _evaluate,
                "convert": _convert}
    from . import procutil

    try:
        with procutil.handled(), warnings.catch_warnings():  # SIGTERM, SIGHUP: as Ctrl-C
            warnings.showwarning = _warning_line
            return handlers[args.command](args)
    except KeyboardInterrupt as exc:
        # a library that turns our Interrupted into a plain KeyboardInterrupt (Ray's
        # wait, say) loses its signal: the handler's count still knows it
        signum = getattr(exc, "signum", None) or procutil.last_signal() or signal.SIGINT
        print(f"pacsim: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        # the reader of our output went away (``pacsim ... | head``): stop quietly, and
        # point stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as exc:
        print(f"pacsim {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if "torch" in sys.modules:  # leave a torchrun process group (no-op otherwise)
            from .distributed import finish

            finish()


if __name__ == "__main__":
    sys.exit(main())
