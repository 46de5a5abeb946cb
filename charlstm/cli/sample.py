"""`charlstm sample`: generate text from a trained model, streamed as it is written, or talk to it (--interactive)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.cli import options as o
from charlstm.cli import render
from charlstm.cli.output import err, fail, run_or_newest
from charlstm.config import INTERACTIVE_LENGTH, SampleConfig, parse_temperatures
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir

_S = SampleConfig()


def sample(
    run: o.Run = None,
    temp: Annotated[
        str,
        typer.Option(
            "--temp",
            "-t",
            help="Sampling temperature; 0 = always the most likely character. A list such as "
            "0.5,0.8,1.0 prints samples for each temperature, labelled.",
        ),
    ] = str(_S.temperature),
    length: Annotated[
        Optional[int],
        typer.Option(
            "--length",
            "--max-length",
            "-n",
            help="Characters to generate per sample at most (a model trained on records ends each record itself, "
            f"usually sooner). (default: {_S.length}; with --interactive, {INTERACTIVE_LENGTH} per continuation)",
            show_default=False,
        ),
    ] = None,
    prime: Annotated[
        str,
        typer.Option(
            help="Text fed through the model first, then printed (with records: how each record starts).",
            show_default=False,
        ),
    ] = _S.prime,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely characters (0 = off).")] = _S.top_k,
    top_p: Annotated[
        float,
        typer.Option(help="Sample only from the most likely characters whose probabilities add up to p (1 = off)."),
    ] = _S.top_p,
    seed: o.SampleSeed = None,
    num_samples: Annotated[
        int,
        typer.Option(
            "--num-samples", "-N", help="Samples (e.g. records: tweets, files) to generate together as one batch."
        ),
    ] = _S.num_samples,
    stop: Annotated[
        Optional[list[str]],
        typer.Option(
            help="End a sample when this text appears (not printed; \\n, \\t and \\\\ name a newline, a tab and a "
            "backslash); repeatable.",
            show_default=False,
        ),
    ] = None,
    out_format: Annotated[
        str,
        typer.Option(
            "--format", help="text (samples separated by labelled lines) or jsonl (one JSON object per sample)."
        ),
    ] = "text",
    out_file: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Write the samples to this file instead of the terminal.", show_default=False),
    ] = None,
    device: o.Device = None,
    novelty: Annotated[
        bool,
        typer.Option(
            "--novelty",
            help="After the samples, report how much of them is copied: the share of their 10-, 20- and "
            "40-character n-grams found verbatim in the run's training split, and the longest copied span.",
        ),
    ] = False,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            "-i",
            help="Talk to the model: what you type is fed to it and it continues it, keeping the state across "
            "turns; /top N shows the likeliest next characters to pick from, /temp, /length, /seed, /reset, "
            "/help; Ctrl-D leaves.",
        ),
    ] = False,
) -> None:
    """Generate text from a trained model; it streams to the terminal as it is written."""
    from charlstm.generate.escapes import decode_escapes
    from charlstm.generate.sample import check_prime, generate, pick_seed, sample_text
    from charlstm.runs.model_file import load_model
    from charlstm.runtime.device import pick_device

    try:
        temperatures = parse_temperatures(temp)
        if length is None:
            length = INTERACTIVE_LENGTH if interactive else _S.length
        config = SampleConfig(
            length=length,
            temperature=temperatures[0],
            top_k=top_k,
            top_p=top_p,
            prime=prime,
            seed=seed,
            num_samples=num_samples,
            stop=[decode_escapes(s) for s in (stop or [])],
        )
        if out_format not in ("text", "jsonl"):
            raise CharlstmError(f"--format must be text or jsonl, got {out_format!r}")
        loaded = load_model(run_or_newest(run, note=False), pick_device(device or "auto"))  # the header names it
        check_prime(loaded.vocab, config.prime)
        if out_file is not None:
            rundir.refuse_run_file(out_file, reading=loaded.path)  # before anything is generated
        err.print(
            render.sampling_header(loaded.path, loaded.payload.get("progress") or {}), markup=False, soft_wrap=True
        )
        if interactive:
            from charlstm.generate.interactive import run_session

            if len(temperatures) > 1 or num_samples > 1 or out_file is not None or out_format != "text" or novelty:
                raise CharlstmError("--interactive takes one --temp, one sample, no --out, --format or --novelty")
            run_session(loaded, config)
            return
        config.seed = pick_seed(config.seed)  # one seed for every temperature: they differ by temperature alone
        if out_file is None and out_format == "text" and len(temperatures) == 1 and num_samples == 1:
            streamed = []
            for _, piece in generate(loaded, config):  # stream as it is written
                sys.stdout.write(piece)
                sys.stdout.flush()
                streamed.append(piece)
            sys.stdout.write("\n")
            if novelty:
                _report_novelty(loaded, ["".join(streamed)])
            return
        chunks, generated = [], []
        for temperature in temperatures:
            texts = sample_text(loaded, replace(config, temperature=temperature))
            generated += texts
            chunk = render.samples(texts, temperature, len(temperatures) > 1, out_format)
            chunks.append(chunk)
            if out_file is None:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if out_file is not None:
            try:
                out_file.write_text("".join(chunks), encoding="utf-8")
            except OSError as exc:
                raise CharlstmError(f"cannot write {out_file}: {exc.strerror or exc}") from None
            err.print(f"Wrote {num_samples * len(temperatures)} sample(s) to {out_file}")
        if novelty:
            _report_novelty(loaded, generated)
    except CharlstmError as exc:
        fail(exc)
    except BrokenPipeError:  # `charlstm sample | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None


def _report_novelty(loaded, texts: list[str]) -> None:
    """`sample --novelty`: the share of the samples copied from the training text, on stderr after them."""
    from charlstm.evaluate.scoring import novelty

    sys.stdout.flush()
    give = "save the samples (--out FILE) and run: charlstm eval RUN --samples FILE --corpus PATH"
    err.print(render.novelty_table(novelty(loaded, texts, give_corpus=give), "copied from the training text"))
