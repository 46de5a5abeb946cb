"""A corpus larger than memory: encoding speed, peak resident memory while encoding and while training, and
time to the first training step, for a generated text file (default 1 GB) against a tiny corpus, same model.

Each measurement runs in a fresh child process that reads its own peak RSS (VmHWM, reset between phases
through /proc/self/clear_refs):
  * reference: the same model trained on a 1 MB corpus (what "the model" alone costs);
  * first run: encode the big file into the run's cache (two streaming passes), memory-map it, train;
  * second run: the same file again: the cache is reused (time to the first step without encoding).
The generated file (in bench-out/, git-ignored) and the run are deleted at the end unless --keep.

    .venv/bin/python benchmarks/huge_corpus.py [--size-mb 1000] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
EXTRA_LINES = ["Café society — naïve façade, «quoted» 🙂", "Tabs\tand  spaces\tkept", "Windows line end\r"]


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def make_corpus(path: Path, size_mb: float) -> None:
    """Shuffled Shakespeare lines plus some non-ASCII, CRLF and tab lines, up to `size_mb` MB."""
    if SHAKESPEARE.exists():
        lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()
    else:
        lines = ["The quick brown fox jumps over the lazy dog."] * 1000
    lines += EXTRA_LINES * 50
    rng = random.Random(0)
    target = int(size_mb * 1e6)
    written = 0
    with open(path, "wb") as handle:
        while written < target:
            rng.shuffle(lines)
            data = ("\n".join(lines) + "\n").encode()
            if len(data) > target - written:
                data = data[: data.rfind(b"\n", 0, target - written) + 1]  # whole lines, whole characters
            handle.write(data)
            written += len(data)
            if not data:
                break


def child(args: argparse.Namespace) -> None:
    """One measured run: build the trainer (encoding or reusing the cache), then train `--steps` steps."""
    import torch

    from charlstm.config import ModelConfig, TrainConfig
    from charlstm.data.corpus import load_corpus
    from charlstm.training.trainer import Trainer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    base_kb = status_kb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    corpus = load_corpus([Path(args.corpus)])
    notes: list[str] = []
    trainer = Trainer(
        corpus,
        ModelConfig(hidden=args.hidden, embed=64),
        TrainConfig(batch_size=64, seq_len=128, max_steps=10**9, eval_every=10**9, val_frac=0.001),
        Path(args.run),
        on_event=lambda kind, data: notes.append(data["text"]) if kind == "note" else None,
    )
    ready = time.perf_counter()
    encode_peak_kb = status_kb("VmHWM")
    reset_peak()
    first_step: list[float] = []

    def should_stop(step: int) -> bool:
        if step == 1:
            first_step.append(time.perf_counter())
        return step >= args.steps

    trainer.train(should_stop=should_stop)
    done = time.perf_counter()
    params = trainer.model.num_params
    print(
        json.dumps(
            {
                "import_rss_mb": base_kb / 1024,
                "prepare_seconds": ready - started,
                "encode_seconds": trainer.data.encode_seconds,
                "encode_peak_rss_mb": encode_peak_kb / 1024,
                "train_peak_rss_mb": status_kb("VmHWM") / 1024,
                "train_rss_anon_mb": status_kb("RssAnon") / 1024,
                "train_rss_file_mb": status_kb("RssFile") / 1024,
                "first_step_seconds": first_step[0] - started,
                "step_seconds": (done - first_step[0]) / max(1, args.steps - 1),
                "tokens": len(trainer.data.ids),
                "memmapped": type(trainer.data.ids).__name__ == "memmap",
                "model_state_mb": params * 4 * 4 / 2**20,  # weights, grads, two AdamW moments (fp32)
                "notes": notes,
            }
        )
    )


def run_child(corpus: Path, run: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--corpus",
        str(corpus),
        "--run",
        str(run),
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1000.0, help="size of the generated corpus")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "huge")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and runs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(args.out).free / 1e9
    need_gb = args.size_mb * 2.2 / 1000  # the file and its uint8 cache
    if free_gb < need_gb + 2:
        sys.exit(f"only {free_gb:.1f} GB free in {args.out}; use a smaller --size-mb")
    small, big = args.out / "small.txt", args.out / "big.txt"
    try:
        make_corpus(small, 1.0)
        started = time.perf_counter()
        make_corpus(big, args.size_mb)
        print(
            f"generated {big} ({big.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s", flush=True
        )
        reference = run_child(small, args.out / "run-small", args)
        print("reference (1 MB corpus) done", flush=True)
        first = run_child(big, args.out / "run-big", args)
        print("first run (encodes) done:", *first["notes"], sep="\n  ", flush=True)
        second = run_child(big, args.out / "run-big", args)
        print("second run (cache) done:", *second["notes"], sep="\n  ", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)

    size_mb = args.size_mb
    print()
    print(
        f"| figure | {size_mb:,.0f} MB corpus, first run | same corpus, second run (cache reused) | reference: 1 MB corpus, same model |"
    )
    print("| --- | --- | --- | --- |")
    print(
        f"| encoding (two passes), MB/s | {size_mb / first['encode_seconds']:,.1f} | no encoding | {1.0 / reference['encode_seconds']:,.1f} |"
    )
    print(
        f"| set-up time (load, encode or reuse, model), s | {first['prepare_seconds']:,.1f} | {second['prepare_seconds']:,.1f} | {reference['prepare_seconds']:,.1f} |"
    )
    print(
        f"| peak RSS while encoding, MB | {first['encode_peak_rss_mb']:,.0f} | {second['encode_peak_rss_mb']:,.0f} | {reference['encode_peak_rss_mb']:,.0f} |"
    )
    print(
        f"| peak RSS while training {args.steps} steps, MB | {first['train_peak_rss_mb']:,.0f} | {second['train_peak_rss_mb']:,.0f} | {reference['train_peak_rss_mb']:,.0f} |"
    )
    print(
        f"| RSS after training: anonymous / file-backed (memory map), MB | {first['train_rss_anon_mb']:,.0f} / {first['train_rss_file_mb']:,.0f} | {second['train_rss_anon_mb']:,.0f} / {second['train_rss_file_mb']:,.0f} | {reference['train_rss_anon_mb']:,.0f} / {reference['train_rss_file_mb']:,.0f} |"
    )
    print(
        f"| time to the first training step, s | {first['first_step_seconds']:,.1f} | {second['first_step_seconds']:,.1f} | {reference['first_step_seconds']:,.1f} |"
    )
    print(
        f"| seconds per training step | {first['step_seconds']:.3f} | {second['step_seconds']:.3f} | {reference['step_seconds']:.3f} |"
    )
    print(
        f"| tokens; memory-mapped | {first['tokens']:,}; {first['memmapped']} | {second['tokens']:,}; {second['memmapped']} | {reference['tokens']:,}; {reference['memmapped']} |"
    )
    print(f"| model + AdamW state, MB | {reference['model_state_mb']:,.1f} | | |")
    print(f"| python + torch after import, MB | {first['import_rss_mb']:,.0f} | | |")
    print("target: peak RSS under 1 GB plus the model")


if __name__ == "__main__":
    main()
