"""The arguments and options the commands share, declared once as Typer `Annotated` aliases: the run a command
reads, the device a model runs on, the corpus and training flags of the commands that train (`train`, `compare`),
--json and --quiet. A command's own options live in its module.

The defaults shown come from the config dataclasses (config.py), where every default lives. No torch here:
`charlstm --help` imports this module.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from charlstm.config import DEFAULT_MAX_TIME, ModelConfig, TrainConfig

_M, _T = ModelConfig(), TrainConfig()


def default(value) -> str:
    return f" (default: {value})"


def sized(value) -> str:
    """The default of a value that --size auto chooses."""
    return f" (default: chosen by --size auto; {value} with --size fixed)"


def _option(help_text: str, *names: str, **settings) -> typer.models.OptionInfo:
    """An option whose help states its default itself (Typer's [default: None] would say nothing)."""
    return typer.Option(*names, help=help_text, show_default=False, **settings)


# ------------------------------------------------------------------------------- the run a command reads

RUN_DEFAULT = "(default: the most recently trained run under checkpoints/)"
Run = Annotated[
    Optional[Path],
    typer.Argument(help=f"Run directory (its best.pt) or .pt file. {RUN_DEFAULT}", show_default=False),
]
Runs = Annotated[
    Optional[list[Path]],
    typer.Argument(
        help="Run directories or .pt files; several are shown side by side, their loss curves overlaid (with "
        f"--json: a list of objects). {RUN_DEFAULT}",
        show_default=False,
    ),
]

# --------------------------------------------------------------------------------- every model that runs

Device = Annotated[
    Optional[str],
    _option(
        "Where the model runs: auto, cpu, cuda or mps; auto picks a GPU when there is one (CUDA, then Apple MPS), "
        "else the CPU. (default: auto; train --resume: the run's)"
    ),
]

# ------------------------------------------------------------------------------------------------ output

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of tables and text.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, validation lines or samples (notes only).")
]
SampleSeed = Annotated[
    Optional[int], _option("Random seed of the sampling: the same seed gives the same text. (default: random)")
]

# ------------------------------------------------------------------------- the corpus (train, compare)

Glob = Annotated[
    Optional[list[str]],
    _option(
        "Take only the files of a directory that match this pattern, e.g. '*.py'; repeatable. "
        "(default: every text file; binary files and hidden folders such as .git/ are skipped)"
    ),
]
TextField = Annotated[
    Optional[str],
    _option("The CSV/TSV column or JSON Lines key that holds the text; each row is one record.", "--field"),
]
Records = Annotated[
    Optional[str],
    _option(
        "What one record is in plain text files: file, paragraph (blank-line separated), none, or "
        "sep:STRING (records separated by lines holding only STRING, e.g. sep:% for a fortune file). Each "
        "record ends with an end-of-record marker the model learns. (default: auto = file for a directory, "
        "rows for CSV/JSONL, none for text files: auto never splits a text file, give sep:% for fortunes)"
    ),
]
Encoding = Annotated[Optional[str], _option("Text encoding of the corpus, e.g. latin-1." + default(_T.encoding))]

# -------------------------------------------------------------------- the model and its training (train, compare)

Init = Annotated[
    Optional[str],
    _option(
        "Weight initialisation: default (PyTorch's uniform +-1/sqrt(hidden)) or xavier (Xavier-Glorot per gate "
        "matrix, zero biases)." + sized(_M.init)
    ),
]
Layers = Annotated[Optional[int], _option("Stacked recurrent layers." + sized(_M.layers))]
Size = Annotated[
    Optional[str],
    _option(
        "auto: measure this device's speed (a second or two), then choose the layers, width, learning rate and "
        "validation cadence for the corpus size and the budget (one line says what and why), Xavier init, weight "
        "decay 0.1, dropout when the budget covers the corpus 8 times or more, and bf16 on a CPU with bf16 "
        "instructions; --layers, --hidden, --batch-size, --seq-len, --lr, --init, --dropout, --weight-decay, "
        "--eval-every and --precision given win. fixed: the defaults shown below, fp32 on a CPU." + default(_T.size)
    ),
]
Hidden = Annotated[Optional[int], _option("Units per layer." + sized(_M.hidden))]
Embed = Annotated[Optional[int], _option("Character embedding width." + default(_M.embed))]
Dropout = Annotated[
    Optional[float], _option("Dropout between layers and before the output, in [0, 1)." + sized(_M.dropout))
]
BatchSize = Annotated[Optional[int], _option("Parallel streams per step." + sized(_T.batch_size))]
SeqLen = Annotated[Optional[int], _option("Characters per stream per step (the BPTT length)." + sized(_T.seq_len))]
Lr = Annotated[
    Optional[float],
    _option("Peak learning rate (linear warm-up, then cosine decay over the budget)." + sized(_T.lr)),
]
WeightDecay = Annotated[
    Optional[float],
    _option(
        "AdamW decoupled weight decay on the weight matrices (not the embedding or biases)." + sized(_T.weight_decay)
    ),
]
GradClip = Annotated[
    Optional[float], _option("Clip the global gradient norm to this (0 = off)." + default(_T.grad_clip))
]
MaxSteps = Annotated[
    Optional[int], _option("Stop a run after this many steps in all (counting steps before a resume).")
]
Epochs = Annotated[Optional[float], _option("Stop a run after this many passes over the training text.")]
MaxTime = Annotated[
    Optional[str],
    _option(
        "Stop a run after this much wall-clock time in all, e.g. 90s, 10m, 2h: reading the corpus, validations "
        "and saves included (the final evaluation and save come after). With no --max-steps, --epochs or "
        f"--max-time, train stops after {DEFAULT_MAX_TIME / 60:g}m; compare needs one of them."
    ),
]
EvalEvery = Annotated[
    Optional[int],
    _option(
        "Validate (and save) every this many steps, and at the end. (default: each time another eighth of the "
        "budget is spent, so about 8 validations a run on any machine)"
    ),
]
EvalChars = Annotated[
    Optional[int],
    _option(
        "Characters each periodic validation scores: a fixed, seeded slice of the validation split (all of it "
        "when smaller)." + default(f"{_T.eval_chars:,}")
    ),
]
FinalEvalChars = Annotated[
    Optional[int],
    _option(
        "The final evaluation scores the whole validation split, or a seeded slice of this many characters when "
        "it is larger." + default(f"{_T.final_eval_chars:,}")
    ),
]
SampleEvery = Annotated[
    Optional[int],
    _option(
        "Show a short sample (and append it to samples.jsonl) every N steps; 0 = never. "
        "(default: after each validation)"
    ),
]
SampleLength = Annotated[
    Optional[int],
    _option(
        "Characters of each sample shown while training (a record-trained run's sample is one record, at most "
        "this long)." + default(_T.sample_length)
    ),
]
SampleTemp = Annotated[
    Optional[float], _option("Temperature of the samples shown while training." + default(_T.sample_temp))
]
SamplePrime = Annotated[Optional[str], _option("Text each sample shown while training starts with. (default: none)")]
SaveEvery = Annotated[
    Optional[str],
    _option("Also save latest.pt every N steps, or every duration such as 5m. (default: at each validation)"),
]
ValFrac = Annotated[
    Optional[float],
    _option("Share of the text, from its end, held out for validation, in (0, 0.5]." + default(_T.val_frac)),
]
Seed = Annotated[Optional[int], _option("Random seed (weights, dropout)." + default(_T.seed))]
Precision = Annotated[
    Optional[str],
    _option(
        "auto, fp32 or bf16 (auto: bf16 autocast on CUDA, and with --size auto on a CPU with bf16 instructions; "
        "fp32 elsewhere)." + default(_T.precision)
    ),
]
Compile = Annotated[
    Optional[bool],
    _option(
        "torch.compile the loss (fp32 cast, log-softmax, NLL; the recurrent stack is already one fused kernel): "
        "faster steps on a GPU after a slow start; on CPU it needs a C++ compiler." + default("off"),
        "--compile/--no-compile",
    ),
]
