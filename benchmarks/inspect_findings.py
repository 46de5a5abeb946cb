"""The essays' findings, reproduced with `charlstm inspect --find` as a user would run it, with screenshots.

For each run given, a text the model never trained on is read through `charlstm inspect RUN --text FILE
--find FEATURE --json` (the real command, as a subprocess), the best units and their Pearson r are printed,
and the page (opened on the best unit) is screenshot in the headless Chromium the tests use:

- --shakespeare RUN (trained on ../shared/data/tinyshakespeare.txt): the file's last 5,000 characters (in its
  validation split), `line-position`;
- --tweets RUN (trained on ../shared/data/tweets.csv --field Text): the last tweets of the file (validation
  split), one per line, `in-tag`;
- --code RUN (trained on the built-in corpus: the standard library's sources in sorted order, cut at ~3 MB, so
  at email/): the first 5,000 characters of textwrap.py, never seen in training, `indent` and
  `line-position`.

As a reference measured in the same run, each feature's best |r| is printed next to the best |r| of the same
text read by the same architecture with its weights shuffled (each weight tensor permuted, seeded): how much
of the correlation the training made, rather than the text's own structure echoed by any recurrent net.

    .venv/bin/python benchmarks/inspect_findings.py --shakespeare RUN --tweets RUN --code RUN --shots docs
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from charlstm.checkpoint.store import load_model_checkpoint, save_checkpoint  # noqa: E402
from charlstm.runs.directory import resolve_checkpoint  # noqa: E402
from tests.browser import console_errors, open_page, start_browser  # noqa: E402
from tests.helpers import SHARED_DATA  # noqa: E402

CHARS = 5000


def shakespeare_text() -> str:
    return (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[-CHARS:]


def tweets_text() -> str:
    csv.field_size_limit(1 << 30)
    with open(SHARED_DATA / "tweets.csv", encoding="utf-8", newline="") as handle:
        tweets = [row["Text"].replace("\r\n", "\n") for row in csv.DictReader(handle)]
    picked, total = [], 0
    for tweet in reversed(tweets):
        if total + len(tweet) + 1 > CHARS:
            break
        picked.append(tweet)
        total += len(tweet) + 1
    return "\n".join(reversed(picked)) + "\n"


def code_text() -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")[:CHARS]


def shuffled_copy(run: Path, work: Path) -> Path:
    """The run's checkpoint with every weight tensor's entries permuted (seeded): same shapes, no learning."""
    payload = load_model_checkpoint(resolve_checkpoint(run))
    generator = torch.Generator().manual_seed(0)
    payload["model"] = {
        name: w.flatten()[torch.randperm(w.numel(), generator=generator)].reshape(w.shape).clone()
        for name, w in payload["model"].items()
    }
    path = work / f"{run.name}-shuffled.pt"
    save_checkpoint(payload, path)
    return path


def inspect(run: Path, text_file: Path, features: list[str], page: Path) -> dict:
    command = [sys.executable, "-m", "charlstm", "inspect", str(run), "--text", str(text_file), "--out", str(page)]
    for feature in features:
        command += ["--find", feature]
    print("$ charlstm", " ".join(command[3:]), flush=True)
    done = subprocess.run([*command, "--json"], check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(done.stdout)


def screenshot(driver, page: Path, png: Path, first_char: int = 0) -> list[str]:
    """A screenshot of the page with its text scrolled to `first_char`."""
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, page)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!document.body.dataset.ready"))
    driver.execute_script(
        "const box = document.getElementById('text'), span = box.querySelectorAll('span')[arguments[0]];"
        "box.scrollTop = span.offsetTop - box.offsetTop;",
        first_char,
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(png))
    return console_errors(driver)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare", type=Path)
    parser.add_argument("--tweets", type=Path)
    parser.add_argument("--code", type=Path)
    parser.add_argument("--shots", type=Path, default=ROOT / "bench-out" / "inspect", help="where the PNGs go")
    parser.add_argument("--pages", type=Path, help="where the HTML pages go (default: a temporary directory)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inspect-findings-"))
    pages = args.pages or work
    pages.mkdir(parents=True, exist_ok=True)
    cases = [
        ("shakespeare", args.shakespeare, shakespeare_text, ["line-position"]),
        ("tweets", args.tweets, tweets_text, ["in-tag"]),
        ("code", args.code, code_text, ["indent", "line-position"]),
    ]
    driver = start_browser(1280, 1000)
    rows = []
    try:
        for name, run, make_text, features in cases:
            if run is None:
                continue
            text_file = work / f"{name}.txt"
            text = make_text()
            text_file.write_text(text, encoding="utf-8")
            found = inspect(run, text_file, features, pages / f"inspect-{name}.html")
            reference = inspect(shuffled_copy(run, work), text_file, features, work / f"{name}-shuffled.html")
            for feature in features:
                best = found["findings"][feature][0]
                print(
                    f"  {feature}: "
                    + "; ".join(
                        f"layer {m['layer']} {m['quantity']} unit {m['unit']} r = {m['r']:+.3f}"
                        for m in found["findings"][feature][:3]
                    )
                )
                rows.append((name, feature, best, reference["findings"][feature][0], found["chars"]))
            for feature in features:  # one screenshot per feature, the page opened on its best unit
                page = pages / f"inspect-{name}.html"
                if feature != features[0]:
                    page = pages / f"inspect-{name}-{feature}.html"
                    inspect(run, text_file, [feature], page)
                png = args.shots / (
                    f"inspect-{name}.png" if feature == features[0] else f"inspect-{name}-{feature}.png"
                )
                # code: start the view at the first class, where indentation varies (class, def, body)
                first = text.find("\nclass ") + 1 if name == "code" else 0
                errors = screenshot(driver, page, png, max(0, first))
                print(f"  screenshot {png} ({png.stat().st_size / 1e3:.0f} KB), console errors: {len(errors)}")
    finally:
        driver.quit()

    print(f"\n{'model':<12}{'feature':<15}{'best unit':<28}{'r':>8}{'|r| shuffled':>14}  chars")
    for name, feature, best, shuffled, chars in rows:
        unit = f"layer {best['layer']} {best['quantity']} #{best['unit']}"
        print(f"{name:<12}{feature:<15}{unit:<28}{best['r']:+8.3f}{abs(shuffled['r']):14.3f}  {chars:,}")


if __name__ == "__main__":
    main()
