"""Record starts: do unprimed samples begin where the corpus's records begin? Zero state against start states.

Trains through the CLI for a fixed time on the built-in code corpus (this Python's stdlib, one record per
file) and on ../shared/data/tweets.csv --field Text (skipped if absent), then draws unprimed samples from the
same checkpoint twice: from a zero state (before: how sampling started until start states) and from the
checkpoint's record start states (after). Compares the distribution of the samples' first characters with
that of the records of the training split (read through charlstm's own corpus code and the checkpoint's
vocabulary, so exactly what the model was trained on): total variation distance (0 = the same distribution,
1 = disjoint), next to the distance a sample of as many real records gets (sampling noise), and the top first
characters of each. Beside the samples, the same distance for the model's own first-character distribution
(its probabilities after the marker at --temp, averaged over the start states; no sampling noise). A sample
that ends at once (the model emits the marker first) counts as first character "(empty)", which no record
has. If the checkpoint has no start states (a trainer that does not store them yet), they are computed here
from the run's training split with `record_start_states`, and the output says so.

    .venv/bin/python benchmarks/record_starts.py [--time 180] [--samples 100] [--temp 1.0] [--corpora code,tweets]
    .venv/bin/python benchmarks/record_starts.py --reuse      # sample the runs already in --out again
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import record_parser, train_for  # noqa: E402

from charlstm.config import CorpusConfig, SampleConfig  # noqa: E402
from charlstm.data.corpus import Corpus, default_corpus, load_corpus  # noqa: E402
from charlstm.data.tokens import prepare_tokens  # noqa: E402
from charlstm.data.vocab import Vocab  # noqa: E402
from charlstm.generate.sample import sample_text  # noqa: E402
from charlstm.generate.starts import record_start_states  # noqa: E402
from charlstm.runs.model_file import LoadedModel, load_model  # noqa: E402

TWEETS = ROOT.parent / "shared" / "data" / "tweets.csv"
EMPTY = "(empty)"  # a sample whose first token is the end-of-record marker
TOP = 6


def record_first_chars(corpus: Corpus, loaded: LoadedModel, val_frac: float) -> tuple[list[str], np.ndarray]:
    """The first character of every record of the training split, and the split itself (ids), encoded as the
    trainer encodes it (the checkpoint's vocabulary, the run's --val-frac, the split on a record boundary)."""
    data = prepare_tokens(corpus, val_frac, vocab=Vocab(loaded.vocab.chars))
    train = np.asarray(data.train)
    eor = data.vocab.end_of_record
    starts = np.concatenate([[0], np.flatnonzero(train[:-1] == eor) + 1])  # a record follows each marker
    return [data.vocab.chars[i] for i in train[starts].tolist()], train


def distribution(firsts: list[str]) -> dict[str, float]:
    counts = Counter(firsts)
    return {c: n / len(firsts) for c, n in counts.items()}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in set(p) | set(q))


def top(p: dict[str, float]) -> str:
    return " ".join(f"{c!r} {share:.0%}" for c, share in sorted(p.items(), key=lambda kv: -kv[1])[:TOP])


def model_first_chars(loaded: LoadedModel, states: list[torch.Tensor] | None, temperature: float) -> dict[str, float]:
    """The model's distribution of a record's first character: softmax(logits / T) after reading the marker,
    from a zero state (states None) or averaged over the K start states."""
    count = 1 if states is None else states[0].size(1)
    x = torch.full((count, 1), loaded.vocab.end_of_record)  # (K, 1)
    state = None if states is None else tuple(states) if len(states) == 2 else states[0]
    with torch.inference_mode():
        logits, _ = loaded.model(x, state)  # (K, 1, V)
    probs = torch.softmax(logits[:, -1].double() / max(temperature, 1e-6), dim=-1).mean(dim=0)  # (V,)
    return {(c or EMPTY): p for c, p in zip(loaded.vocab.chars, probs.tolist())}


def compare(name: str, corpus: Corpus, run: dict, out: Path, args) -> dict:
    loaded = load_model(out)
    real, train_ids = record_first_chars(corpus, loaded, run["train_config"]["val_frac"])
    states = loaded.payload.get("start_states")
    source = "stored in the checkpoint by the trainer"
    if states is None:
        started = time.perf_counter()
        loaded.payload["start_states"] = record_start_states(loaded.model, train_ids, loaded.vocab.end_of_record)
        source = f"NOT in the checkpoint: computed here from the training split ({time.perf_counter() - started:.2f} s)"
    config = SampleConfig(length=args.max_length, temperature=args.temp, num_samples=args.samples, seed=0)
    firsts = {}
    for start in ("zeros", "states"):
        samples = sample_text(loaded, config, start=start)
        firsts[start] = [s[0] if s else EMPTY for s in samples]
        print(f"{name}, {start}: first samples {[s[:20] for s in samples[:4]]}")
    corpus_p = distribution(real)
    noise = total_variation(distribution(random.Random(0).choices(real, k=args.samples)), corpus_p)
    return {
        "name": name,
        "records": len(real),
        "source": source,
        "corpus": corpus_p,
        "noise": noise,
        "before": distribution(firsts["zeros"]),
        "after": distribution(firsts["states"]),
        "model_before": model_first_chars(loaded, None, args.temp),
        "model_after": model_first_chars(loaded, loaded.payload["start_states"], args.temp),
        "val_loss": run["best_val_loss"],
        "step": run["step"],
    }


def main() -> None:
    parser = record_parser(
        __doc__,
        "record-starts",
        samples=100,
        temp=1.0,
        max_length=20,
        cap_help="characters per sample (only the first one is compared)",
    )
    parser.set_defaults(time=180.0)
    parser.add_argument("--corpora", default="code,tweets", help="which of code,tweets to run (comma-separated)")
    parser.add_argument("--reuse", action="store_true", help="no training: sample the runs already in --out")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    def trained(name: str, corpus_args: list[str]) -> dict:
        out = args.out / name
        if args.reuse:
            return json.loads((out / "run.json").read_text())
        return train_for(args.time, out, [*corpus_args, "--device", "cpu"], args.extra)

    results = []
    corpora = args.corpora.split(",")
    if "code" in corpora:
        run = trained("code", [])  # no corpus: the built-in one
        results.append(compare("code (stdlib files)", default_corpus(), run, args.out / "code", args))
    if "tweets" in corpora and TWEETS.exists():
        run = trained("tweets", [str(TWEETS), "--field", "Text"])
        tweets = load_corpus(CorpusConfig(paths=[str(TWEETS)], text_field="Text"))
        results.append(compare("tweets", tweets, run, args.out / "tweets", args))
    elif "tweets" in corpora:
        print(f"{TWEETS} not found (the shared reference data): tweets skipped")

    print()
    print(
        f"First characters of {args.samples} unprimed samples at temperature {args.temp:g} against those of the "
        f"training split's records; total variation distance, lower is better ({args.time:g} s training each)"
    )
    print()
    print(
        f"| corpus | samples: before (zero state) | samples: after (start states) | {args.samples} real records "
        f"(sampling noise) | model's distribution: before | model's distribution: after |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        tv = {key: total_variation(r[key], r["corpus"]) for key in ("before", "after", "model_before", "model_after")}
        print(
            f"| {r['name']} ({r['records']:,} records; val loss {r['val_loss']:.3f} at step {r['step']:,}) "
            f"| {tv['before']:.2f} | {tv['after']:.2f} | {r['noise']:.2f} | {tv['model_before']:.2f} "
            f"| {tv['model_after']:.2f} |"
        )
    for r in results:
        print(f"\n{r['name']}: start states {r['source']}")
        print(f"  records:        {top(r['corpus'])}")
        print(f"  before:         {top(r['before'])}")
        print(f"  after:          {top(r['after'])}")
        print(f"  model, before:  {top(r['model_before'])}")
        print(f"  model, after:   {top(r['model_after'])}")


if __name__ == "__main__":
    main()
