"""The inspector's page: its size and how fast it opens in Chromium, for a 5,000-character text and a 1 x 384 LSTM.

Builds the page with `charlstm inspect` (the real command, as a subprocess) and opens it from file:// in the
headless Chromium the tests use (tests/browser.py). Reported side by side with a reference measured in the same
run: a page of the same 5,000 characters as plain text (what any page of this text costs the browser), and the
size the values would take as plain float32. The load time is the page's own: from navigation start to the
moment its script has decoded the values and drawn everything (`document.body.dataset.ready`), the median of
--repeats loads. A screenshot of the page (PNG) is saved where asked.

Without --run it trains a 1 x 384 LSTM (charlstm's defaults) for --steps steps on the text itself, so that
the run has a checkpoint and a loss curve; the values' size does not depend on how well it is trained.

    .venv/bin/python benchmarks/inspect_page.py docs/inspect-bench.png
    .venv/bin/python benchmarks/inspect_page.py shot.png --run checkpoints/shakespeare --text some.txt
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import train_command  # noqa: E402
from tests.browser import console_errors, open_page, start_browser  # noqa: E402
from tests.helpers import SHARED_DATA, make_text  # noqa: E402


def page_load_ms(driver, page: Path) -> float:
    """Milliseconds from navigation start to the page saying it is drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(driver, page)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!document.body.dataset.ready"))
    return float(driver.execute_script("return Number(document.body.dataset.ready)"))


def plain_load_ms(driver, page: Path) -> float:
    open_page(driver, page)
    return float(driver.execute_script("return performance.getEntriesByType('navigation')[0].loadEventEnd"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("screenshot", type=Path, help="where to save the page's screenshot (PNG)")
    parser.add_argument("--run", type=Path, help="an existing run to inspect (default: train a 1 x 384 LSTM)")
    parser.add_argument("--text", type=Path, help="the text (default: Tiny Shakespeare's first characters)")
    parser.add_argument("--chars", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=30, help="training steps of the run made without --run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--find", default="line-position")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inspect-bench-"))
    if args.text is not None:
        text = args.text.read_text(encoding="utf-8")[: args.chars]
    elif (SHARED_DATA / "tinyshakespeare.txt").exists():
        text = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[: args.chars]
    else:
        text = make_text(args.chars)
    text_file = work / "text.txt"
    text_file.write_text(text, encoding="utf-8")
    run = args.run
    if run is None:
        run = work / "run"
        command = train_command(3600, run, [str(text_file)], ["--max-steps", str(args.steps), "--eval-every", "10"])
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)

    page = work / "inspect.html"
    command = [sys.executable, "-m", "charlstm", "inspect", str(run), "--text", str(text_file), "--out", str(page)]
    command += ["--find", args.find]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    build_seconds = time.perf_counter() - started

    plain = work / "plain.html"
    spans = "".join(f"<span>{c}</span>" if c not in "<&" else f"<span>&#{ord(c)};</span>" for c in text)
    plain.write_text(f"<!DOCTYPE html><meta charset=utf-8><pre>{spans}</pre>", encoding="utf-8")

    model = json.loads(
        subprocess.run(
            [sys.executable, "-m", "charlstm", "info", str(run), "--json"], check=True, cwd=ROOT, capture_output=True
        ).stdout
    )["model_config"]
    quantities = {"lstm": 6, "gru": 4, "rnn": 1}.get(model["cell"], 6)
    float32_bytes = len(text) * model["layers"] * model["hidden"] * quantities * 4

    driver = start_browser(1280, 1000)
    try:
        page_times = [page_load_ms(driver, page) for _ in range(args.repeats)]
        errors = console_errors(driver)
        plain_times = [plain_load_ms(driver, plain) for _ in range(args.repeats)]
        page_load_ms(driver, page)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.screenshot))
    finally:
        driver.quit()

    size = page.stat().st_size
    print(f"\nmodel: {model['layers']} x {model['hidden']} {model['cell']}, {len(text):,} characters")
    print(f"{'':38}{'inspect page':>16}{'reference':>16}")
    print(f"{'size (MB)':38}{size / 1e6:16.2f}{float32_bytes / 1e6:16.2f}  (reference: the values as float32)")
    print(
        f"{'load to drawn, median of ' + str(args.repeats) + ' (ms)':38}{statistics.median(page_times):16.0f}"
        f"{statistics.median(plain_times):16.0f}  (reference: the same text as plain spans)"
    )
    print(f"{'charlstm inspect command (s)':38}{build_seconds:16.1f}")
    print(f"console errors: {len(errors)}{' ' + str(errors[:3]) if errors else ''}")
    print(f"screenshot: {args.screenshot} ({args.screenshot.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
