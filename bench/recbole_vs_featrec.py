"""Time to quality on ML-100K: featrec's BERT4Rec vs RecBole's, on the same machine.

Both train BERT4Rec of the same size (dim 64, 2 layers, 2 heads, dropout 0.2, mask ratio
0.2) on ML-100K, leave-one-out (validation target = each user's second-to-last
event by time), and rank all items for every user with the items already seen excluded.
Each runs in its own fresh process for a fixed wall-clock budget (``--budget`` seconds,
counted from the start of the process, data loading included), validating after every
epoch; each keeps its own defaults otherwise (RecBole: batch 2048, constant lr 1e-3, every
prefix of a history a training sequence, histories cut to its default 50 most recent items
(``--recbole-max-len``: at featrec's 200, one RecBole epoch took 48 minutes here, as every
one of ~97k prefixes is padded to 200 and attention is not fused); featrec:
``feature_specs/ml-100k.yaml`` behavior-only, max_len 200). Reported: the best validation
NDCG@10 each reached within the budget, the wall-clock at which RecBole first reached its
best, the wall-clock at which featrec first reached the same value, and their ratio.

RecBole (``recbole==1.2.1``; it needs numpy<2 and an older pandas) is installed by this
script into its own virtual environment, ``bench/out/recbole-venv``, with torch 2.13.0 as
the project's. Its data: this machine's ``u.data`` written as RecBole's atomic
``ml-100k.inter``, so both read the same 100,000 events.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/recbole_vs_featrec.py [--budget 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / "out" / "recbole-venv"
RECBOLE_PACKAGES = [
    "torch==2.13.0",
    "numpy<2",
    "pandas<2.2",
    "scipy<1.14",
    "scikit-learn<1.6",
    "tqdm",
    "colorlog==4.7.2",
    "colorama==0.4.4",
    "pyyaml",
    "tensorboard",
    "thop",
    "tabulate",
    "texttable",
    "psutil",
]

RECBOLE_RUN = r"""
import json, sys, time
start = time.perf_counter()
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import BERT4Rec
from recbole.trainer import Trainer
from recbole.utils import init_seed

data_path, budget, max_len = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
config = Config(model="BERT4Rec", dataset="ml-100k", config_dict={
    "data_path": data_path, "checkpoint_dir": data_path, "load_col": {"inter": [
        "user_id", "item_id", "timestamp"]},
    "MAX_ITEM_LIST_LENGTH": max_len, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
    "n_heads": 2, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "mask_ratio": 0.2,
    "loss_type": "CE", "train_neg_sample_args": None, "learning_rate": 1e-3,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                  "group_by": "user"},
    "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
    "epochs": 100000, "stopping_step": 100000, "eval_step": 1, "use_gpu": False,
    "device": "cpu", "show_progress": False, "seed": 0, "reproducibility": True,
    "state": "WARNING",
})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, _ = data_preparation(config, dataset)
model = BERT4Rec(config, train_data.dataset)
trainer = Trainer(config, model)
print(json.dumps({"ready": time.perf_counter() - start, "users": dataset.user_num - 1,
                  "items": dataset.item_num - 1, "events": len(dataset.inter_feat)}), flush=True)

class Budget(Exception):
    pass

def on_epoch(epoch, score):
    elapsed = time.perf_counter() - start
    print(json.dumps({"epoch": epoch + 1, "elapsed": elapsed, "ndcg@10": score}), flush=True)
    if elapsed > budget:
        raise Budget

try:
    trainer.fit(train_data, valid_data, saved=False, show_progress=False, callback_fn=on_epoch)
except Budget:
    pass
"""

FEATREC_RUN = r"""
import json, sys, tempfile, time
from pathlib import Path
start = time.perf_counter()
from featrec.spec import load_spec
from featrec.train import train

spec_path, budget = sys.argv[1], float(sys.argv[2])
spec = load_spec(spec_path, ["train.eval_every=1"]).behavior_only()

class Budget(Exception):
    pass

def on_epoch(epoch, row):
    elapsed = time.perf_counter() - start
    score = row.get("valid/ndcg@10")
    print(json.dumps({"epoch": epoch, "elapsed": elapsed, "ndcg@10": score}), flush=True)
    if elapsed > budget:
        raise Budget

with tempfile.TemporaryDirectory() as run_dir:
    try:
        train(spec, Path(run_dir), on_epoch_end=on_epoch)
    except Budget:
        pass
"""


def ensure_recbole() -> Path:
    python, done = VENV / "bin" / "python", VENV / "installed"
    if done.is_file():
        return python
    print(f"creating {VENV} (recbole==1.2.1 and its pinned dependencies)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *RECBOLE_PACKAGES], check=True)
    # ray (hyper-parameter search only) and plotly are not needed to train: no deps
    subprocess.run([*pip, "--no-deps", "recbole==1.2.1"], check=True)
    done.touch()
    return python


def atomic_ml100k(folder: Path) -> Path:
    data_dir = os.environ.get("FEATREC_DATA_DIR")
    if not data_dir:
        raise SystemExit("set FEATREC_DATA_DIR to the folder holding ml-100k/u.data")
    source = Path(data_dir) / "ml-100k" / "u.data"
    target = folder / "ml-100k" / "ml-100k.inter"
    target.parent.mkdir(parents=True)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    target.write_text(header + source.read_text(encoding="latin-1"), encoding="latin-1")
    return folder


def run(argv: list[str], name: str) -> list[dict]:
    print(f"running {name} ...", file=sys.stderr)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    rows = []
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("{"):
            rows.append(json.loads(line))
            print(f"  {name}: {line.strip()}", file=sys.stderr)
    if process.wait():
        raise SystemExit(f"{name} failed (exit {process.returncode})")
    return rows


def first_reaching(rows: list[dict], value: float) -> dict | None:
    return next((r for r in rows if r.get("ndcg@10") is not None and r["ndcg@10"] >= value), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per framework")
    parser.add_argument(
        "--recbole-max-len",
        type=int,
        default=50,
        help="RecBole's MAX_ITEM_LIST_LENGTH (its default, 50; 200 takes ~48 min per epoch here)",
    )
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-100k.yaml"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "recbole.json")
    args = parser.parse_args()
    recbole_python = ensure_recbole()
    with tempfile.TemporaryDirectory() as tmp:
        data_path = atomic_ml100k(Path(tmp))
        recbole = run(
            [
                str(recbole_python),
                "-c",
                RECBOLE_RUN,
                str(data_path),
                str(args.budget),
                str(args.recbole_max_len),
            ],
            "recbole",
        )
    featrec = run([sys.executable, "-c", FEATREC_RUN, args.spec, str(args.budget)], "featrec")
    recbole_epochs = [r for r in recbole if "epoch" in r]
    best = max(r["ndcg@10"] for r in recbole_epochs)
    recbole_at = first_reaching(recbole_epochs, best)
    featrec_at = first_reaching(featrec, best)
    featrec_best = max(r["ndcg@10"] for r in featrec if r["ndcg@10"] is not None)
    summary = {
        "budget_s": args.budget,
        "recbole_max_len": args.recbole_max_len,
        "recbole": {"setup": recbole[0], "epochs": recbole_epochs},
        "featrec": {"epochs": featrec},
        "recbole_best_ndcg@10": best,
        "featrec_best_ndcg@10": featrec_best,
        "recbole_seconds_to_best": recbole_at["elapsed"],
        "featrec_seconds_to_recbole_best": featrec_at and featrec_at["elapsed"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"budget {args.budget:.0f} s each, ML-100K, valid NDCG@10 (full ranking, seen excluded)")
    print(f"RecBole BERT4Rec: best {best:.4f} after {recbole_at['elapsed']:.0f} s "
          f"({len(recbole_epochs)} epochs in the budget)")  # fmt: skip
    print(f"featrec BERT4Rec: best {featrec_best:.4f} ({len(featrec)} epochs in the budget)")
    if featrec_at:
        ratio = recbole_at["elapsed"] / featrec_at["elapsed"]
        print(
            f"featrec reached {best:.4f} after {featrec_at['elapsed']:.0f} s "
            f"(epoch {featrec_at['epoch']}): {ratio:.1f}x less wall-clock"
        )
    else:
        print("featrec did not reach RecBole's best within the budget")
    print(f"details: {args.out}")


if __name__ == "__main__":
    main()
