"""One training run of a recipe variant, for the README's "What each technique bought" table.

    .venv/bin/python benchmarks/size_recipe.py NAME [key=value ...]

Each key=value sets a ModelConfig or TrainConfig field (`lr=7e-3`, `forget_bias=1`, `min_lr_frac=0`,
`max_time=None max_steps=2600` for a step budget, whose loss does not depend on how busy the machine is), or:
`corpus=PATH` (default: Tiny Shakespeare; `builtin` for the built-in code corpus), `threads=N` (torch threads),
`sched=linear` (linear decay after the warm-up instead of the cosine). Without a budget: `--max-time 100s`. The
clock starts before torch is imported, as the CLI's does. Appends a row to bench-out/size-log.md (setting, final
and best periodic validation loss, steps, chars/s, wall clock, and how many cores other processes kept busy
meanwhile, from /proc/stat) and prints it.
"""

import time

CLOCK = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from dataclasses import fields  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        values = [int(x) for x in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def convert(cls: type, key: str, value: str):
    kind = str({f.name: f for f in fields(cls)}[key].type)
    if value == "None":
        return None
    if "int" in kind and "float" not in kind:
        return int(value)
    if "float" in kind:
        return float(value)
    return value


def main() -> None:
    busy0, wall0 = busy_seconds(), time.time()
    name, *pairs = sys.argv[1:]
    settings = dict(pair.split("=", 1) for pair in pairs)
    corpus_path = settings.pop("corpus", str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    threads, sched = settings.pop("threads", None), settings.pop("sched", None)

    import torch

    import charlstm.training.budget as schedule
    from charlstm.config import CorpusConfig, ModelConfig, TrainConfig
    from charlstm.training.run import train

    if threads:
        torch.set_num_threads(int(threads))
    if sched == "linear":

        def linear(config: TrainConfig, fraction: float) -> float:
            if fraction < config.warmup_frac:
                return config.lr * (fraction + 1e-3) / (config.warmup_frac + 1e-3)
            t = min(1.0, (fraction - config.warmup_frac) / max(1e-9, 1 - config.warmup_frac))
            return config.lr * (config.min_lr_frac + (1 - config.min_lr_frac) * (1 - t))

        schedule.planned_lr = linear  # lr_at looks it up at each step
    model_fields, train_fields = {f.name for f in fields(ModelConfig)}, {f.name for f in fields(TrainConfig)}
    unknown = set(settings) - model_fields - train_fields
    if unknown:
        sys.exit(f"unknown settings: {', '.join(sorted(unknown))}")
    model_values = {k: convert(ModelConfig, k, v) for k, v in settings.items() if k in model_fields}
    train_values = {k: convert(TrainConfig, k, v) for k, v in settings.items() if k in train_fields}
    train_values.setdefault("max_time", 100.0)
    out = ROOT / "bench-out" / name
    corpus = None if corpus_path == "builtin" else CorpusConfig(paths=[corpus_path])
    train(
        corpus,
        ModelConfig(**model_values),
        TrainConfig(**train_values),
        run_dir=out,
        overwrite=True,
        clock_start=CLOCK,
        explicit=set(model_values) | set(train_values),
    )
    summary = json.loads((out / "run.json").read_text())
    mine = os.times()
    others = (busy_seconds() - busy0 - (mine.user + mine.system)) / (time.time() - wall0)
    row = (
        f"| {name} | {Path(corpus_path).name} | {' '.join(pairs)} | {summary['final_val_loss']:.4f} | "
        f"{summary['best_val_loss']:.4f} | {summary['step']} | {summary['chars_per_second']:.0f} | "
        f"{summary['elapsed_seconds']:.1f} | {time.strftime('%H:%M')} | {others:.2f} |"
    )
    with open(ROOT / "bench-out" / "size-log.md", "a") as log:
        log.write(row + "\n")
    print(row)


if __name__ == "__main__":
    main()
