"""charlstm export: parity of each format and cell with the model, export sizes, and the page's speed.

For each cell (lstm, gru, rnn) a run is exported through the real CLI in all three formats, then:
  * ONNX (onnxruntime) and TorchScript (torch.jit.load): max |Δlogit| and max |Δp| against the model's own
    forward over 200 steps of a prime and a sample;
  * the page (headless Chromium): max |Δp| of its next-character distribution against charlstm's after each of
    several primes, and the float16 error the page states.
Sizes: every export of the default model (1 x 384 LSTM) and of a 3 x 512 LSTM (random weights: a size does not
depend on training), next to the checkpoint's.
Speed, default model, one stream, all measured in this run: the page's chars/s in Chromium (its bare step and
draw, and the streaming Generate button), next to charlstm's own sampler (fast NumPy path and plain path),
TorchScript's generate and an onnxruntime loop.

    .venv/bin/python benchmarks/export.py --lstm /path/to/run     # runs not given are trained (--train-seconds)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, train_for
from charlstm.checkpoint import store as ckpt
from charlstm.config import ModelConfig, SampleConfig
from charlstm.generate.sample import sample_text
from charlstm.model.charrnn import CharRNN
from charlstm.runs.model_file import load_model
from tests.browser import open_page, start_browser

CELLS = ("lstm", "gru", "rnn")
FORMATS = ("onnx", "torchscript", "html16", "html32")  # html16/32: the page with float16 / float32 weights
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript", "html16": "-f16.html", "html32": "-f32.html"}
PRIMES = ("ROMEO:", "First Citizen:\nWe are", "the king", "\n\n", "What say you")
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def export(run: Path, fmt: str, stem: Path) -> tuple[Path, float]:
    """`charlstm export RUN --format FMT --out STEM.<suffix>` (html16, html32: --format html --precision
    float16/float32); returns the file and the command's seconds."""
    out = stem.with_name(stem.name + SUFFIXES[fmt])
    precision = {"html16": ["--precision", "float16"], "html32": ["--precision", "float32"]}.get(fmt, [])
    command = [sys.executable, "-m", "charlstm", "export", str(run), "--format", "html" if precision else fmt]
    command += [*precision, "--out", str(out)]
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return out, time.perf_counter() - began


def probe(loaded) -> tuple[list[int], np.ndarray]:
    """200 ids (a prime, then a sample; the end-of-record marker first on a record-trained model) and the
    model's logits over them in one forward."""
    vocab = loaded.vocab
    prime = "".join(c for c in "ROMEO: the lazy dog" if c in vocab.index)
    text = sample_text(loaded, SampleConfig(prime=prime, length=400, temperature=1.0, seed=0), start="zeros")[0]
    eor = vocab.end_of_record
    ids = ([eor] if eor is not None else []) + vocab.encode(text).tolist()
    ids = (ids * 200)[:200]
    with torch.inference_mode():
        logits, _ = loaded.model(torch.tensor([ids]))
    return ids, logits[0].numpy()


def gaps(rows: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    dp = torch.softmax(torch.from_numpy(rows).double(), -1) - torch.softmax(torch.from_numpy(expected).double(), -1)
    return float(np.abs(rows - expected).max()), float(dp.abs().max())


def onnx_parity(path: Path, loaded, ids, expected) -> tuple[float, float]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    config = loaded.model.config
    names = [i.name for i in session.get_inputs()][1:]
    state = {n: np.zeros((config.layers, 1, config.hidden), np.float32) for n in names}
    rows = []
    for token in ids:
        logits, *new = session.run(None, {"ids": np.array([token], np.int64), **state})
        state = dict(zip(names, new))
        rows.append(logits[0])
    return gaps(np.stack(rows), expected)


def torchscript_parity(path: Path, loaded, ids, expected) -> tuple[float, float]:
    module = torch.jit.load(str(path))
    config = loaded.model.config
    state = [torch.zeros(config.layers, 1, config.hidden) for _ in range(2 if config.cell == "lstm" else 1)]
    rows = []
    with torch.inference_mode():
        for token in ids:
            logits, *state = module(torch.tensor([token]), *state)
            rows.append(logits[0].numpy())
    return gaps(np.stack(rows), expected)


def page_parity(driver, path: Path, loaded) -> tuple[float, float]:
    """(max |Δp| over PRIMES, the error the page states)."""
    open_page(driver, path)
    vocab = loaded.vocab
    worst = 0.0
    for prime in PRIMES:
        prime = "".join(c for c in prime if c in vocab.index)
        eor = vocab.end_of_record
        ids = ([eor] if eor is not None else []) + vocab.encode(prime).tolist() or [vocab.index["\n"]]
        with torch.inference_mode():
            logits, _ = loaded.model(torch.tensor([ids]))
        expected = torch.softmax(logits[0, -1].double(), -1).numpy()
        got = np.array(driver.execute_script("return window.charlstm.distribution(arguments[0])", prime))
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst, driver.execute_script("return window.charlstm.error")


def size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


def timed(function, *args, repeat: int = 3) -> float:
    """The best of `repeat` timings, seconds."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - began)
    return best


def speeds(driver, page: Path, torchscript: Path, onnx: Path, run: Path, length: int) -> list[tuple[str, float]]:
    loaded = load_model(run)
    config = SampleConfig(length=length, temperature=1.0, seed=1)
    rows = [
        ("charlstm sample (fast NumPy stepper)", length / timed(sample_text, loaded, config)),
        ("charlstm sample (plain path, fast=False)", length / timed(lambda: sample_text(loaded, config, fast=False))),
    ]
    module = torch.jit.load(str(torchscript))
    module.generate("", 50, 1.0, 1)  # warm the interpreter's profiling runs
    rows.append(("TorchScript generate", length / timed(module.generate, "", length, 1.0, 1)))

    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    model_config = loaded.model.config
    names = [i.name for i in session.get_inputs()][1:]

    def onnx_loop() -> None:  # the README's sampler loop
        rng = np.random.default_rng(0)
        state = {n: np.zeros((model_config.layers, 1, model_config.hidden), np.float32) for n in names}
        token = 0
        for _ in range(length):
            logits, *new = session.run(None, {"ids": np.array([token], np.int64), **state})
            state = dict(zip(names, new))
            p = np.exp(logits[0] - logits[0].max())
            token = int(rng.choice(len(p), p=p / p.sum()))

    rows.append(("onnxruntime loop (the README's sampler)", length / timed(onnx_loop)))

    open_page(driver, page)
    driver.execute_script("return window.charlstm.benchmark(200)")  # warm the JIT
    bare = [driver.execute_script("return window.charlstm.benchmark(arguments[0])", length) for _ in range(3)]
    rows.append(("page in Chromium: step + draw", max(b["chars_per_second"] for b in bare)))
    best = 0.0
    for _ in range(3):
        driver.execute_script(
            "document.getElementById('length').value = arguments[0]; window.charlstm.lastRun = null;"
            "document.getElementById('prime').value = ''; document.getElementById('generate').click();",
            length,
        )
        while driver.execute_script("return window.charlstm.lastRun") is None:
            time.sleep(0.05)
        last = driver.execute_script("return window.charlstm.lastRun")
        best = max(best, last["chars"] / last["seconds"])
    rows.append(("page in Chromium: Generate button, streaming", best))
    return rows


def record_endings(driver, run: Path, out: Path, samples: int, cap: int) -> list[tuple[str, int, float]]:
    """A record-trained model: of `samples` samples capped at `cap` characters, how many end at the model's
    end-of-record marker, and their median length, in charlstm, TorchScript's generate and the page."""
    loaded = load_model(run)
    texts = sample_text(loaded, SampleConfig(length=cap, temperature=1.0, seed=1, num_samples=samples))
    rows = [("charlstm sample", *_endings([len(t) for t in texts], cap))]
    torchscript, _ = export(run, "torchscript", out / "records")
    module = torch.jit.load(str(torchscript))
    rows.append(
        ("TorchScript generate", *_endings([len(module.generate("", cap, 1.0, i)) for i in range(samples)], cap))
    )
    page, _ = export(run, "html16", out / "records")
    open_page(driver, page)
    lengths = [
        len(driver.execute_script("return window.charlstm.generate('', arguments[0], 1.0, arguments[1])", cap, i))
        for i in range(samples)
    ]
    rows.append(("page in Chromium", *_endings(lengths, cap)))
    return rows


def _endings(lengths: list[int], cap: int) -> tuple[int, float]:
    return sum(n < cap for n in lengths), float(np.median(lengths))


def train_run(cell: str, seconds: float, out: Path) -> Path:
    if not SHAKESPEARE.exists():
        raise SystemExit(f"give --{cell} RUN, or put tinyshakespeare.txt at {SHAKESPEARE}")
    train_for(seconds, out, [str(SHAKESPEARE)], ["--cell", cell])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for cell in CELLS:
        parser.add_argument(f"--{cell}", type=Path, help=f"a trained {cell} run (default 1 x 384); else trained here")
    parser.add_argument("--records", type=Path, help="a record-trained run (e.g. tweets): where its samples end")
    parser.add_argument("--train-seconds", type=float, default=60.0, help="for each run not given")
    parser.add_argument("--length", type=int, default=2000, help="characters per speed measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "export")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch threads 1, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; one stream everywhere")

    runs = {
        cell: getattr(args, cell) or train_run(cell, args.train_seconds, args.out / f"run-{cell}") for cell in CELLS
    }
    big = args.out / "lstm-3x512"
    big.mkdir(exist_ok=True)
    vocab = load_model(runs["lstm"]).vocab.chars
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), layers=3, hidden=512))
    payload = {"model_config": asdict(model.config), "vocab": vocab, "model": model.state_dict()}
    ckpt.save_checkpoint(payload, big / "best.pt")

    driver = start_browser()
    try:
        parity, files = [], {}
        for name, run in [*runs.items(), ("lstm-3x512", big)]:
            loaded = load_model(run)
            files[name] = {fmt: export(run, fmt, args.out / name) for fmt in FORMATS}
            if name in CELLS:
                ids, expected = probe(loaded)
                made = {fmt: path for fmt, (path, _) in files[name].items()}
                parity.append(
                    (
                        name,
                        loaded.model.config,
                        onnx_parity(made["onnx"], loaded, ids, expected),
                        torchscript_parity(made["torchscript"], loaded, ids, expected),
                        page_parity(driver, made["html16"], loaded),
                        page_parity(driver, made["html32"], loaded),
                    )
                )
        lstm = {fmt: path for fmt, (path, _) in files["lstm"].items()}
        rates = speeds(driver, lstm["html16"], lstm["torchscript"], lstm["onnx"], runs["lstm"], args.length)
        endings = record_endings(driver, args.records, args.out, 20, 1000) if args.records else []
        chromium = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()

    print(
        f"\nParity with the model (ONNX, TorchScript: 200 steps of a prime and a sample; pages: after {len(PRIMES)} primes)"
    )
    print(
        f"{'cell':6} {'shape':>8} | {'ONNX Δlogit':>11} {'ONNX Δp':>9} | {'TS Δlogit':>9} {'TS Δp':>9} | {'page f16 Δp':>11} {'it states':>9} | {'page f32 Δp':>11}"
    )
    for cell, config, (ol, op), (tl, tp), (pp, stated), (pp32, _) in parity:
        print(
            f"{cell:6} {config.layers} x {config.hidden:<4} | {ol:11.1e} {op:9.1e} | {tl:9.1e} {tp:9.1e} | {pp:11.1e} {stated:9.1e} | {pp32:11.1e}"
        )

    print(
        "\nSizes (best.pt: the checkpoint, with optimizer state for a trained run; the 3 x 512 has random weights and none)"
    )
    print(
        f"{'model':14} | {'best.pt':>9} | {'ONNX':>9} | {'TorchScript':>11} | {'page f16':>9} | {'page f32':>9} | export seconds ({', '.join(FORMATS)})"
    )
    for name, key, run in (("lstm 1 x 384", "lstm", runs["lstm"]), ("lstm 3 x 512", "lstm-3x512", big)):
        made = files[key]
        best = run / "best.pt" if run.is_dir() else run
        seconds = ", ".join(f"{made[f][1]:.1f}" for f in FORMATS)
        print(
            f"{name:14} | {size(best):>9} | {size(made['onnx'][0]):>9} | {size(made['torchscript'][0]):>11} | {size(made['html16'][0]):>9} | {size(made['html32'][0]):>9} | {seconds}"
        )

    print(
        f"\nSpeed, default model ({runs['lstm']}), one stream, {args.length} characters at temperature 1, best of 3; Chromium {chromium}"
    )
    for name, rate in rates:
        print(f"{name:48} {rate:10,.0f} chars/s")

    if endings:
        print(f"\nRecords ({args.records}): 20 samples, at most 1,000 characters each, temperature 1")
        for name, ended, median in endings:
            print(f"{name:24} ended at the marker: {ended:2}/20   median length {median:6.0f}")


if __name__ == "__main__":
    main()
