"""`mixkd` command line: run, ls, report, compare, list, bench."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import textwrap
import warnings
from pathlib import Path

from .errors import MixkdError, StudyWarning

DEFAULT_STUDY = "quickstart"
LIST_KINDS = ("models", "datasets", "mixers", "losses", "metrics", "schedules", "optimizers", "trackers")


def study_path(arg: str) -> Path:
    """A path, or the name of a study in ./studies or in the source checkout's studies/."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    for folder in (Path("studies"), Path(__file__).resolve().parent.parent / "studies"):
        if (folder / f"{arg}.yaml").exists():
            return folder / f"{arg}.yaml"
    raise MixkdError(f"study {arg!r}: no such file, and no studies/{arg}.yaml")


def _load(args):
    """The study and its output folder: STUDY and --out as given; without STUDY, the study --out holds (else the
    quickstart). A STUDY that is not the one --out holds is refused (to report: one with other runs too)."""
    from .study import load_study
    from .study_record import check_same_study, has_record, read_record

    if args.study is None and args.out:
        out = Path(args.out)
        if has_record(out):
            return read_record(out), out
        if args.command != "run" or (out / "runs").is_dir():
            raise MixkdError(f"{out} holds no study (no study.json, which `mixkd run` writes): give the STUDY, "
                             f"e.g. mixkd {args.command} STUDY --out {out}")
    study = load_study(study_path(args.study or DEFAULT_STUDY))
    out = Path(args.out) if args.out else study.output
    check_same_study(study, out, args.command)
    return study, out


def _overview(study, out, only: frozenset[str] | None = None):
    from .tables import runs_table

    cols = ["run_id", "role", "variant", "seed", "status", "top1_last"]
    table = runs_table(study, out).reindex(columns=cols)
    return table if only is None else table[table["run_id"].isin(only)]


def _only(args, study) -> frozenset[str] | None:
    """The run ids `--only` selects (with the teachers they need), or None: the whole study."""
    from .slices import parse_only, select

    return select(study, parse_only(args.only, study)) if args.only else None


def cmd_run(args) -> int:
    from .config import ROLES
    from .rundir import check_writable
    from .runner import run_study
    from .study_record import write_record
    from .trackers import report_study, selected
    from .work import Job

    if args.estimate and not args.dry_run:
        raise MixkdError("--estimate goes with --dry-run: mixkd run STUDY --dry-run --estimate")
    study, out = _load(args)
    only = _only(args, study)
    track = selected(study.file.track, args.track)  # before any run: a tracker not installed is one line
    if args.dry_run:
        table = _overview(study, out, only)
        print(table.drop(columns=["top1_last"]).to_string(index=False))
        counts = table["role"].value_counts().reindex(ROLES).fillna(0).astype(int)
        print(f"{len(table)} runs ({', '.join(f'{n} {role}' for role, n in counts.items())})"
              f"{f' of the {len(study.runs)} in the study' if only is not None else ''}; "
              f"{int((table['status'] != 'complete').sum())} to train; output {out}")
        from .estimate import dry_run

        dry_run(study, out, only, args.device, args.retry_failed, args.workers, args.estimate)
        return 0
    job = Job(study, out, device=args.device, data_root=args.data_root or os.environ.get("MIXKD_DATA_ROOT"),
              retry_failed=args.retry_failed, checkpoint_every=args.checkpoint_every, only=only, track=track)
    check_writable(out)
    write_record(study, out)  # before any run: the folder knows its study even if this run is cut short
    trained = run_study(job, args.executor, _executor_options(args))
    runs = _report(study, out)
    report_study(track, study.name, out)
    failed = int((runs["status"] == "failed").sum())
    print(f"{study.name}: trained {len(trained)}, {int((runs['status'] == 'complete').sum())}/{len(runs)} complete"
          f"{f', {failed} failed (mixkd ls shows them; --retry-failed reruns them)' if failed else ''}; "
          f"tables in {out}")
    return 1 if failed else 0


def _executor_options(args):
    from .executors import ExecutorOptions, SlurmOptions

    extra = []
    for term in args.slurm or []:
        key, sep, value = term.partition("=")
        if not sep or not key:
            raise MixkdError(f"--slurm {term}: expected KEY=VALUE, an sbatch option, e.g. --slurm account=mylab")
        extra.append((key, value))
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise MixkdError(f"--gpus-per-node {args.gpus_per_node}: expected a whole number ≥ 0")
    slurm = SlurmOptions(args.partition, args.gpus_per_node, args.time, args.array_parallelism, args.cluster,
                         tuple(extra))
    if args.executor != "slurm" and slurm != SlurmOptions():
        raise MixkdError("--partition, --gpus-per-node, --time, --array-parallelism, --cluster and --slurm are "
                         "for --executor slurm")
    return ExecutorOptions(args.workers, args.address, slurm)


def _report(study, out):
    """Tables from the run directories; then statistics, leaderboard, figures and report.html from those tables
    alone; the leaderboard's head printed."""
    from .report import write_report
    from .report.leaderboard import head
    from .study_record import write_record

    write_record(study, out)
    tables = write_report(study, out)
    print(head(tables.leaderboard))
    return tables.runs


def cmd_ls(args) -> int:
    from .executors.slurm import with_jobs
    from .progress import eta_line, read_progress, with_progress
    from .slices import orphans

    study, out = _load(args)
    only, logged = _only(args, study), read_progress(study, out)
    print(with_jobs(with_progress(_overview(study, out, only), logged, out), out).to_string(index=False))
    print(eta_line(study, logged, only))
    left = orphans(study, out)
    if left:
        print(f"{len(left)} orphaned: run folders in {out / 'runs'} that {study.name} does not name (an earlier "
              f"version of it?), kept: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}")
    return 0


def cmd_report(args) -> int:
    study, out = _load(args)
    runs = _report(study, out)
    print(f"{study.name}: {len(runs)} runs; tables, statistics, figures and {out / 'report.html'} written")
    return 0


def cmd_compare(args) -> int:
    from .compare import first_difference

    try:
        diff = first_difference(args.a, args.b)
    except FileNotFoundError as e:
        raise MixkdError(str(e)) from None
    if diff:
        print(f"differ: {diff}")
        return 1
    print(f"identical: runs, epochs and metrics tables of {args.a} and {args.b} "
          "(provenance, timings and execution aside)")
    return 0


def cmd_list(args) -> int:
    from . import data, models
    from .analysis import metrics_written
    from .registry import matching
    from .schema import component_defaults
    from .study import COMPONENTS

    if args.kind == "models":
        shape = getattr(data.DATASETS.get(args.dataset, "--dataset"), "shape", None) if args.dataset else None
        num_classes, in_chans, img_size = shape or (args.num_classes, 3, 32)
        print(f"{'model':<16} {'params (M)':>10}   ({num_classes} classes, {in_chans}×{img_size}×{img_size})")
        for name in models.list_models(args.pattern):
            model = models.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
            print(f"{name:<16} {models.count_parameters(model) / 1e6:>10.2f}")
        print("timm/<name>      any timm model, e.g. timm/deit_tiny_patch16_224")
        return 0
    if args.kind == "metrics":
        written = metrics_written()
        for name in matching(list(written), args.pattern):
            print(f"{name:<24} {written[name]}")
        print(f"{'ema_<metric>':<24} any of these, of the weights' EMA (recipes with ema_decay)")
        return 0
    registry = COMPONENTS[args.kind]
    for name in registry.names(args.pattern):
        summary = " ".join(inspect.cleandoc(registry.get(name).__doc__ or "").split("\n\n")[0].split())
        print(textwrap.fill(summary, 110, initial_indent=f"{name:<16} ", subsequent_indent=" " * 17,
                            break_on_hyphens=False) or name)
        params = [key if default is inspect.Parameter.empty else f"{key}={default!r}"
                  for key, default in component_defaults(registry, name).items()]
        if params:
            print(f"{'':<16} {'  '.join(params)}")
        for line in _facts(registry.get(name)):
            print(f"{'':<16} {line}")
    return 0


def _facts(component) -> list[str]:
    """What a study author needs beyond the parameters: the paper, and a feature method's taps and views."""
    facts = [f"paper: {component.paper}"] if getattr(component, "paper", "") else []
    if getattr(component, "taps", None):
        facts.append(f"taps: {', '.join(sorted(component.taps))}")
    if getattr(component, "views", None):
        facts.append(f"mixed views: {', '.join(component.views)}")
    return facts


def cmd_bench(args) -> int:
    from .engine import resolve_device

    root = args.data_root or os.environ.get("MIXKD_DATA_ROOT")
    device = resolve_device(args.device)
    if args.what == "device-check":
        from .bench.device_check import device_check

        report = device_check(args.out or "out/device-check", device, root, args.quick)
        return 0 if all(report[part]["ok"] for part in ("tests", "bench", "loader", "train")) else 1
    if args.what == "loader":
        from .bench.loader import bench_loader, print_loader_bench

        if not root:
            print("bench loader: no CIFAR-100 rows without --data-root or MIXKD_DATA_ROOT", flush=True)
        print_loader_bench(bench_loader(root, device, batches=args.batches))
        return 0
    if not root and not args.synthetic:
        raise MixkdError("bench engine: needs the CIFAR-100 files; pass --data-root or set MIXKD_DATA_ROOT "
                         "(or --synthetic: random images of their shape)")
    from .bench.engine import PAIRS, bench_engine, print_engine_bench, write_json
    from .engine import Engine

    steps, warmup = (args.steps or 3, 1) if args.quick else (args.steps or 100, 10)
    pairs = [tuple(p.split(":")) for p in args.pairs] if args.pairs else PAIRS
    print(f"mixkd bench: {len(pairs)} pairs × (reference, engine, lockstep {', '.join(map(str, args.lockstep))}); "
          f"{steps} timed steps of 64 after {warmup} warm-up on {device}", flush=True)
    rows = bench_engine(root or None, device, pairs, tuple(args.lockstep), steps, warmup, args.workers,
                        Engine(compile=args.compile), log=lambda line: print(line, flush=True))
    print_engine_bench(rows)
    if args.json:
        write_json(rows, args.json)
        print(f"written {args.json}")
    return 0


def model_pair(text: str) -> str:
    from .models import is_known_model, unknown_model_message

    names = text.split(":")
    if len(names) != 2:
        raise argparse.ArgumentTypeError(f"expected TEACHER:STUDENT, e.g. resnet56:resnet20, got {text!r}")
    for name in names:
        if not is_known_model(name):
            raise argparse.ArgumentTypeError(unknown_model_message(name))
    return text


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixkd", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True)

    def study_cmd(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("study", nargs="?", help="study YAML or name in studies/ (default: the study --out holds, "
                                                 "else quickstart)")
        s.add_argument("--out", help="output directory (default: the study's `output`, else out/<name>)")
        s.set_defaults(fn=fn)
        return s

    r = study_cmd("run", cmd_run, "train every unfinished run of a study, then write tables and figures")
    r.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    r.add_argument("--data-root", help="dataset root (default: $MIXKD_DATA_ROOT)")
    r.add_argument("--dry-run", action="store_true", help="print the expanded runs and their count; train nothing")
    r.add_argument("--estimate", action="store_true",
                   help="with --dry-run: time a few training steps of each kind of run on --device, and print "
                        "the study's time there")
    r.add_argument("--retry-failed", action="store_true", help="also rerun runs recorded as failed")
    r.add_argument("--executor", default="local", help="local (default) | ray | slurm")
    r.add_argument("--workers", type=positive_int, default=1, help="local: runs trained at once, one process each")
    r.add_argument("--address", help="ray: the cluster to join, e.g. auto (default: start a local Ray instance)")
    slurm = r.add_argument_group("--executor slurm (through submitit: pip install 'mixkd[slurm]')")
    slurm.add_argument("--partition", help="the partition the jobs go to (default: the cluster's)")
    slurm.add_argument("--time", metavar="HH:MM", help="each job's time limit (required); a job that reaches it "
                                                      "is requeued and its runs resume")
    slurm.add_argument("--gpus-per-node", type=int, metavar="N",
                       help="GPUs a node gives a job (default 1; 0 with --device cpu): a lockstep group's "
                            "job asks one, a run across devices min(devices, N) per node")
    slurm.add_argument("--array-parallelism", type=positive_int, metavar="K",
                       help="most jobs of an array running at once")
    slurm.add_argument("--cluster", choices=["slurm", "local"], default="slurm",
                       help="local: submitit runs the jobs as processes here, to try a study's Slurm set-up")
    slurm.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. account=mylab, qos=high, constraint=a100; repeatable")
    r.add_argument("--checkpoint-every", type=positive_int, default=1, metavar="N",
                   help="save a resumable checkpoint every N epochs (default 1); not part of any run id")
    r.add_argument("--track", action="append", metavar="NAME[,NAME]",
                   help="also log every run to these experiment trackers, beside the study's `track:`: "
                        "tensorboard, wandb, mlflow (none: to no tracker); not part of any run id")
    ls = study_cmd("ls", cmd_ls, "the expanded grid with each run's status, and run folders it does not name")
    for command in (r, ls):
        command.add_argument("--only", action="append", metavar="KEY=VALUE[,VALUE]",
                             help="only the matching runs (and the teachers they need); repeat to narrow: "
                                  "role, teacher, student, mix, loss, view, temperature, seed, run_id")
    study_cmd("report", cmd_report, "rebuild tables and figures from the run directories")
    cmp = sub.add_parser("compare", help="check that two output folders of a study hold the same numbers")
    cmp.add_argument("a", help="an output folder (e.g. out/quickstart)")
    cmp.add_argument("b", help="another output folder of the same study")
    cmp.set_defaults(fn=cmd_compare)
    lst = sub.add_parser("list", help="what is registered")
    lst.add_argument("kind", choices=LIST_KINDS)
    lst.add_argument("pattern", nargs="?", help="a part of the name, or a shell-style pattern, e.g. 'resnet*'")
    lst.add_argument("--dataset", help="models: count parameters for this dataset's classes and image size")
    lst.add_argument("--num-classes", type=int, default=100)
    lst.set_defaults(fn=cmd_list)
    bench = sub.add_parser("bench", help="measure throughput against a reference pipeline in the same process")
    bench.add_argument("what", nargs="?", choices=["engine", "loader", "device-check"], default="engine",
                       help="engine (default): RepDistiller-style KD loop vs mixkd's engine, single, lockstep and "
                            "fused; loader: torchvision's input pipelines vs mixkd's (CIFAR-100, image folder); "
                            "device-check: the CUDA tests, the engine bench and a fused training, JSON under --out "
                            "(a GPU session's first call)")
    bench.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    bench.add_argument("--data-root", help="CIFAR-100 root (default: $MIXKD_DATA_ROOT)")
    bench.add_argument("--quick", action="store_true",
                       help="engine: 3 timed steps each; device-check: toy sizes (a CPU smoke run)")
    bench.add_argument("--synthetic", action="store_true",
                       help="engine: random images of CIFAR-100's shape when no root is given (speed alone)")
    bench.add_argument("--out", help="device-check: where its JSON goes (default out/device-check)")
    bench.add_argument("--steps", type=positive_int, help="engine: timed steps per configuration (default 100)")
    bench.add_argument("--pairs", nargs="+", type=model_pair, metavar="T:S",
                       help="engine: teacher:student pairs (default resnet56:resnet20 wrn_40_2:wrn_16_2 "
                            "resnet32x4:resnet8x4)")
    bench.add_argument("--lockstep", nargs="+", type=positive_int, default=[4, 8], metavar="N",
                       help="engine: lockstep group sizes to time (default 4 8)")
    bench.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"], default=False,
                       help="engine: torch.compile the models (reduce-overhead: CUDA graphs)")
    bench.add_argument("--workers", type=int, help="reference: DataLoader workers (default min(8, CPUs))")
    bench.add_argument("--json", metavar="FILE", help="engine: also write the table as JSON, one object per row")
    bench.add_argument("--batches", type=int, default=200,
                       help="loader: batches of 64 timed per pipeline (image folder: a tenth as many)")
    bench.set_defaults(fn=cmd_bench)
    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps one given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line. `list`'s PATTERN may also follow its options: argparse takes a command's positional
    arguments in one run, so alone it would refuse `list models --dataset cifar100 'resnet*'`."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "list" and args.pattern is None and len(rest) == 1 and not rest[0].startswith("-"):
        args.pattern = rest.pop()
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def one_line_warnings(show):
    """Python's `show` of a warning, but a study's warnings in one line each, like its errors."""

    def showwarning(message, category, *args, **kwargs):
        if issubclass(category, StudyWarning):
            print(f"mixkd: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return showwarning


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", StudyWarning)
        warnings.showwarning = one_line_warnings(warnings.showwarning)
        return _run(args)


def _run(args) -> int:
    try:
        status = args.fn(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is handled below
        return status
    except MixkdError as e:
        if args.debug:
            raise
        print(f"mixkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmixkd: interrupted; finished runs and checkpoints are kept: the same command resumes",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mixkd ls | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush finds no pipe
        return 141


if __name__ == "__main__":
    sys.exit(main())
