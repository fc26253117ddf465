"""Ablations: variants of one spec, trained over seeds, resumable (docs/design.md §4).

Every variant is a transformation of the spec (features dropped or kept by scope, or the
baseline model), so all variants share the split, item vocabulary, evaluation users and
seeds. Layout of an ablation directory::

    spec.yaml                     the spec the variants were made from
    overrides.yaml                settings of single variants (--set VARIANT:KEY=VALUE)
    runs/<variant>/seed<N>/       one training run each (see featrec.train)
    report.md, report.csv, report.png   written by featrec.report
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from featrec import distributed
from featrec.atomic import write_folder, write_text
from featrec.datasets import has_clock_times
from featrec.errors import FeatrecError
from featrec.model.fusion import ATTENTION_FUSIONS
from featrec.report import (
    DIN,
    EMBEDDING_MLP,
    MOST_POPULAR,
    OVERRIDES_FILE,
    headline,
    variant_overrides,
)
from featrec.spec import (
    TREND_TYPES,
    FusionSpec,
    Spec,
    SpecError,
    spec_differences,
    with_overrides,
)
from featrec.train import Experiment, train, write_ranks

log = logging.getLogger(__name__)

SCOPES = ("item", "user", "event")
VARIANT_SECTIONS = ("train", "model", "fusion")  # what --set VARIANT:KEY=VALUE may change
FUSION_METHODS = typing.get_args(FusionSpec.model_fields["method"].annotation)


@dataclass(frozen=True)
class Variant:
    name: str
    spec: Spec
    trained: bool = True  # most-popular needs no training
    description: str = ""
    days: int | None = None  # an untrained baseline over the days before each request


def variants(
    spec: Spec, fusions: Sequence[str] = (), overrides: dict[str, list[str]] | None = None
) -> dict[str, Variant]:
    """Every variant of ``spec``, in report order, keyed by name.

    full · behavior-only · -<scope> · behavior+<scope> · -trends (every trend feature) ·
    -<feature> · then, for each of
    ``fusions`` (other ``fusion.method`` values), each of those with features under that
    method, named ``<variant>@<method>`` · most-popular · embedding-mlp (the Embedding&MLP
    baseline with the same features) · din (DIN: target attention, the same features). A
    name whose features equal an earlier variant's (``-gender`` where gender is the only
    user feature) maps to that variant: it is trained once, under the first name.
    ``overrides`` maps a variant's name to ``KEY=VALUE`` settings of that variant alone
    (``{"din": ["train.lr=3e-4"]}``: a baseline tuned apart from the rest).
    """
    features = list(spec.features)
    scopes = [s for s in SCOPES if any(f.scope == s for f in features)]
    out = {
        "full": Variant("full", spec, description="every declared feature"),
        "behavior-only": Variant(
            "behavior-only", spec.behavior_only(), description="item ids only"
        ),
    }
    by_features = {tuple(f.name for f in features): out["full"]}

    def add(name: str, kept: list, description: str) -> None:
        if not kept or name in out:
            return
        same = by_features.get(tuple(f.name for f in kept))
        if same is not None:
            out[name] = same  # an alias: the same features as an earlier variant
            return
        out[name] = Variant(
            name, spec.model_copy(update={"features": kept}), description=description
        )
        by_features[tuple(f.name for f in kept)] = out[name]

    if len(scopes) > 1:
        for scope in scopes:
            add(f"-{scope}", [f for f in features if f.scope != scope], f"without {scope} features")
        for scope in scopes:
            add(
                f"behavior+{scope}",
                [f for f in features if f.scope == scope],
                f"{scope} features only",
            )
    trends = [f for f in features if f.type in TREND_TYPES]
    if trends and len(trends) < len(features):  # what scoring items as of the request adds
        add("-trends", [f for f in features if f not in trends], "without trend features")
    if len(features) > 1:
        for feature in features:
            # a feature named like a scope ("user") must not take that scope's variant name
            name = f"-{feature.name}"
            if feature.name in SCOPES:
                name = f"-{feature.scope}.{feature.name}"
            add(name, [f for f in features if f is not feature], f"without {feature.name}")
    # fusion methods place the features read from columns (trend features are scored)
    featured = [v for name, v in out.items() if name == v.name and v.spec.input_features]
    for method in dict.fromkeys(fusions):
        setting = fusion_setting(method)
        if all(getattr(spec.fusion, k) == v for k, v in setting.items()):
            continue  # the plain names are that placement already
        for variant in featured:
            fusion = variant.spec.fusion.model_copy(update=setting)
            name = f"{variant.name}@{method}"
            out[name] = Variant(
                name,
                variant.spec.model_copy(update={"fusion": fusion}),
                description=f"{variant.description}; fusion {method}",
            )
    out[MOST_POPULAR] = Variant(
        MOST_POPULAR, spec.behavior_only(), trained=False, description="training-set popularity"
    )
    if has_clock_times(spec.data):
        for days in spec.eval.recency_days:
            name = f"{MOST_POPULAR}-{days}d"
            out[name] = Variant(
                name, spec.behavior_only(), trained=False, days=days,
                description=f"popularity in the {days} day{'s' * (days != 1)} before each "
                "request",
            )  # fmt: skip
    # the baselines take the features they can read (trend features are BERT4Rec's output)
    # (they always predict the next item: train.objective is BERT4Rec's choice)
    inputs, cloze = spec.input_features, {"objective": "cloze"}
    baseline = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"kind": "embedding_mlp"}),
            "train": spec.train.model_copy(update=cloze),
            "features": inputs,
        }
    )
    out[EMBEDDING_MLP] = Variant(
        EMBEDDING_MLP, baseline, description="mean-pooled history + features, MLP (no attention)"
    )
    din = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"kind": "din"}),
            "train": spec.train.model_copy(update={"loss": "sampled_softmax", **cloze}),
            "features": inputs,
        }
    )
    out[DIN] = Variant(
        DIN, din, description="target attention over the history, candidate as query, + features"
    )
    for name, texts in (overrides or {}).items():
        _override(out, name, texts)
    return out


def _override(out: dict[str, Variant], name: str, texts: list[str]) -> None:
    """Apply ``texts`` (``KEY=VALUE``) to the variant ``name`` of ``out``, in place."""
    first = f"--set {name}:{texts[0]}"
    if name not in out:
        raise FeatrecError(f"{first}: unknown variant '{name}'; this spec has: {', '.join(out)}")
    variant = out[name]
    if variant.name != name:
        raise FeatrecError(
            f"{first}: {name} has the same features as {variant.name} and is trained as "
            f"{variant.name}; set {variant.name}:KEY=VALUE"
        )
    for text in texts:
        key = text.partition("=")[0].strip()
        if key.split(".")[0] not in VARIANT_SECTIONS or key == "train.seed":
            raise FeatrecError(
                f"--set {name}:{text}: a variant's own settings are in "
                f"{', '.join(f'{s}.*' for s in VARIANT_SECTIONS)} but train.seed; the data, "
                "features, evaluation and seeds are the ablation's, the same for every variant"
            )
    try:
        spec = with_overrides(variant.spec, texts)
    except SpecError as err:
        raise SpecError(f"variant {name}: {err}") from None
    changed = dataclasses.replace(
        variant, spec=spec, description=f"{variant.description}; {', '.join(texts)}"
    )
    for key, value in out.items():  # its aliases follow
        if value is variant:
            out[key] = changed


def split_overrides(texts: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` values → (the spec's ``KEY=VALUE``, ``{variant: [KEY=VALUE, ...]}`` from
    ``VARIANT:KEY=VALUE``)."""
    plain: list[str] = []
    scoped: dict[str, list[str]] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        name, colon, field = key.partition(":")
        if not sep or not colon:
            plain.append(text)
        elif not name.strip() or not field.strip():
            raise FeatrecError(f"--set {text}: expected VARIANT:KEY=VALUE, e.g. din:train.lr=3e-4")
        else:
            scoped.setdefault(name.strip(), []).append(f"{field.strip()}={value.strip()}")
    return plain, scoped


def fusion_setting(value: str) -> dict:
    """A ``--fusions`` value → the fusion fields it sets: ``METHOD`` (any fusion.method),
    or ``METHOD+SCOPE[+SCOPE]`` (nova / difsr with those scopes fused into the tokens:
    ``nova+event``)."""
    method, *scopes = value.split("+")
    if method not in FUSION_METHODS:
        raise FeatrecError(
            f"--fusions {value}: unknown method '{method}' (expected {', '.join(FUSION_METHODS)}"
            ", or nova / difsr followed by +SCOPE, e.g. nova+event)"
        )
    if scopes and method not in ATTENTION_FUSIONS:
        raise FeatrecError(
            f"--fusions {value}: +SCOPE keeps scopes in the tokens beside an attention-level "
            f"method ({', '.join(ATTENTION_FUSIONS)}); {method} is token level already"
        )
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or len(set(scopes)) != len(scopes):
        raise FeatrecError(f"--fusions {value}: scopes are {', '.join(SCOPES)}, each once")
    return {"method": method, "token_scopes": scopes} if scopes else {"method": method}


def aliases(available: dict[str, Variant]) -> dict[str, str]:
    """Names that stand for an earlier variant with the same features → that variant's name."""
    return {name: v.name for name, v in available.items() if name != v.name}


def select(available: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    """The variants named (all of them when none), each once, in the order given."""
    if not names:
        names = list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise FeatrecError(
            f"--variants: unknown variant(s) {', '.join(unknown)}; this spec has: "
            f"{', '.join(available)}"
        )
    chosen: dict[str, Variant] = {}
    for name in names:
        variant = available[name]
        if name != variant.name:
            log.info("%s has the same features as %s: trained once, as %s", name,
                     variant.name, variant.name)  # fmt: skip
        chosen.setdefault(variant.name, variant)
    return list(chosen.values())


def run_dir(ablation_dir: Path, variant: str, seed: int) -> Path:
    return ablation_dir / "runs" / variant / f"seed{seed}"


def run_ablation(
    spec: Spec,
    ablation_dir: Path,
    seeds: int,
    names: list[str] | None = None,
    progress: bool = False,
    on_run_end: Callable[[str, int], None] | None = None,
    fusions: Sequence[str] = (),
    jobs: int = 1,
    shard: tuple[int, int] = (1, 1),
    overrides: dict[str, list[str]] | None = None,
) -> list[tuple[str, int]]:
    """Train every (variant, seed) not yet finished; return the pairs trained now.

    A pair with ``final_metrics.json`` is finished and never rerun; one with only a last
    checkpoint was interrupted and resumes from it. ``jobs`` > 1 trains that many pairs at
    once, each in a process of its own with ``cpu_count // jobs`` threads (a GPU is shared
    by them: small models leave most of it idle). ``shard`` (i, n) takes the pairs numbered
    i, i + n, i + 2n, ... of the ablation's ordered list, so n machines writing to one shared
    directory finish one ablation between them (a run directory has one writer at a time).
    ``overrides``: settings of single variants (see :func:`variants`), recorded in the
    directory; a variant with runs keeps the settings it was trained with.
    """
    if jobs < 1:
        raise FeatrecError(f"--jobs: expected at least 1; got {jobs}")
    index, count = shard
    if count < 1 or not 1 <= index <= count:
        raise FeatrecError(f"--shard: expected i/n with 1 <= i <= n; got {index}/{count}")
    overrides = overrides or {}
    chosen = select(variants(spec, fusions, overrides), names)
    if fusions and names and not any("@" in v.name for v in chosen):
        log.warning(
            "--fusions %s: none of the variants chosen is under another fusion method (name "
            "them, e.g. full@%s)", " ".join(fusions), fusions[0],
        )  # fmt: skip
    _check_same_spec(spec, ablation_dir)
    pairs = [(v, spec.train.seed + i) for v in chosen for i in range(seeds)]
    _check_runs_match(ablation_dir, pairs)
    _record_overrides(ablation_dir, chosen, overrides)
    todo = []
    for number, (variant, seed) in enumerate(pairs, start=1):
        if (number - 1) % count != index - 1:
            continue  # another shard's
        label = f"[{number}/{len(pairs)}] {variant.name} seed {seed}"
        if (run_dir(ablation_dir, variant.name, seed) / "final_metrics.json").is_file():
            log.info("%s: done already", label)
        else:
            todo.append((label, variant, seed))
    trained = []

    def finished(label: str, name: str, seed: int, final: dict, minutes: float) -> None:
        scores = ", ".join(f"{m} {final['test'][m]:.4f}" for m in headline(spec.eval.primary))
        log.info("%s: test %s (%.1f min)", label, scores, minutes)
        trained.append((name, seed))
        if on_run_end is not None:
            on_run_end(name, seed)

    if jobs == 1 or len(todo) < 2:
        for label, variant, seed in todo:
            started = time.perf_counter()
            final = _run_pair(variant, seed, ablation_dir, label, progress, threads=0)
            finished(label, variant.name, seed, final, (time.perf_counter() - started) / 60)
        return trained
    import concurrent.futures
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no forked torch or polars state
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_die_with_parent
    ) as pool:
        started = time.perf_counter()
        running = {
            pool.submit(_run_pair, variant, seed, ablation_dir, label, False, threads): (
                label, variant.name, seed
            )
            for label, variant, seed in todo
        }  # fmt: skip
        done = set()
        try:
            for future in concurrent.futures.as_completed(running):
                label, name, seed = running[future]
                final = future.result()  # a run's error stops the ablation, named
                finished(label, name, seed, final, (time.perf_counter() - started) / 60)
                done.add(future)
        except BrokenProcessPool:
            unfinished = ", ".join(running[f][0] for f in running if f not in done)
            raise FeatrecError(
                f"{ablation_dir}: a training process died abruptly (killed by a signal, e.g. "
                f"the out-of-memory killer) while these were unfinished: {unfinished}. "
                "Finished pairs are kept and interrupted ones resume from their last "
                "checkpoint: run the same command again (fewer --jobs if memory ran out)"
            ) from None
    return trained


def _die_with_parent() -> None:
    """A worker of ``--jobs`` ends when the ablation process does, however it ends (a
    ``kill`` of it left the workers training on as orphans); its run resumes from its last
    checkpoint. Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent was gone before the request took
        os._exit(1)


def _run_pair(
    variant: Variant, seed: int, ablation_dir: Path, label: str, progress: bool, threads: int
) -> dict:
    """Train (or resume, or evaluate for the untrained baseline) one (variant, seed);
    ``threads`` > 0 sets torch's thread count (a worker process of ``--jobs``)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
    directory = run_dir(ablation_dir, variant.name, seed)
    seeded = _seeded(variant.spec, seed)
    if not variant.trained:
        return _most_popular(seeded, directory, variant)
    resume = (directory / "checkpoints" / "last.pt").is_file()
    log.info("%s: %s", label, "resuming" if resume else "training")
    return train(seeded, directory, resume=resume, progress=progress, variant=variant.name)


def _check_same_spec(spec: Spec, ablation_dir: Path) -> None:
    """An ablation directory belongs to one spec: refuse to mix results of two."""
    path = ablation_dir / "spec.yaml"
    if path.is_file():
        changed = spec_differences(yaml.safe_load(path.read_text(encoding="utf-8")), spec)
        if changed:
            raise FeatrecError(
                f"{ablation_dir}: holds an ablation of a different spec ({path}): "
                f"{'; '.join(changed)}; choose another --out"
            )
        return
    ablation_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    write_text(path, text)  # shards may start together: whole or not at all


def _check_runs_match(ablation_dir: Path, pairs: list[tuple[Variant, int]]) -> None:
    """A (variant, seed) that has a run keeps the spec it was trained with: a variant's
    settings (``--set VARIANT:KEY=VALUE``) changed, or left out, after it trained are refused."""
    for variant, seed in pairs:
        path = run_dir(ablation_dir, variant.name, seed) / "spec.yaml"
        if not path.is_file():
            continue  # not started, or an untrained baseline
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
        changed = spec_differences(stored, _seeded(variant.spec, seed))
        if changed:
            raise FeatrecError(
                f"{path.parent}: trained with another spec than variant {variant.name} has "
                f"now: {'; '.join(changed)}. Give the --set {variant.name}:KEY=VALUE settings "
                f"it was trained with ({ablation_dir / OVERRIDES_FILE}), or choose another --out"
            )


def _record_overrides(
    ablation_dir: Path, chosen: list[Variant], overrides: dict[str, list[str]]
) -> None:
    """Record the settings of the variants trained now in ``overrides.yaml`` (the report
    lists them)."""
    recorded = variant_overrides(ablation_dir)
    updated = dict(recorded)
    for variant in chosen:
        given = overrides.get(variant.name, [])
        if given:
            updated[variant.name] = given
        elif variant.name in updated:
            log.warning(
                "%s: trained now without its recorded settings (%s)",
                variant.name, ", ".join(updated.pop(variant.name)),
            )  # fmt: skip
    for name in overrides.keys() - {v.name for v in chosen}:
        log.warning("--set %s:...: %s is not among the variants trained now", name, name)
    if updated != recorded and distributed.is_main():
        write_text(ablation_dir / OVERRIDES_FILE, yaml.safe_dump(updated, sort_keys=False))


def _seeded(spec: Spec, seed: int) -> Spec:
    return spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})


def _most_popular(spec: Spec, directory: Path, variant: Variant) -> dict:
    """A popularity baseline (all-time, or over ``variant.days``), evaluated and stored like
    a trained run."""
    experiment = Experiment.from_spec(spec)
    (valid, valid_ranks), (test, test_ranks) = (
        experiment.most_popular(split, variant.days) for split in ("valid", "test")
    )
    final = {"name": spec.name, "variant": variant.name, "features": [],
             "seed": spec.train.seed, "test": test, "valid": valid}  # fmt: skip

    def fill(staging: Path) -> None:
        write_ranks(experiment.data, staging, valid_ranks, test_ranks)
        (staging / "final_metrics.json").write_text(
            json.dumps(final, indent=1, allow_nan=False), encoding="utf-8"
        )

    if distributed.is_main():  # under torchrun every rank evaluated; one writes
        write_folder(directory, fill)
    distributed.barrier()
    return final
