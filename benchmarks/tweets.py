"""Tweets: train on ../shared/data/tweets.csv --field Text for a fixed time, sample whole tweets, and compare
them with the corpus measured in the same run.

Reports: val loss; the share of sampled tweets that end by themselves within 280 characters; their length
distribution next to the corpus's; the share of sampled tweets found verbatim in the corpus (memorisation,
lower is better), next to the share of validation tweets found verbatim in the training tweets (duplicates
in the corpus itself).

    .venv/bin/python benchmarks/tweets.py [--time 240] [--samples 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import record_parser, train_for  # noqa: E402

from charlstm.config import SampleConfig  # noqa: E402
from charlstm.data.tables import table_texts  # noqa: E402
from charlstm.generate.sample import sample_text  # noqa: E402
from charlstm.runs.model_file import load_model  # noqa: E402

TWEETS = ROOT.parent / "shared" / "data" / "tweets.csv"


def distribution(lengths: list[int]) -> str:
    if not lengths:
        return "none"
    p = np.percentile(lengths, [0, 10, 50, 90, 100])
    return f"min {p[0]:.0f} · p10 {p[1]:.0f} · median {p[2]:.0f} · p90 {p[3]:.0f} · max {p[4]:.0f}"


def main() -> None:
    parser = record_parser(
        __doc__,
        "tweets",
        samples=200,
        temp=0.8,
        max_length=400,
        cap_help="cap per sampled tweet (above 280 on purpose)",
    )
    args = parser.parse_args()
    if not TWEETS.exists():
        sys.exit(f"{TWEETS} not found (the shared reference data)")

    run = train_for(args.time, args.out, [str(TWEETS), "--field", "Text"], args.extra)

    tweets = [t for t in table_texts(TWEETS, "Text", "utf-8") if t]
    corpus_set = set(tweets)
    val_count = round(len(tweets) * run["train_config"]["val_frac"])  # about: the split falls on a tweet boundary
    train_set = set(tweets[:-val_count])
    val_repeats = sum(t in train_set for t in tweets[-val_count:]) / val_count

    loaded = load_model(args.out)
    config = SampleConfig(length=args.max_length, temperature=args.temp, num_samples=args.samples, seed=0)
    samples = sample_text(loaded, config)
    ended = [s for s in samples if len(s) < args.max_length]
    within = [s for s in ended if len(s) <= 280]
    verbatim = [s for s in ended if s in corpus_set]

    print()
    print(
        f"| figure | charlstm, {args.time:g} s training, {args.samples} samples at temperature {args.temp:g} | reference, same run |"
    )
    print("| --- | --- | --- |")
    print(f"| val loss, nats/char | {run['best_val_loss']:.4f} ({run['best_val_bits_per_char']:.3f} bits/char) | |")
    print(f"| records (tweets) in the corpus | | {run['records']:,}; lengths {run['record_lengths']} |")
    print(f"| sampled tweets that end by themselves | {len(ended) / len(samples):.1%} | |")
    print(
        f"| ... within 280 characters | {len(within) / len(samples):.1%} | {sum(len(t) <= 280 for t in tweets) / len(tweets):.1%} of corpus tweets are <= 280 |"
    )
    print(
        f"| length distribution (ended samples vs corpus) | {distribution([len(s) for s in ended])} | {distribution([len(t) for t in tweets])} |"
    )
    print(
        f"| sampled tweets found verbatim in the corpus | {len(verbatim) / max(1, len(ended)):.1%} ({len(verbatim)} of {len(ended)}) | {val_repeats:.1%} of validation tweets repeat a training tweet |"
    )
    print(f"| steps, training chars/s | {run['step']:,}, {run['chars_per_second']:,.0f} | |")
    print()
    print("three samples:")
    for s in samples[:3]:
        print("───", s.replace("\n", "⏎ "))


if __name__ == "__main__":
    main()
