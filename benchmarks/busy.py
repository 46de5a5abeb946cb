"""Busy machine: does `charlstm train` keep its word when another job takes the CPU at the start and the end?

Its word: the --max-time budget, 4-12 validations, a final loss near the quiet run's and below the n-grams'.

Each case trains twice through the real CLI with default flags: once quiet, then once busy. In the busy run the
benchmark starts a competing job of two processes, each a one-thread float32 512 x 512 matmul loop, at the
launch and stops it at 30% of the budget T, then starts it again at 75% of T until the run exits (the start is
where `--size auto` measures the device's speed; the end is where the run must still stop on time). The quiet
run is the reference measured in the same run of this script.

Reports per run: the shape, planned and realised chars/s (run.json), the periodic validations (metrics.jsonl),
the wall clock against T, the final and best val loss; per case the best interpolated Kneser-Ney n-gram (orders
3-7, fitted on the run's training split and scored on the characters its final evaluation scored, as
`charlstm eval --baseline` does); then the targets, each met or NOT met. Writes report.md, results.json, each
run's directory and its console log (<case>-<quiet|busy>.log) under --out.

    .venv/bin/python benchmarks/busy.py [--cases tweets code shakespeare] [--time-scale 1.0] [--only both]
    (full: about 20 minutes; smoke: --cases code --time-scale 0.2)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import train_command  # noqa: E402

from charlstm.errors import CharlstmError  # noqa: E402
from charlstm.evaluate.ngram import KneserNey  # noqa: E402
from charlstm.evaluate.scoring import training_data  # noqa: E402
from charlstm.runs import directory as rundir  # noqa: E402
from charlstm.runs.model_file import load_model  # noqa: E402
from charlstm.training import validation  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
ORDERS = (3, 4, 5, 6, 7)
LOAD_MARKER = "charlstm-busy-load"  # in each competing process's command line: `pgrep -af charlstm-busy-load`
LOAD_PROCESSES = 2
LOAD_WINDOWS = ((0.0, 0.30), (0.75, None))  # fractions of T; None: until the run exits
LOAD_CODE = """
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((512, 512), dtype=np.float32)
b = rng.standard_normal((512, 512), dtype=np.float32)
while True:
    c = a @ b
"""
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

# the targets
WALL_SLACK = 10.0  # busy wall clock <= T + this
VALIDATIONS = (4, 12)  # periodic validations in every run
BUSY_QUIET_GAP = 0.05  # |busy final - quiet final|, nats/char
BEST_FINAL_GAP = 0.02  # |best - final|, nats/char


@dataclass
class Case:
    name: str
    corpus_args: list[str]
    seconds: float  # --max-time at --time-scale 1
    data: Path | None  # the file it needs (None: the built-in corpus)


CASES = {
    "tweets": Case("tweets", [str(DATA / "tweets.csv"), "--field", "Text"], 180.0, DATA / "tweets.csv"),
    "code": Case("code", [], 180.0, None),
    "shakespeare": Case("shakespeare", [str(DATA / "tinyshakespeare.txt")], 100.0, DATA / "tinyshakespeare.txt"),
}


def cpu_model() -> str:
    """lscpu's "Model name" (the CPU changes between machines: say which one measured)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return "unknown CPU"


class Load:
    """The competing job: LOAD_PROCESSES one-thread matmul loops, started and stopped on demand."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.windows: list[list[float | None]] = []  # [start, stop] seconds from the launch
        self.died: list[str] = []  # a loop that was not running when stopped (it would not have loaded anything)

    def start(self, at: float) -> None:
        if self.procs:
            return
        env = {**os.environ, **ONE_THREAD}
        for _ in range(LOAD_PROCESSES):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", LOAD_CODE, LOAD_MARKER],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        self.windows.append([round(at, 2), None])

    def stop(self, at: float | None = None) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                self.died.append(f"pid {proc.pid} exited with {proc.returncode}: {proc.stderr.read().decode()[-300:]}")
            else:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        if self.procs and at is not None:
            self.windows[-1][1] = round(at, 2)
        self.procs = []


def train(case: Case, kind: str, seconds: float, out: Path) -> dict:
    """One `charlstm train` run (quiet or busy), timed from the launch to the exit; its figures."""
    run_dir = out / f"{case.name}-{kind}"
    log = out / f"{case.name}-{kind}.log"
    command = train_command(seconds, run_dir, case.corpus_args, quiet=False)  # the log keeps every line
    print(f"$ {' '.join(command)}  ({kind}; log: {log})", flush=True)
    load = Load() if kind == "busy" else None
    # the moments the load changes, in seconds from the launch: the launch itself, 30% and 75% of T
    events: list[tuple[float, str]] = []
    if load is not None:
        events = sorted(
            [(start * seconds, "start") for start, _ in LOAD_WINDOWS]
            + [(stop * seconds, "stop") for _, stop in LOAD_WINDOWS if stop is not None]
        )
    proc = None
    try:
        with open(log, "w") as sink:
            started = time.perf_counter()
            if events and events[0] == (0.0, "start"):
                load.start(0.0)
                events.pop(0)
            proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
            while True:
                try:
                    proc.wait(timeout=max(0.01, events[0][0] - (time.perf_counter() - started)) if events else None)
                    break
                except subprocess.TimeoutExpired:
                    what = events.pop(0)[1]
                    now = time.perf_counter() - started
                    if what == "start":
                        load.start(now)
                    else:
                        load.stop(now)
            wall = time.perf_counter() - started
        if load is not None:
            load.stop(wall)
    finally:
        if load is not None:
            load.stop()
        if proc is not None and proc.poll() is None:  # Ctrl-C or an error here: the run saves on SIGINT
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    result = figures(run_dir, log)
    result.update(
        kind=kind,
        command=command,
        returncode=proc.returncode,
        wall_seconds=wall,
        max_time_seconds=seconds,
        load_windows=None if load is None else load.windows,
        load_died=None if load is None else load.died,
        log=str(log),
    )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"  charlstm train exited with {proc.returncode}; the end of its log:", *tail, sep="\n    ")
    elif load is not None and load.died:
        print("  a load process died early:", *load.died, sep="\n    ")
    print(
        f"  {kind}: wall {wall:.1f} s (T {seconds:g} s), {result['validations']} validations, final val "
        f"{fmt(result['final_val_loss'], '.4f')}, best {fmt(result['best_val_loss'], '.4f')}",
        flush=True,
    )
    return result


def figures(run_dir: Path, log: Path) -> dict:
    """What run.json, metrics.jsonl and the console log say of a run (None where they do not)."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    try:
        rows = rundir.read_metrics(run_dir)  # the rows that parse (charlstm's own reader)
    except CharlstmError:
        rows = []
    model = run.get("model_config") or {}
    speed = run.get("speed") if isinstance(run.get("speed"), dict) else {}
    notes = [
        line.strip()
        for line in log.read_text(errors="replace").splitlines()
        if line.strip().startswith("--size auto") or "re-plan" in line.lower()
    ]
    return {
        "run_dir": str(run_dir),
        "layers": model.get("layers"),
        "hidden": model.get("hidden"),
        "params": run.get("params"),
        "planned_chars_per_second": speed.get("planned_chars_per_second"),
        "chars_per_second": run.get("chars_per_second"),
        "speed": run.get("speed"),
        "validations": sum(1 for r in rows if isinstance(r, dict) and "val_loss" in r),
        "final_val_loss": run.get("final_val_loss"),
        "best_val_loss": run.get("best_val_loss"),
        "elapsed_seconds": run.get("elapsed_seconds"),
        "validation": run.get("validation"),
        "size_choice": (run.get("train_config") or {}).get("size_choice"),
        "notes": notes,
    }


def ngram_baseline(run_dir: Path) -> dict:
    """Kneser-Ney orders 3-7 fitted on the run's training split (as `charlstm eval --baseline` fits them),
    scored in nats/char on the whole validation split and on the characters the run's final evaluation scored
    (the same when that was the whole split)."""
    started = time.perf_counter()
    loaded = load_model(run_dir, "cpu")
    data = training_data(loaded)
    val = np.asarray(data.val, dtype=np.int64)
    model = KneserNey(np.asarray(data.train), len(loaded.vocab), max(ORDERS))
    train_config = loaded.payload.get("train_config") or {}
    periodic = validation.choose_slice(len(val), train_config["eval_chars"], train_config["seed"])
    final = validation.final_slice(len(val), train_config["final_eval_chars"], periodic, train_config["seed"] + 1)
    # targets are positions 1..len-1 (probability index p - 1); a segment scores positions [start, end)
    mask = np.zeros(len(val) - 1, dtype=bool)
    for segment in final.segments:
        start = 1 + int(segment) * validation.SEGMENT
        mask[start - 1 : min(start + validation.SEGMENT, len(val)) - 1] = True
    whole, sliced = {}, {}
    for order in ORDERS:
        nats = -np.log(model.target_probabilities(val, order))
        whole[order] = float(nats.mean())
        sliced[order] = float(nats[mask].mean())
    scored = sliced if not final.whole else whole
    best = min(ORDERS, key=lambda k: scored[k])
    return {
        "run_dir": str(run_dir),
        "train_chars": len(data.train),
        "split_chars": len(val) - 1,
        "final_chars": int(mask.sum()),
        "final_whole_split": final.whole,
        "whole_split_nats_per_char": {str(k): v for k, v in whole.items()},
        "final_slice_nats_per_char": {str(k): v for k, v in sliced.items()},
        "best_order": best,
        "best_nats_per_char": scored[best],
        "seconds": round(time.perf_counter() - started, 2),
    }


def fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def gap(a, b) -> float | None:
    return None if a is None or b is None else abs(a - b)


def case_table(name: str, case: dict) -> list[str]:
    ngram = case.get("ngram") or {}
    best_ngram = f"{ngram['best_nats_per_char']:.4f} ({ngram['best_order']}-gram)" if ngram.get("best_order") else "-"
    command = " ".join(["charlstm", "train", *case["corpus_args"], "--max-time", f"{case['T']:g}s"])
    lines = [
        f"### {name}: `{command}`",
        "",
        "| run | shape (L x H, params) | planned chars/s | realised chars/s | validations | wall s vs T "
        "| final val loss | best val loss | \\|best-final\\| | best n-gram (order) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, r in case["runs"].items():
        shape = f"{r['layers']} x {r['hidden']}, {r['params']:,}" if r["params"] is not None else "-"
        failed = "" if r["returncode"] == 0 else f" (exit {r['returncode']})"
        lines.append(
            f"| {kind}{failed} | {shape} | {fmt(r['planned_chars_per_second'], ',.0f')} "
            f"| {fmt(r['chars_per_second'], ',.0f')} | {r['validations']} | {r['wall_seconds']:.1f} / {case['T']:g} (run.json {fmt(r['elapsed_seconds'], '.1f')}) "
            f"| {fmt(r['final_val_loss'], '.4f')} | {fmt(r['best_val_loss'], '.4f')} "
            f"| {fmt(gap(r['best_val_loss'], r['final_val_loss']), '.4f')} | {best_ngram} |"
        )
    lines.append("")
    for kind, r in case["runs"].items():
        if r["load_windows"] is not None:
            windows = ", ".join(f"{a:g}-{fmt(b, 'g')} s" for a, b in r["load_windows"])
            lines.append(f"- {kind} load: {LOAD_PROCESSES} one-thread 512 x 512 float32 matmul loops, {windows}")
        speed = r.get("speed") or {}
        if speed.get("replanned"):
            lines.append(f"- {kind} replanned: {speed['replanned']}")
        lines += [f"- {kind} log: {note}" for note in r["notes"]]
    if ngram:
        orders = ngram["final_slice_nats_per_char" if not ngram["final_whole_split"] else "whole_split_nats_per_char"]
        what = (
            "the whole validation split"
            if ngram["final_whole_split"]
            else f"the final evaluation's slice ({ngram['final_chars']:,} of {ngram['split_chars']:,} characters)"
        )
        lines.append(
            f"- n-grams on {what}, fitted on {ngram['train_chars']:,} training characters: "
            + ", ".join(f"{k}: {v:.4f}" for k, v in orders.items())
            + f" nats/char ({ngram['seconds']:.0f} s)"
        )
    elif case.get("ngram_error"):
        lines.append(f"- n-gram baseline: {case['ngram_error']}")
    return [*lines, ""]


def targets(cases: dict) -> list[tuple[bool | None, str]]:
    """(met, what) for each target and run; met None: not measured."""
    found: list[tuple[bool | None, str]] = []
    for name, case in cases.items():
        runs = case["runs"]
        T = case["T"]
        busy, quiet = runs.get("busy"), runs.get("quiet")
        if busy is not None:
            found.append(
                (
                    busy["wall_seconds"] <= T + WALL_SLACK,
                    f"{name} busy wall {busy['wall_seconds']:.1f} s <= T + {WALL_SLACK:g} = {T + WALL_SLACK:g} s",
                )
            )
        low, high = VALIDATIONS
        for kind, r in runs.items():
            found.append(
                (low <= r["validations"] <= high, f"{name} {kind}: {r['validations']} validations in {low}-{high}")
            )
        if busy is not None and quiet is not None:
            d = gap(busy["final_val_loss"], quiet["final_val_loss"])
            found.append(
                (
                    None if d is None else d <= BUSY_QUIET_GAP,
                    f"{name} busy final {fmt(busy['final_val_loss'], '.4f')} within {BUSY_QUIET_GAP} of quiet "
                    f"{fmt(quiet['final_val_loss'], '.4f')} (|diff| {fmt(d, '.4f')})",
                )
            )
        ngram = case.get("ngram")
        for kind, r in runs.items():
            final = r["final_val_loss"]
            met = None if final is None or not ngram else final < ngram["best_nats_per_char"]
            baseline = f"{ngram['best_nats_per_char']:.4f} ({ngram['best_order']}-gram)" if ngram else "-"
            found.append((met, f"{name} {kind}: final {fmt(final, '.4f')} below the best n-gram {baseline}"))
        for kind, r in runs.items():
            d = gap(r["best_val_loss"], r["final_val_loss"])
            found.append(
                (
                    None if d is None else d <= BEST_FINAL_GAP,
                    f"{name} {kind}: |best {fmt(r['best_val_loss'], '.4f')} - final {fmt(r['final_val_loss'], '.4f')}| "
                    f"= {fmt(d, '.4f')} <= {BEST_FINAL_GAP}",
                )
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=list(CASES), help=f"which cases, of {', '.join(CASES)} (default: all)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every case's --max-time")
    parser.add_argument("--only", choices=("quiet", "busy", "both"), default="both", help="which runs of each case")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "busy")
    args = parser.parse_args()
    names = [n for part in args.cases for n in part.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.time_scale <= 0:
        parser.error("--time-scale must be above 0")
    kinds = ("quiet", "busy") if args.only == "both" else (args.only,)
    args.out.mkdir(parents=True, exist_ok=True)

    cpu = cpu_model()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs); {date}; time scale {args.time_scale:g}", flush=True)
    results: dict = {"cpu": cpu, "cpus": os.cpu_count(), "date": date, "time_scale": args.time_scale, "cases": {}}
    skipped: list[str] = []
    for name in names:
        case = CASES[name]
        if case.data is not None and not case.data.is_file():
            reason = f"{name}: skipped, {case.data} not found (the shared reference data)"
            print(reason, flush=True)
            skipped.append(reason)
            continue
        seconds = case.seconds * args.time_scale
        entry = {"corpus_args": case.corpus_args, "T": seconds, "runs": {}}
        results["cases"][name] = entry
        for kind in kinds:
            entry["runs"][kind] = train(case, kind, seconds, args.out)
        usable = [r["run_dir"] for r in entry["runs"].values() if (Path(r["run_dir"]) / "best.pt").exists()]
        if usable:
            print(f"  n-gram baselines (orders {ORDERS[0]}-{ORDERS[-1]}) on {usable[0]}'s split ...", flush=True)
            try:
                entry["ngram"] = ngram_baseline(Path(usable[0]))
            except Exception as exc:  # a benchmark reports what it could not measure
                entry["ngram_error"] = f"{type(exc).__name__}: {exc}"
        else:
            entry["ngram_error"] = "no run left a best.pt"

    found = targets(results["cases"])
    results["skipped"] = skipped
    results["targets"] = [{"met": met, "what": what} for met, what in found]
    lines = [
        "# charlstm train on a busy machine",
        "",
        f"CPU: {cpu} ({os.cpu_count()} logical CPUs); {date}; --time-scale {args.time_scale:g}",
        "",
        f"busy: {LOAD_PROCESSES} one-thread float32 512 x 512 matmul loops from the launch to 30% of T and from "
        "75% of T to the exit; quiet: the same run with nothing else running (the reference, same machine). "
        "Wall: the `charlstm train` process from launch to exit (run.json: the run's own elapsed_seconds).",
        "",
    ]
    lines += [f"- {reason}" for reason in skipped] + ([""] if skipped else [])
    for name, case in results["cases"].items():
        lines += case_table(name, case)
    lines += ["## targets", ""]
    for met, what in found:
        lines.append(f"- {'not measured' if met is None else 'met' if met else 'NOT met'}: {what}")
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    (args.out / "report.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
