"""Run `python -m charlstm` on every kind of bad input and show exactly what the user sees.

    PYTHONPATH=. python scripts/bad_inputs.py            # prints a Markdown table; exit 1 if any traceback

Each case runs in a fresh temporary directory holding a tiny trained run (`run/`) and a good corpus.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import make_text

TINY = "--hidden 16 --embed 8 --batch-size 4 --seq-len 16 --eval-every 5 -q"


class _CreatesFile:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def make_files(root: Path) -> None:
    (root / "good.txt").write_text(make_text(3000), encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "one.txt").write_bytes(b"a" * 500)
    (root / "short.txt").write_bytes(b"abcdefghij")
    (root / "small.txt").write_text(make_text(300), encoding="utf-8")
    (root / "nul.txt").write_bytes(b"hello\x00world" * 50)
    (root / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    with zipfile.ZipFile(root / "a.zip", "w") as archive:
        archive.writestr("story.txt", "once upon a time " * 200)
    (root / "latin.txt").write_bytes("café naïve señor ".encode("latin-1") * 60)
    (root / "bom-crlf.txt").write_bytes(b"\xef\xbb\xbf" + b"The quick brown fox.\r\nJumps over the dog.\r\n" * 40)
    (root / "spaces.txt").write_bytes(b" \t\n" * 300)
    (root / "emptydir").mkdir()
    subprocess.run(
        [sys.executable, "-m", "charlstm", "train", "good.txt", "--out", "run", "--max-steps", "10", *TINY.split()],
        cwd=root,
        check=True,
        capture_output=True,
    )
    good = torch.load(root / "run" / "latest.pt", weights_only=True)
    raw = (root / "run" / "latest.pt").read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    for i in range(200, len(flipped) - 200, 61):
        flipped[i] ^= 0xFF
    (root / "corrupt.pt").write_bytes(bytes(flipped))
    torch.save({**good, "version": good["version"] + 1}, root / "newer.pt")
    torch.save({"state_dict": good["model"]}, root / "foreign.pt")
    torch.save({**good, "model": {**good["model"], "head.weight": torch.zeros(3, 3)}}, root / "wrong-shape.pt")
    torch.save({**good, "model_config": {**good["model_config"], "hidden": 10**6}}, root / "config-lies.pt")
    torch.save({**good, "model_config": {**good["model_config"], "layers": "two"}}, root / "wrong-types.pt")
    torch.save({**good, "model": {k: v * float("nan") for k, v in good["model"].items()}}, root / "nan.pt")
    torch.save({**good, "model": _CreatesFile()}, root / "evil.pt")
    (root / "other.txt").write_text(make_text(3000) + "Zebra ½ 🙂\n", encoding="utf-8")


CASES = [
    # corpus
    "train nope.txt",
    "train emptydir",
    "train empty.txt",
    "train one.txt",
    "train short.txt",
    "train small.txt --max-steps 2 --batch-size 64 --seq-len 128 -q --out small",
    "train nul.txt",
    "train img.png",
    "train a.zip",
    "train latin.txt",
    f"train latin.txt --encoding latin-1 --max-steps 2 {TINY} --out latin",
    f"train bom-crlf.txt --max-steps 2 {TINY} --out bom",
    f"train spaces.txt --max-steps 2 {TINY} --out spaces",
    "train good.txt --encoding klingon",
    # train flags
    "train good.txt --batch-size 0",
    "train good.txt --batch-size -3",
    "train good.txt --seq-len 0",
    "train good.txt --layers 0",
    "train good.txt --hidden -1",
    "train good.txt --embed 0",
    "train good.txt --dropout -0.1",
    "train good.txt --dropout 1",
    "train good.txt --val-frac 0",
    "train good.txt --val-frac 0.6",
    "train good.txt --max-steps 0",
    "train good.txt --epochs -1",
    "train good.txt --max-time soon",
    "train good.txt --max-time -5m",
    "train good.txt --max-time 0s",
    "train good.txt --lr 0",
    "train good.txt --lr nan",
    "train good.txt --eval-every 0",
    "train good.txt --save-every 0",
    "train good.txt --save-every -2",
    "train good.txt --save-every often",
    "train good.txt --grad-clip -1",
    "train good.txt --weight-decay -1",
    "train good.txt --cell transformer",
    "train good.txt --device tpu",
    "train good.txt --device cuda",
    "train good.txt --precision fp8",
    # export
    "export run --format tflite",
    "export run --format html --precision int4",
    "export run --format onnx --precision float16",
    "export corrupt.pt --format onnx",
    "export evil.pt --format html",
    "export run --format html --out emptydir",
    # sample flags
    "sample run --temp -1",
    "sample run --temp nan",
    "sample run --top-p 0",
    "sample run --top-p 1.5",
    "sample run --top-k -1",
    "sample run --length -1",
    "sample run --num-samples 0",
    "sample run --device tpu",
    "sample run --prime XYZ€",
    "sample run --top-k 1000 --length 30 --seed 1",
    "sample run --length 0",
    "sample run --temp 1e-300 --length 30 --seed 1",
    # eval flags and files
    "eval run nowhere.txt",
    "eval run empty.txt",
    "eval run img.png",
    "eval run good.txt --baseline --order 8",
    "eval run --order 3,x",
    "eval run --samples nowhere.txt",
    "eval run good.txt --records sentence",
    # runs, paths, checkpoints
    "sample",
    "sample nowhere",
    "sample emptydir",
    "sample good.txt",
    "info nowhere",
    "train good.txt --resume",
    "train good.txt --resume gone.pt",
    f"train other.txt --resume run --max-steps 20 {TINY}",
    f"train good.txt --resume run --max-steps 30 --lr 1e39 {TINY}",
    "sample truncated.pt",
    "sample corrupt.pt",
    "sample newer.pt",
    "sample foreign.pt",
    "sample wrong-shape.pt",
    "sample config-lies.pt",
    "sample wrong-types.pt",
    "sample nan.pt",
    "sample evil.pt",
    f"train good.txt --resume truncated.pt --max-steps 20 {TINY}",
    f"train good.txt --resume wrong-shape.pt --max-steps 20 {TINY}",
    f"train good.txt --resume evil.pt --max-steps 20 {TINY}",
    # output
    f"train good.txt --out good.txt/run --max-steps 2 {TINY}",
    f"train good.txt --out good.txt --max-steps 2 {TINY}",
    "sample run --out /proc/nope/x.txt",
]


def main() -> int:
    tracebacks = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_files(root)
        env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
        print("| command | exit | what the user sees (stderr, last line) |\n| --- | --- | --- |")
        for case in CASES:
            done = subprocess.run(
                [sys.executable, "-m", "charlstm", *shlex.split(case)],
                cwd=root,
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            shown = (
                lines[-1]
                if done.returncode
                else (lines[0] if lines and lines[0].startswith("note:") else "(trains/samples fine)")
            )
            tracebacks += "Traceback" in done.stderr
            print(f"| `charlstm {case.replace(TINY, '…')}` | {done.returncode} | {shown.replace('|', '¦')} |")
        if (root / "pwned").exists():
            print("A CHECKPOINT RAN CODE: pwned was created")
            return 1
    print(f"\ntracebacks: {tracebacks}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
