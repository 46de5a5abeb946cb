"""How fast does Ctrl-C stop a run? Time from SIGINT to the process's exit, sent while `charlstm train` is
encoding a corpus, training, or validating, with the exit code and whether a checkpoint was left to resume.

    .venv/bin/python benchmarks/interrupt.py                     # this checkout
    .venv/bin/python benchmarks/interrupt.py --root ../before    # another checkout (its flags permitting)

Each case starts the CLI in a fresh process and sends SIGINT at a fixed delay chosen so that the process is in
the phase named (the corpus and flags make that phase last many seconds):
  * encoding:   a generated 100 MB file, its cache removed first, SIGINT 4.5 s after start (starting Python
                and torch takes ~2 s, encoding ~3-5 s more);
  * training:   Tiny Shakespeare (or the 20 MB file), no validation due, SIGINT 15 s after start;
  * validation: a generated 20 MB file (a 2 MB validation split), validating every 20 steps over the whole split
                (--eval-chars 2000000 where the checkout has it), SIGINT 15 s after start.
The generated files are in bench-out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def generated(scratch: Path, size_mb: int) -> Path:
    from huge_corpus import make_corpus

    path = scratch / f"generated-{size_mb}mb.txt"
    if not path.exists() or path.stat().st_size < size_mb * 1e6 * 0.99:
        print(f"generating {path} ({size_mb} MB)", flush=True)
        make_corpus(path, size_mb)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose charlstm is measured")
    parser.add_argument("--scratch", type=Path, default=ROOT / "bench-out" / "budget")
    parser.add_argument("--cases", nargs="+", default=["encoding", "training", "validation"])
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    root = args.root.resolve()
    has_eval_chars = "eval_chars" in (root / "charlstm" / "config.py").read_text()
    env = {**os.environ, "PYTHONPATH": str(root)}
    rows = []
    for case in args.cases:
        out = args.scratch / f"interrupt-{case}"
        if case == "encoding":
            corpus, delay, extra = generated(args.scratch, 100), 4.5, []
        elif case == "training":
            corpus = SHAKESPEARE if SHAKESPEARE.exists() else generated(args.scratch, 20)
            delay, extra = 15.0, ["--eval-every", "1000000"]
        else:
            corpus, delay = generated(args.scratch, 20), 15.0
            extra = ["--eval-every", "20"] + (["--eval-chars", "2000000"] if has_eval_chars else [])
        command = [
            sys.executable,
            "-m",
            "charlstm",
            "train",
            str(corpus),
            "--max-time",
            "10m",
            "--out",
            str(out),
            "--overwrite",
            "-q",
            *extra,
        ]
        print("$", " ".join(command), f"  (SIGINT after {delay:g} s)", flush=True)
        for stale in [*out.glob("*.pt"), *(out.glob("corpus.*") if case == "encoding" else [])]:
            stale.unlink()  # the encoding case encodes afresh (no cache left by an earlier run)
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        seconds = time.perf_counter() - sent
        saved = (out / "latest.pt").exists()
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        rows.append((case, seconds, proc.returncode, saved, tail))
        print(
            f"  -> exit {proc.returncode} {seconds:.2f} s after SIGINT; latest.pt {'saved' if saved else 'absent'}",
            flush=True,
        )
    print(f"\ncharlstm at {root}")
    print(f"{'phase':<11} {'SIGINT->exit s':>14} {'exit':>5} {'latest.pt':>9}  last words")
    for case, seconds, code, saved, tail in rows:
        print(f"{case:<11} {seconds:>14.2f} {code:>5} {'yes' if saved else 'no':>9}  {tail[:150]}")


if __name__ == "__main__":
    main()
