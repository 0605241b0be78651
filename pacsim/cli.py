"""Command line interface: ``pacsim --help``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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
    b.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    b.add_argument("--dry-run", action="store_true",
                   help="list the cells that would run and why (new, changed, failed); "
                        "run nothing")
    b.add_argument("--report", action="store_true", help="write the report when done")
    rep = sub.add_parser("report", help="write DIR/report.md and figures from results")
    rep.add_argument("dir", help="results folder of pacsim bench")
    ins = sub.add_parser("inspect", help="describe a pacsim-h5 or PDEBench HDF5 file")
    ins.add_argument("file", help="path of the HDF5 file")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    ins.add_argument("--check", action="store_true",
                     help="also scan every value for NaN or inf (reads the whole file)")
    return p


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


def _bench(args: argparse.Namespace) -> int:
    from .bench.execute import RunnerError
    from .bench.runner import run_suite

    try:
        run_suite(args.suite, args.out, jobs=args.jobs, devices=args.devices,
                  retry_failed=args.retry_failed, dry_run=args.dry_run,
                  executor=args.executor, address=args.address,
                  cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell)
    except RunnerError as exc:
        print(f"pacsim bench: error: {exc}", file=sys.stderr)
        return 1
    if args.report and not args.dry_run:
        return _report(argparse.Namespace(dir=args.out))
    return 0


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
    import json

    from .data import describe, render

    d = describe(args.file, check=args.check)
    print(json.dumps(d, indent=2) if args.json else render(d))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    for name in ("n_source", "n_target", "source_epochs", "target_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    run_demo(n_source=args.n_source, n_target=args.n_target, q=args.q, seed=args.seed,
             source_epochs=args.source_epochs, target_steps=args.target_steps, device=args.device)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pacsim`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"demo": _demo, "inspect": _inspect, "simulate": _simulate,
                "datasets": _datasets, "bench": _bench, "report": _report}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"pacsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pacsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (``pacsim ... | head``): stop quietly, and
        # point stdout at /dev/null so the interpreter's final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
