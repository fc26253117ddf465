"""The ``featrec`` command. Only this module prints; library code logs.

Errors a user can fix (bad spec, bad data, bad ``--set``) end with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from featrec.errors import FeatrecError
from featrec.spec import (
    AgeFeature,
    AnyFeature,
    MultiCategoricalFeature,
    NumericFeature,
    PopularityFeature,
    Spec,
    TimeFeature,
    json_schema,
    load_spec,
)

log = logging.getLogger("featrec")
DEVICE_HELP = "auto (default: CUDA where torch sees it), cpu, cuda or cuda:N"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    tokens = _set_values(_variant_values(sys.argv[1:] if argv is None else list(argv)))
    args = parser.parse_args(tokens)
    args.tokens = tokens  # train --nproc starts the same command under torch's launcher
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except FeatrecError as err:
        if args.debug:
            raise
        print(f"featrec: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featrec: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a path the user gave: a folder where a file goes, no space, ...
        if args.debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"featrec: error: {where}{one_line(err.strerror or str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # the boundary: a bug of featrec's, never a bare traceback
        if args.debug:
            raise
        print(
            f"featrec: error: unexpected {type(err).__name__}: {one_line(str(err))} "
            "(a featrec bug: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


def one_line(message: str, limit: int = 400) -> str:
    """A message on one line, cut to ``limit`` characters (a long value stays readable)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _set_values(argv: list[str]) -> list[str]:
    """``--set -item:train.lr=1e-3`` → ``--set=-item:...``: a variant's name may start with a
    dash, which argparse takes for an option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--set" and token.startswith("-") and ":" in token.split("=")[0]:
            out[-1] = f"--set={token}"
        else:
            out.append(token)
    return out


def _variant_values(argv: list[str]) -> list[str]:
    """Spell every value of ``--variants`` as ``--variants=NAME``.

    Variant names such as ``-item`` start with a dash, which argparse takes for an option
    (``--variants -item`` fails with "expected at least one argument"). Values run up to the
    next ``--option`` or ``-h``, as argparse reads them, and stop at a ``.yaml``/``.yml``
    file (the spec written after them). A variant named ``-h`` (a feature called ``h``)
    is chosen as ``--variants=-h``.
    """
    out: list[str] = []
    inside = False
    for token in argv:
        name, _, value = token.partition("=")
        if len(name) > 3 and "--variants".startswith(name):  # argparse's abbreviations too
            inside = True
            out.append(f"--variants={value}" if value else "--variants")
            continue
        spec_file = token.endswith((".yaml", ".yml"))
        if inside and not token.startswith("--") and token != "-h" and not spec_file:
            if out[-1] == "--variants":
                out.pop()
            out.append(f"--variants={token}")
            continue
        inside = False
        out.append(token)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featrec", description="Feature-aware BERT4Rec: specs, data, training, ablations."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (for reports)"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def spec_command(name: str, help_text: str, set_help: str = "") -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("spec", help="spec file (YAML)")
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec field, e.g. --set train.epochs=5 (repeatable)" + set_help,
        )
        command.add_argument(
            "--behavior-only", action="store_true", help="drop every side feature (ids only)"
        )
        return command

    validate = spec_command("validate", "check a spec and print it resolved")
    validate.set_defaults(run=_validate)

    prepare = spec_command("prepare", "load, encode and split the data; print statistics")
    prepare.add_argument("--force", action="store_true", help="rebuild even if cached")
    prepare.set_defaults(run=_prepare)

    train = spec_command("train", "train a model; print the test metrics of the best epoch")
    train.add_argument("--out", type=Path, help="run directory (default runs/NAME/TIMESTAMP)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch, checkpointed (continue later with --resume): for jobs "
        "with a time limit",
    )
    train.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train data-parallel on N processes of this machine, started by torch's launcher "
        "(as torchrun --nproc-per-node N -m featrec train ...; gloo on the CPU, nccl on CUDA)",
    )  # fmt: skip
    train.add_argument(
        "--log", action="append", default=[], choices=["tensorboard", "mlflow"],
        help="also report to TensorBoard (RUN_DIR/tensorboard) or MLflow (MLFLOW_TRACKING_URI, "
        "else ./mlruns); repeatable",
    )  # fmt: skip
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained run's best checkpoint")
    evaluate.add_argument("run_dir", type=Path, help="run directory written by featrec train")
    evaluate.add_argument("--split", choices=["valid", "test"], default="test")
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.set_defaults(run=_evaluate)

    ablate = spec_command(
        "ablate", "train behavior-only, per-scope and per-feature variants",
        "; VARIANT:KEY=VALUE sets one variant only, e.g. --set din:train.lr=3e-4",
    )  # fmt: skip
    ablate.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    ablate.add_argument(
        "--variants", nargs="+", action="extend", metavar="NAME",
        help="only these variants (names may start with a dash: --variants full -item)",
    )  # fmt: skip
    ablate.add_argument(
        "--fusions", nargs="+", default=[], metavar="METHOD",
        help="also every variant with features under these fusion.method values "
        "(named VARIANT@METHOD, e.g. full@nova), compared with full@METHOD; nova+event: "
        "nova with the event features fused into the tokens (fusion.token_scopes)",
    )  # fmt: skip
    ablate.add_argument("--out", type=Path, help="ablation directory (default ablations/NAME)")
    ablate.add_argument(
        "--jobs", type=int, default=1,
        help="train this many (variant, seed) pairs at once, each a process with "
        "cpu_count / jobs threads (default 1)",
    )  # fmt: skip
    ablate.add_argument(
        "--shard", type=_shard, default=(1, 1), metavar="I/N",
        help="take the I-th of N deterministic shares of the (variant, seed) pairs: N "
        "machines writing to one shared --out finish one ablation (featrec report DIR then "
        "reports the union)",
    )  # fmt: skip
    ablate.add_argument("--list", action="store_true", help="list the variants and exit")
    ablate.set_defaults(run=_ablate)

    report = commands.add_parser("report", help="render an ablation's report from its results")
    report.add_argument("ablation_dir", type=Path)
    report.set_defaults(run=_report)

    recommend = commands.add_parser("recommend", help="top-k items from a trained run")
    recommend.add_argument("run_dir", type=Path, help="run directory written by featrec train")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one user of the run's data (whole history)")
    who.add_argument("--input", type=Path, help="requests file (.csv / .parquet)")
    who.add_argument("--all-users", action="store_true", help="every user of the run's data")
    recommend.add_argument("--at", help="request time: unix seconds or ISO 8601 (default now)")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--out", type=Path, help="write recommendations (.parquet / .csv)")
    recommend.add_argument("--device", default="auto", help=DEVICE_HELP)
    recommend.set_defaults(run=_recommend)

    export = commands.add_parser("export", help="write a torch.export program + encoders")
    export.add_argument("run_dir", type=Path, help="run directory written by featrec train")
    export.add_argument("--out", type=Path, required=True, help="folder to write")
    export.add_argument(
        "--top-k", type=int, metavar="K",
        help="the program returns each request's K best items (chunked, the window's own "
        "items excluded) instead of a score for every item",
    )  # fmt: skip
    export.set_defaults(run=_export)

    synth = commands.add_parser(
        "synth", help="write a synthetic data set with planted structure, and its spec"
    )
    synth.add_argument("out", type=Path, help="folder to write (parquet tables, spec, README)")
    synth.add_argument("--users", type=int, required=True)
    synth.add_argument("--items", type=int, required=True)
    synth.add_argument("--events", type=int, required=True, help="at least 3 per user")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--clusters", type=int, help="item clusters (default: from --items)")
    synth.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    synth.set_defaults(run=_synth)

    schema = commands.add_parser("schema", help="print the spec's JSON Schema")
    schema.set_defaults(run=_schema)
    return parser


def _load(args: argparse.Namespace) -> Spec:
    spec = load_spec(args.spec, args.overrides)
    spec.require_source()
    spec.check_output_items()
    return spec.behavior_only() if args.behavior_only else spec


def _validate(args: argparse.Namespace) -> int:
    from featrec.datasets import load_card

    spec = _load(args)
    card = load_card(spec.data.dataset) if spec.data.dataset else None
    _check_gpus(spec.train.device)
    print(f"{args.spec}: OK")
    print(describe_spec(spec, card.title if card else None))
    return 0


def _check_gpus(device: str, driver: Path = Path("/proc/driver/nvidia/gpus")) -> None:
    """``train.device`` cuda / cuda:N against the NVIDIA GPUs the driver lists, without
    importing torch (validate stays fast). Where the driver lists none it is an error;
    training checks with torch whatever this says (a CPU build of torch sees no GPU)."""
    if not device.startswith("cuda") or not driver.parent.parent.is_dir():
        return  # not Linux with /proc/driver: nothing to ask without torch
    found = len(list(driver.iterdir())) if driver.is_dir() else 0
    wanted = int(device.partition(":")[2] or 0)
    if wanted >= found:
        have = f"GPUs 0-{found - 1}" if found > 1 else ("GPU 0" if found else "no NVIDIA GPU")
        raise FeatrecError(f"train.device: {device} asked for, but this machine has {have}")


def _synth(args: argparse.Namespace) -> int:
    from featrec.synth import SynthConfig, write

    config = SynthConfig(args.users, args.items, args.events, args.seed, args.clusters)
    structure = write(config, args.out, force=args.force)
    ceiling = structure["ceilings"]
    print(
        f"wrote {args.out} ({args.events:,} events, {args.users:,} users, {args.items:,} items, "
        f"{structure['config']['clusters']} clusters); ceiling NDCG@10 "
        f"{ceiling['oracle']['ndcg@10']:.4f} ({ceiling['oracle_without_hour']['ndcg@10']:.4f} "
        f"without the hour). Train: featrec train {args.out / 'spec.yaml'}"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from featrec.sequences import prepare

    spec = _load(args)
    started = time.perf_counter()
    prepared, folder = prepare(spec, refresh=args.force)
    seconds = time.perf_counter() - started
    print(describe_stats(spec.name, prepared.stats))
    print(f"prepared in {seconds:.2f} s; cached at {folder}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from featrec import distributed
    from featrec.train import Paused, default_run_dir, train

    if args.resume and args.out is None:
        raise FeatrecError("--resume needs --out RUN_DIR: the run to continue")
    if args.stop_after is not None and args.stop_after < 1:
        raise FeatrecError(f"--stop-after: expected an epoch of at least 1; got {args.stop_after}")
    if args.nproc < 1:
        raise FeatrecError(f"--nproc: expected at least 1; got {args.nproc}")
    if args.nproc > 1:
        return _launch(args)
    if distributed.launched() and args.out is None:
        raise FeatrecError(
            "under torchrun, give --out RUN_DIR: every rank must write to one run directory "
            "(the default's name has a timestamp)"
        )
    spec = _load(args)
    run_dir = args.out or default_run_dir(spec)
    log.info("run directory %s", run_dir)

    def stop(epoch: int, row: dict) -> None:
        if args.stop_after is not None and epoch >= args.stop_after:
            raise Paused(epoch)

    try:
        final = train(
            spec, run_dir, resume=args.resume, progress=sys.stderr.isatty(), log_to=args.log,
            on_epoch_end=stop,
        )  # fmt: skip
    except Paused as paused:
        if distributed.is_main():
            print(f"paused after epoch {paused.epoch}: continue with --out {run_dir} --resume")
        return 0
    if not distributed.is_main():
        return 0  # rank 0 reports for the run
    print(
        f"{final['name']} ({final['variant']}): best epoch {final['best_epoch']} of "
        f"{final['epochs_run']}, {final['train_seconds'] / 60:.1f} min; run in {run_dir}"
    )
    rows = {"test": final["test"], "most popular (test)": final["most_popular"]["test"]}
    for window, metrics in final["recent_popular"]["test"].items():
        rows[f"popular, last {window} (test)"] = metrics
    print(describe_metrics(rows))
    if "cold_test" in final:
        cold = final["cold_test"]
        print(f"cold items held out: {cold['users']:,} test users with a cold target")
        if cold["users"]:
            table = {"model, cold targets": cold["model"]}
            table["most popular, cold targets"] = cold["most_popular"]
            print(describe_metrics(table))
            print(f"random ranking: hr@10 {cold['random'].get('hr@10', 0.0):.4f}")
    if final["fusion_weights"]:
        weights = ", ".join(f"{k} {v:.3f}" for k, v in final["fusion_weights"].items())
        print(f"fusion weights ({final['fusion']}): {weights}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from featrec.train import evaluate_run

    result = evaluate_run(args.run_dir, args.split, device=args.device)
    split = args.split
    rows = {split: result["metrics"], f"most popular ({split})": result["most_popular"]}
    for window, metrics in result["recent_popular"].items():
        rows[f"popular, last {window} ({split})"] = metrics
    print(describe_metrics(rows))
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from featrec.ablate import run_ablation, select, split_overrides, variants

    if args.behavior_only:
        raise FeatrecError("ablate makes the behavior-only variant itself; drop --behavior-only")
    args.overrides, scoped = split_overrides(args.overrides)
    spec = _load(args)
    if args.seeds < 1:
        raise FeatrecError(f"--seeds: expected at least 1; got {args.seeds}")
    if args.list:  # the variants named (checked as a run checks them), else all
        available = variants(spec, args.fusions, scoped)
        names = None
        if args.variants:
            names = {*args.variants, *(v.name for v in select(available, args.variants))}
        for name, variant in available.items():
            if names is not None and name not in names:
                continue
            what = variant.description if name == variant.name else f"same as {variant.name}"
            print(f"{name:24s} {what}")
        return 0
    out = args.out or Path("ablations") / spec.name
    run_ablation(
        spec, out, args.seeds, args.variants, progress=sys.stderr.isatty() and args.jobs == 1,
        fusions=args.fusions, jobs=args.jobs, shard=args.shard, overrides=scoped,
    )  # fmt: skip
    from featrec import distributed

    if not distributed.is_main():
        return 0  # under torchrun, rank 0 writes the report
    return _report(argparse.Namespace(ablation_dir=out))


def _launch(args: argparse.Namespace) -> int:
    """``featrec train ... --nproc N``: the same command under torch's launcher, N ranks."""
    import subprocess

    spec = _load(args)  # a bad spec fails here, once, not in N processes
    from featrec.devices import resolve_device

    _check_ranks(args.nproc, resolve_device(spec.train.device))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={args.nproc}", "-m", "featrec", *_without_nproc(args.tokens),
    ]  # fmt: skip
    if args.out is None:  # one directory for every rank (the default has a timestamp)
        from featrec.train import default_run_dir

        command += ["--out", str(default_run_dir(spec))]
    return subprocess.run(command, check=False).returncode


def _check_ranks(ranks: int, device) -> None:
    """``--nproc`` ranks on this machine: one per GPU on CUDA, at most one per CPU core on
    the CPU (more would only share the cores, each rank a whole process and its memory)."""
    import torch

    if device.type == "cuda":
        have, what = torch.cuda.device_count(), "CUDA device(s): one rank per GPU"
    else:
        have, what = os.cpu_count() or 1, "CPU core(s): at most one rank per core"
    if ranks > have:
        raise FeatrecError(f"--nproc: at most {have} here ({have} {what}); got {ranks}")


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = True
            continue
        if token.startswith("--nproc="):
            continue
        out.append(token)
    return out


def _shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` → (I, N); run_ablation checks the range."""
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 1/2; got {text!r}")
    return int(index), int(count)


def _report(args: argparse.Namespace) -> int:
    from featrec.report import write_report

    paths = write_report(args.ablation_dir)
    print(paths[0].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from featrec.recommend import load, read_requests, recommend_requests

    if args.k < 1:
        raise FeatrecError(f"--k: expected at least 1; got {args.k}")
    if (args.input or args.all_users) and args.out is None:
        raise FeatrecError("--input / --all-users write a table: give --out recs.parquet")
    if args.out is not None and args.out.suffix.lower() not in (".parquet", ".csv"):
        raise FeatrecError(f"--out {args.out}: expected a .parquet or .csv file name")
    recommender = load(args.run_dir, device=args.device)
    if args.input:
        table = recommend_requests(recommender, read_requests(args.input), args.k, str(args.input))
    else:
        users = None if args.all_users else [args.user]
        table = recommender.for_known_users(users, at=args.at, k=args.k)
    if args.out is None:
        print(table.select("rank", "item_id", "score", "fallback"))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix.lower() == ".csv":
        table.write_csv(args.out)
    else:
        table.write_parquet(args.out)
    print(f"{table['user_id'].n_unique():,} users, {table.height:,} rows → {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from featrec.export import export_run

    if args.top_k is not None and args.top_k < 1:
        raise FeatrecError(f"--top-k: expected at least 1; got {args.top_k}")
    path = export_run(args.run_dir, args.out, top_k=args.top_k)
    print(f"exported {path} (+ inputs.json, encoders.json, spec.yaml, item_popularity.json)")
    return 0


# ---------------------------------------------------------------------------------------
# text


def describe_metrics(tables: dict[str, dict[str, float]]) -> str:
    """Rows: each metric set; columns: HR / NDCG / MRR at each K."""
    first = next(iter(tables.values()))
    keys = [k for k in first if "/" not in k] + [k for k in first if "/" in k]
    rows = [["", *keys]]
    for label, metrics in tables.items():
        rows.append([label, *(f"{metrics[k]:.4f}" for k in keys)])
    return _table(rows, indent="")


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def describe_spec(spec: Spec, card_title: str | None = None) -> str:
    data = spec.data
    source = (
        f"dataset card {data.dataset}" + (f" ({card_title})" if card_title else "")
        if data.dataset
        else f"interactions {data.interactions}"
        + (f", users {data.users}" if data.users else "")
        + (f", items {data.items}" if data.items else "")
    )
    lines = [f"name: {spec.name}", f"data: {source}"]
    if not spec.features:
        lines.append("features: none (behavior-only: item ids only)")
    else:
        lines.append(f"features ({len(spec.features)}):")
        rows = [["scope", "name", "type", "column", "at the predicted slot", "details"]]
        for scope in ("item", "user", "event"):
            for feature in spec.features_in(scope):
                rows.append(
                    [
                        scope,
                        feature.name,
                        feature.type,
                        feature.column,
                        _visibility(feature),
                        _details(feature),
                    ]
                )
        for feature in spec.trend_features:
            rows.append(["item", feature.name, feature.type, "-", "scored only", _details(feature)])
        lines.append(_table(rows))
    m, t, e = spec.model, spec.train, spec.eval
    lines += [
        f"fusion: {spec.fusion.method} (user features: {spec.fusion.user})"
        + (
            f", auxiliary attribute loss {spec.fusion.aux_weight}" if spec.fusion.aux_weight else ""
        ),
        f"model: dim {m.dim}, layers {m.layers}, heads {m.heads}, max_len {m.max_len}, "
        f"dropout {m.dropout}, attention_dropout {m.attention_dropout}, init {m.init}"
        + (f", kind {m.kind}" if m.kind != "bert4rec" else ""),
        f"train: mask_prob {t.mask_prob}, batch {t.batch_size}, lr {t.lr}, epochs {t.epochs}, "
        f"patience {t.patience}, seed {t.seed}",
        f"eval: {e.split}, ks {e.ks}, exclude_seen {e.exclude_seen}",
    ]
    return "\n".join(lines)


def _visibility(feature: AnyFeature) -> str:
    label = "hidden" if feature.hidden_at_target else "visible"
    return f"{label} (known_at {feature.known_at})" if feature.known_at else label


def _details(feature: AnyFeature) -> str:
    if isinstance(feature, NumericFeature):
        bins = f", {feature.bins} bins" if feature.transform == "quantile_bins" else ""
        return feature.transform + bins
    if isinstance(feature, TimeFeature):
        return f"parts {', '.join(feature.parts)}; tz {feature.timezone}"
    if isinstance(feature, MultiCategoricalFeature) and feature.separator:
        return f"split on {feature.separator!r}"
    if isinstance(feature, PopularityFeature):
        what = "rank by events" if feature.measure == "rank" else "events"
        return f"{what} in the {feature.window_days} days before the request, log2 buckets"
    if isinstance(feature, AgeFeature):
        return "days since its first event, before the request, log2 buckets"
    return ""


def _cold_text(stats: dict) -> str:
    cold = stats.get("cold_items")
    return f" ({cold:,} cold items: no training events)" if cold else ""


def describe_stats(name: str, stats: dict) -> str:
    split = stats["split"]
    lines = [
        f"{name}: {stats['users']:,} users, {stats['items']:,} items, {stats['events']:,} events"
        + _cold_text(stats),
        f"split: {split['method']}: {split['train_events']:,} training events, "
        f"{split['valid_users']:,} validation users, {split['test_users']:,} test users, "
        f"{split['left_out_users']:,} users left out of evaluation "
        "(fewer than 3 events or no target in the window)",
    ]
    for part, gap in split.get("target_gap_days", {}).items():
        lines.append(
            f"{part} targets: {gap['median']:g} days after the user's previous event "
            f"(median; quartiles {gap['q25']:g}-{gap['q75']:g})"
        )
    if "valid_from" in split:
        lines.append(
            f"windows: validation from {split['valid_from']}, test from {split['test_from']}"
        )
    if stats["features"]:
        rows = [["feature", "scope", "type", "cardinality (incl. 4 reserved ids)"]]
        for feature, info in stats["features"].items():
            size = info["cardinality"]
            if isinstance(size, dict):
                size = ", ".join(f"{part} {n}" for part, n in size.items())
            elif size is None:
                size = "continuous"
            rows.append([feature, info["scope"], info["type"], str(size)])
        lines += ["features:", _table(rows)]
    else:
        lines.append("features: none (behavior-only)")
    return "\n".join(lines)


def console() -> None:
    """The ``featrec`` command and ``python -m featrec``: :func:`main`, then an exit that
    skips the interpreter's teardown. Unloading torch and torchmetrics module by module
    takes 0.5-0.8 s of a command's wall-clock time and does nothing a finished command
    needs: output is flushed and the logging handlers are closed first, and nothing featrec
    opens is left to close (checkpoints, trackers and files are closed where they are
    written)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    console()
