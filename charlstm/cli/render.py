"""What the commands print: the train summary, the run-has-used-its-budget message, `info`'s rows and the
sample layouts. Text and Rich tables only; the CLI decides where they go."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from charlstm.config import finite_or_none, format_duration

if TYPE_CHECKING:  # no torch at import: `charlstm --help` imports this module
    from charlstm.training.summary import TrainResult


def loss_text(value: float | None, what: str = "") -> str:
    """1.2345 nats/char (1.7810 bits/char), what"""
    if value is None:
        return "-"
    return f"{value:.4f} nats/char ({value / math.log(2):.4f} bits/char)" + (f", {what}" if what else "")


def device_text(data: dict[str, Any]) -> str:
    processes = data.get("world_size") or 1
    return f"{data['device']} ({data.get('precision') or 'fp32'})" + (
        f" x {processes} processes" if processes > 1 else ""
    )


def table(title: str, rows: list[tuple[str, str]]) -> Table:
    shown = Table(title=title, show_header=False, title_justify="left")
    shown.add_column(style="bold")
    shown.add_column()
    for key, value in rows:
        shown.add_row(key, value)
    return shown


def train_summary(result: TrainResult) -> Table:
    data = result.summary
    best, final = data["best_val_loss"], data["final_val_loss"]
    periodic_what, final_what = _figure_names(data)
    rows = [
        ("run", str(result.run_dir)),
        ("stopped by", result.stopped_by),
        ("steps", f"{data['step']:,}"),
        ("characters seen", f"{data['chars_seen']:,}"),
        ("time", f"{data['elapsed_seconds']:,.1f} s wall clock ({data['train_seconds']:,.1f} s of training steps)"),
        ("speed", f"{data['chars_per_second']:,.0f} chars/s"),
        ("best val loss", loss_text(best, f"{periodic_what} (best.pt)") if best is not None else "not evaluated yet"),
        ("final val loss", loss_text(final, final_what) if final is not None else "not evaluated (stopped early)"),
        ("parameters", f"{data['params']:,} (vocabulary {data['vocab_size']})"),
        ("device", device_text(data)),
    ]
    if result.resumed_from:
        rows.insert(1, ("resumed from", result.resumed_from))
    return table("charlstm train", rows)


def budget_spent(result: TrainResult) -> str:
    data = result.summary
    final = data["final_val_loss"] if data["final_val_loss"] is not None else data["best_val_loss"]
    loss = f"; val loss {final:.4f} nats/char" if final is not None else ""
    return (
        f"{result.run_dir} has already used its budget ({result.budget}: step {data['step']:,}, "
        f"{format_duration(data['elapsed_seconds'])} of wall-clock time{loss}); nothing to train.\n"
        f"To train more, give a larger budget (totals for the run), e.g.: "
        f"charlstm train --resume {result.run_dir} {result.extend_with}"
    )


def interrupted(result: TrainResult) -> str:
    launcher = f"torchrun --nproc-per-node {result.world_size} -m " if result.world_size > 1 else ""
    signal = result.stopped_by.split("(")[-1].rstrip(")")
    return (
        f"Stopped by {signal} at step {result.step}; saved {result.run_dir / 'latest.pt'}.\n"
        f"Resume with: {launcher}charlstm train --resume {result.run_dir}"
    )


def sampling_header(path: Any, progress: dict[str, Any]) -> str:
    """Sampling from RUN/best.pt (step 2,843, val loss 1.618 nats/char, final evaluation): which figure it is."""
    final, last = finite_or_none(progress.get("final_val_loss")), finite_or_none(progress.get("last_val_loss"))
    last = last if last is not None else finite_or_none(progress.get("best_val_loss"))
    if final is not None:
        loss = f", val loss {final:.3f} nats/char, final evaluation"
    elif last is not None:
        loss = f", val loss {last:.3f} nats/char, periodic validation"
    else:
        loss = ""
    return f"Sampling from {path} (step {progress.get('step', 0):,}{loss})"


def samples(texts: list[str], temperature: float, label_temperature: bool, out_format: str) -> str:
    if out_format == "jsonl":
        return "".join(
            json.dumps({"temperature": temperature, "sample": i + 1, "text": t}, ensure_ascii=False) + "\n"
            for i, t in enumerate(texts)
        )
    heading = f"═══ temperature {temperature:g} ═══\n" if label_temperature else ""
    if len(texts) == 1:
        return heading + texts[0] + "\n"
    return heading + "".join(f"─── sample {i + 1} ───\n{t}\n" for i, t in enumerate(texts))


def compare_table(title: str, labels: list[str], datas: list[dict[str, Any]]) -> Table:
    """Several runs' `info` rows side by side: one column per run, a row for every label any of them has."""
    # the loss rows without what each figure scores (it makes three columns unreadable; `info RUN` says it)
    by_run = [
        {key: value.split(", ")[0] if key.endswith("val loss") else value for key, value in info_rows(data)}
        for data in datas
    ]
    keys: list[str] = []
    for rows in by_run:
        keys += [key for key in rows if key not in keys]
    shown = Table(title=title, title_justify="left")
    shown.add_column("", style="bold")
    for label in labels:
        shown.add_column(label, overflow="fold")
    for key in keys:
        shown.add_row(key, *(rows.get(key, "-") for rows in by_run))
    return shown


def info_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """`charlstm info` as labelled, readable rows (the raw dict is what --json prints)."""
    rows: list[tuple[str, str]] = []
    if data.get("checkpoint"):
        rows.append(("checkpoint", str(data["checkpoint"])))
    rows += _corpus_rows(data)
    model = data.get("model_config") or {}
    rows.append(
        (
            "model",
            f"{model.get('cell', '?')}, {model.get('layers', '?')} x {model.get('hidden', '?')}, "
            f"embedding {model.get('embed', '?')}, dropout {model.get('dropout', 0):g}",
        )
    )
    if data.get("params") is not None:
        rows.append(("  parameters", f"{data['params']:,}"))
    train = data.get("train_config") or {}
    if train.get("size") == "auto":  # the shape was chosen by --size auto: what and why
        rows.append(("  size", str(train.get("size_choice") or "auto")))
    budget = []
    for key, flag in (("max_steps", "--max-steps"), ("epochs", "--epochs"), ("max_time", "--max-time")):
        if train.get(key):
            budget.append(f"{flag} {format_duration(train[key]) if key == 'max_time' else train[key]}")
    rows.append(("budget", " or ".join(budget) or "-"))
    rows.append(
        (
            "training",
            f"batch {train.get('batch_size', '?')} x {train.get('seq_len', '?')}, lr {train.get('lr', 0):g}, "
            f"eval every {train['eval_every']} steps"
            if train.get("eval_every")
            else "eval at each eighth of the budget",
        )
    )
    rows.append(
        (
            "progress",
            f"step {data.get('step', 0):,}, epoch {data.get('epoch', 0)}, "
            f"{data.get('chars_seen', 0):,} characters seen",
        )
    )
    elapsed, seconds = data.get("elapsed_seconds"), data.get("train_seconds") or 0.0
    time_text = f"{format_duration(elapsed)} wall clock, " if elapsed is not None else ""
    speed = data.get("chars_per_second", 0)
    rows.append(("time", f"{time_text}{seconds:,.1f} s of training steps, {speed:,.0f} chars/s"))
    if data.get("device"):
        rows.append(("device", device_text(data)))
    rows += _loss_rows(data)
    rows.append(("format", f"checkpoint version {data.get('checkpoint_format_version', '?')}"))
    return rows


def _corpus_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    corpus = data.get("corpus") or {}
    config = corpus.get("config") or {}
    sources = config.get("paths") or corpus.get("sources") or []
    rows = [("corpus", str(corpus.get("name", "?")))]
    if sources:
        more = f" and {len(sources) - 5} more" if len(sources) > 5 else ""
        rows.append(("  sources", ", ".join(str(s) for s in sources[:5]) + more))
    if config.get("globs"):
        rows.append(("  globs", " ".join(config["globs"])))
    if config.get("text_field"):
        rows.append(("  field", str(config["text_field"])))
    if config.get("encoding", "utf-8") != "utf-8":
        rows.append(("  encoding", str(config["encoding"])))
    records, lengths = data.get("records"), data.get("record_lengths")
    if records is not None:
        mode = config.get("records", "auto")
        text = f"{records:,}" + (f" ({mode})" if mode not in (None, "auto") else "")
        if isinstance(lengths, dict):
            text += (
                f", length min {lengths.get('min', 0):,} · median {lengths.get('median', 0):,.0f} · "
                f"max {lengths.get('max', 0):,} characters"
            )
        rows.append(("  records", text))
    else:
        rows.append(("  records", "none (one stream)"))
    if corpus.get("chars") is not None:
        rows.append(("  characters", f"{corpus['chars']:,}"))
    vocab = data.get("vocab_size")
    if vocab is not None:
        marker = " (with the end-of-record marker)" if records is not None else ""
        rows.append(("  vocabulary", f"{vocab:,} symbols{marker}"))
    return rows


def _figure_names(data: dict[str, Any]) -> tuple[str, str]:
    """What the periodic and the final figures of a run score: 'periodic validation, 65,536 of 111,539
    characters' and 'final evaluation, whole validation split'."""
    validation = data.get("validation") or {}
    split = validation.get("split_chars", 0)
    if validation and not validation.get("periodic_whole_split"):
        periodic = f"periodic validation, {validation['periodic_chars']:,} of {split:,} characters"
    else:
        periodic = "periodic validation, whole validation split"
    scored = validation.get("final_scored_chars", validation.get("final_chars"))
    if validation and not validation.get("final_whole_split") and scored is not None:
        final = f"final evaluation, {scored:,} of {split:,} characters"
    else:
        final = "final evaluation, whole validation split"
    return periodic, final


def _loss_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    periodic, final = _figure_names(data)
    final_loss = data.get("final_val_loss")
    return [
        ("best val loss", loss_text(data.get("best_val_loss"), periodic + "; chose best.pt")),
        ("last val loss", loss_text(data.get("last_val_loss"), periodic)),
        (
            "final val loss",
            loss_text(final_loss, final) if final_loss is not None else "- (the run has not reached its end)",
        ),
    ]


# ------------------------------------------------------------------------------------------- eval


def eval_table(report: Any) -> Table:
    """`charlstm eval`: a row per file (or the validation split) and the total, LSTM and n-gram columns, compact
    enough for 80 columns with three n-gram orders."""
    model = report.model
    shown = Table(
        title=f"{report.checkpoint} · step {report.step:,} · {model.get('cell', '?')} "
        f"{model.get('layers', '?')} x {model.get('hidden', '?')} · per character",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    names = [row.name for row in report.rows]
    shown.add_column("text", overflow="fold", min_width=min(24, max(len(n) for n in names)))
    shown.add_column("chars", justify="right", no_wrap=True)
    shown.add_column("OOV", justify="right", no_wrap=True)
    shown.add_column("nats", justify="right", no_wrap=True)
    shown.add_column("bits", justify="right", no_wrap=True)
    for order in report.baseline_orders:
        shown.add_column(f"{order}-gram", justify="right", no_wrap=True)
    rows = list(report.rows) + ([report.total] if len(report.rows) > 1 else [])
    for row in rows:
        bits = row.nats_per_char / math.log(2)
        cells = [row.name, f"{row.targets:,}", f"{row.oov:,}", f"{row.nats_per_char:.4f}", f"{bits:.4f}"]
        cells += [f"{row.baseline[k] / row.targets / math.log(2):.4f}" for k in report.baseline_orders]
        shown.add_row(*cells, style="bold" if row.name == "total" and len(rows) > 1 else None)
    return shown


def eval_notes(report: Any) -> list[str]:
    """What the figures are, under the table."""
    lines = []
    total = report.total
    if report.split:
        lines.append(
            "The validation split, scored as training's final evaluation scores it: 1,024-character segments, "
            "each read after the 128 characters before it."
        )
        if report.recorded is not None:
            difference = abs(total.nats_per_char - report.recorded)
            verdict = "agrees" if difference <= 1e-4 else "DIFFERS"
            lines.append(
                f"Recorded for this checkpoint ({report.recorded_what}): {report.recorded:.5f} nats/char; "
                f"scored now: {total.nats_per_char:.5f}: {verdict} (difference {difference:.1e})."
            )
        else:
            lines.append(f"Nothing recorded to compare with: {report.recorded_what}.")
    else:
        lines.append(
            "Each file is scored as one stream, the hidden state carried from its first character to its last. "
            "OOV: characters outside the model's vocabulary, left out (not read, not scored, not in the averages)."
        )
        for row in report.rows:
            if row.oov:
                shown = " ".join(repr(c) for c in row.oov_chars[:10]) + (" …" if len(row.oov_chars) > 10 else "")
                lines.append(f"  {row.name}: {row.oov:,} characters left out: {shown}")
    if report.baseline_orders:
        lines.append(
            f"n-gram columns: bits per character of interpolated Kneser-Ney models fitted on the run's training split "
            f"({report.baseline_train_chars:,} characters) in {report.baseline_fit_seconds:.1f} s, scored in "
            f"{report.baseline_eval_seconds:.1f} s; lower is better."
        )
    return lines


def novelty_table(novelty: Any, title: str) -> Table:
    """`eval --samples` and `sample --novelty`: the share of sampled n-grams found in the training text."""
    shown = Table(title=title, title_justify="left")
    shown.add_column("n", justify="right")
    shown.add_column("n-grams sampled", justify="right")
    shown.add_column("found in training text", justify="right")
    shown.add_column("share copied", justify="right")
    for n, (found, total) in novelty.copied.items():
        share = f"{found / total:.1%}" if total else "-"
        shown.add_row(str(n), f"{total:,}", f"{found:,}", share)
    span = novelty.longest_text.replace("\n", "\\n")
    span = span if len(span) <= 80 else span[:77] + "…"
    where = f" (sample {novelty.longest_sample + 1}): {span!r}" if novelty.longest else ""
    shown.caption = (
        f"{novelty.samples} sample(s), {novelty.chars:,} characters; "
        f"longest copied span: {novelty.longest:,} characters{where}"
    )
    shown.caption_justify = "left"
    return shown
