"""The LSTM against interpolated Kneser-Ney n-gram baselines, in bits/char, on a run's validation split (or given
files), with the time the baselines took; and the time to fit the n-gram model on a 10 MB training text, next to
one NumPy sort of as many keys measured in the same run (the fit is ~one sort per order).

    .venv/bin/python benchmarks/baselines.py RUN [--orders 3,5,7] [--files F ...] [--fit-mb 10]

RUN is a run directory (its best.pt) or a .pt file; the run's corpus must be reachable from here (or --corpus).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.evaluate.ngram import KneserNey, parse_orders  # noqa: E402
from charlstm.evaluate.scoring import evaluate, training_data  # noqa: E402
from charlstm.runs.model_file import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--orders", default="3,5,7")
    parser.add_argument("--files", type=Path, nargs="*", default=[])
    parser.add_argument("--corpus", type=Path, nargs="*", default=None)
    parser.add_argument("--fit-mb", type=float, default=10.0, help="size of the fit-time test text (0: skip)")
    args = parser.parse_args()
    orders = parse_orders(args.orders)

    started = time.perf_counter()
    report = evaluate(args.run, args.files, "cpu", orders, args.corpus)
    wall = time.perf_counter() - started
    total = report.total
    what = "validation split (scored as the final evaluation)" if report.split else f"{len(report.rows)} file(s)"
    print(f"{report.checkpoint} (step {report.step:,}) on {what}: {total.targets:,} characters")
    print(f"{'model':<28} {'bits/char':>10} {'nats/char':>10}")
    print(
        f"{'LSTM ' + str(report.model.get('layers')) + ' x ' + str(report.model.get('hidden')):<28} "
        f"{total.nats_per_char / math.log(2):>10.4f} {total.nats_per_char:>10.4f}"
    )
    for order in orders:
        nats = total.baseline[order] / total.targets
        print(f"{'Kneser-Ney ' + str(order) + '-gram':<28} {nats / math.log(2):>10.4f} {nats:>10.4f}")
    if report.recorded is not None:
        print(f"recorded for this checkpoint: {report.recorded:.5f} nats/char ({report.recorded_what})")
    print(
        f"n-gram fit on {report.baseline_train_chars:,} training characters (orders up to {max(orders)}): "
        f"{report.baseline_fit_seconds:.2f} s; scoring all orders: {report.baseline_eval_seconds:.2f} s; "
        f"LSTM scoring: {total.seconds:.2f} s; whole command {wall:.1f} s"
    )

    if args.fit_mb > 0:
        train = np.asarray(training_data(load_model(args.run), args.corpus).train, dtype=np.int64)
        size = int(args.fit_mb * 1e6)
        text = np.resize(train, size)  # the training split repeated up to the size
        vocab = int(text.max()) + 1
        started = time.perf_counter()
        np.sort(np.random.default_rng(0).integers(0, 1 << 40, size))
        sort_seconds = time.perf_counter() - started
        started = time.perf_counter()
        KneserNey(text, vocab, max(orders))
        fit_seconds = time.perf_counter() - started
        print(
            f"fit on {size / 1e6:g}M characters (the training split repeated), orders up to {max(orders)}: "
            f"{fit_seconds:.1f} s; one np.sort of {size / 1e6:g}M int64 keys in the same run: {sort_seconds:.2f} s "
            f"(ratio {fit_seconds / sort_seconds:.1f})"
        )


if __name__ == "__main__":
    main()
