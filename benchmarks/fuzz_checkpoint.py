"""Fuzz the checkpoint loader: every damaged, hostile or odd checkpoint ends in a correct load or a one-line
CharlstmError, within a time and memory bound, and never runs code from the file.

Seeds are REAL checkpoints, made by training tiny models in this process (LSTM with 2 layers, GRU, and an RNN
trained on records), plus variants saved from them (no optimizer state; record start states; per-rank RNG
states). Each case mutates one seed, at the object level (load the payload, edit it, torch.save) or at the
byte level (flip or cut bytes of the file, or rewrite the zip with edited records, a hand-written or edited
pickle, compressed entries...), and hands the file to a worker process that runs what the commands run:

    checkpoint.load_model_checkpoint(path)          every command's one check
    model_file.load_model(path) + sample_text(...)  `charlstm sample` (model built, 8 characters drawn)
    cli._info(path) (+ its rows, json.dumps)        `charlstm info`
    train.Trainer(corpus, ..., resume_from=path)    `charlstm train --resume` (every --resume-every'th case)

The worker measures each case's time and peak RSS (VmHWM, reset through /proc/self/clear_refs before the case)
and runs under an address-space limit (its size after start-up + --as-limit-mb) so that a real memory bomb
fails at once instead of swapping a shared machine. A case is BAD when anything but a CharlstmError escapes,
the error's message is not one line, it takes longer than --time-limit seconds or more than --rss-limit-mb of
memory over the worker's resident size before it, the worker dies, the marker file a hostile pickle would
create exists, or a case that must be refused (a memory bomb, a storage-size lie, code to call...) loads.

    .venv/bin/python benchmarks/fuzz_checkpoint.py --cases 10000 --seed 0 | tee bench-out/fuzz.txt

Exit status 1 when any case is BAD.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import pickletools
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from charlstm.config import ModelConfig, TrainConfig  # noqa: E402
from charlstm.data.corpus import Corpus  # noqa: E402

OUTCOMES = ("loaded", "refused", "BAD")
MARKER_NAME = "pwned"


# ------------------------------------------------------------------------------------------------ seeds


def _text(n_chars: int, seed: int) -> str:
    """A small corpus with learnable structure (as tests/conftest.py make_text)."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away", "home"]
    lines, total = [], 0
    while total < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:n_chars] + "\n"


def seed_corpus(name: str) -> Corpus:
    """The corpus a seed was trained on (also what the resume target resumes with)."""
    base = name.split("-")[0]
    if base == "rnn":  # records: one per line, the end-of-record marker in the vocabulary
        return Corpus(records=_text(2400, 3).splitlines(), name="records", sources=["memory"])
    return Corpus(text=_text(2000, 1 if base == "lstm" else 2), name=base, sources=["memory"])


SEED_MODELS = {
    "lstm": ModelConfig(cell="lstm", layers=2, hidden=16, embed=8),
    "gru": ModelConfig(cell="gru", layers=1, hidden=16, embed=8),
    "rnn": ModelConfig(cell="rnn", layers=1, hidden=16, embed=8),
}


@dataclass
class Seed:
    name: str
    path: Path
    payload: dict  # as torch.load reads it (trusted: made here)
    raw: bytes


def _start_states(payload: dict, k: int) -> list[torch.Tensor]:
    config = payload["model_config"]
    count = 2 if config["cell"] == "lstm" else 1
    gen = torch.Generator().manual_seed(k)
    return [torch.randn(config["layers"], k, config["hidden"], generator=gen).tanh() for _ in range(count)]


def _rank_states(ranks: int) -> list[dict[str, torch.Tensor]]:
    """What a run of several processes saves in rng['ranks']: each process's own generator state."""
    return [{"torch": torch.get_rng_state()} for _ in range(ranks)]


def make_seeds(work: Path) -> list[Seed]:
    """Train the three tiny models (about a second each) and save the variants."""
    from charlstm.training.run import train

    work.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second OpenMP thread only spins against the first on a busy machine
    try:
        for name, model in SEED_MODELS.items():
            run = work / f"seed-{name}"
            shutil.rmtree(run, ignore_errors=True)
            train(seed_corpus(name), model, TrainConfig(batch_size=4, seq_len=8, max_steps=3, eval_every=3), run)
            paths[name] = run / "latest.pt"
    finally:
        torch.set_num_threads(threads)
    variants = {
        "lstm-noopt": ("lstm", lambda p: p.pop("optimizer")),
        "gru-noopt": ("gru", lambda p: p.pop("optimizer")),
        "rnn-starts": ("rnn", lambda p: p.__setitem__("start_states", _start_states(p, 5))),
        "lstm-starts": ("lstm", lambda p: p.__setitem__("start_states", _start_states(p, 3))),
        "gru-ranks": ("gru", lambda p: p["rng"].__setitem__("ranks", _rank_states(2))),
    }
    for name, (base, edit) in variants.items():
        payload = torch.load(paths[base], weights_only=True)
        edit(payload)
        paths[name] = work / f"seed-{name}.pt"
        torch.save(payload, paths[name])
    return [Seed(n, p, torch.load(p, weights_only=True), p.read_bytes()) for n, p in paths.items()]


# ---------------------------------------------------------------------------------------------- helpers


def pint(value: int) -> bytes:
    """A pickle (protocol 2) int opcode for `value`."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    n = (value.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + value.to_bytes(n, "little", signed=True)


def pstr(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def pglobal(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def entries_of(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_zip(
    path: Path,
    entries: list[tuple[str, bytes]],
    compress: Callable[[str], bool] = lambda n: False,
    prefix: bytes = b"",
    suffix: bytes = b"",
    comment: bytes = b"",
) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a case
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if compress(name) else zipfile.ZIP_STORED
                archive.writestr(info, data)
            archive.comment = comment
    path.write_bytes(prefix + buffer.getvalue() + suffix)


def pickle_of(entries: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    for i, (name, data) in enumerate(entries):
        if name.endswith("/data.pkl"):
            return i, data
    raise AssertionError("no data.pkl")


def with_pickle(entries: list[tuple[str, bytes]], data: bytes) -> list[tuple[str, bytes]]:
    index, _ = pickle_of(entries)
    return [*entries[:index], (entries[index][0], data), *entries[index + 1 :]]


def opcodes(data: bytes) -> list[tuple[str, Any, int, int]]:
    """(name, argument, start, end) of each opcode of a well-formed pickle."""
    ops = list(pickletools.genops(data))
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    return [(op.name, arg, pos, end) for (op, arg, pos), end in zip(ops, ends)]


def inject(data: bytes, key: str, value: bytes) -> bytes:
    """A real pickle whose top-level dict gets `key` set to the pickled `value` (opcodes) before STOP."""
    assert data.endswith(b".")
    return data[:-1] + pstr(key) + value + b"s."


def save(payload: Any, path: Path) -> None:
    torch.save(payload, path)


# --------------------------------------------------------------------------------------------- mutations


@dataclass
class Case:
    kind: str
    variant: str
    must_refuse: bool = False


Mutation = Callable[[random.Random, Seed, Path, Path], Case]
MUTATIONS: dict[str, Mutation] = {}


def mutation(kind: str):
    def register(fn: Mutation) -> Mutation:
        MUTATIONS[kind] = fn
        return fn

    return register


ODD_NUMBERS = [
    0,
    -1,
    1,
    2,
    3,
    7,
    255,
    256,
    60000,
    10**6,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    10**100,
    -(10**100),
    1.5,
    float("nan"),
    float("inf"),
    -0.0,
    True,
    False,
    None,
    "16",
    "",
    [16],
    {"x": 1},
]


def odd_value(rng: random.Random) -> Any:
    return rng.choice(ODD_NUMBERS)


@mutation("config-number")
def m_config(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    key = rng.choice(["vocab_size", "cell", "layers", "hidden", "embed", "dropout", "unknown_field"])
    value = rng.choice([odd_value(rng), "lstm", "gru", "rnn", "transformer", 0.99, -0.5])
    p["model_config"][key] = value
    save(p, out)
    return Case("config-number", f"model_config.{key}={str(value)[:12]}")


@mutation("train-config")
def m_train_config(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    key = rng.choice(
        [
            "batch_size",
            "seq_len",
            "lr",
            "seed",
            "max_steps",
            "eval_every",
            "val_frac",
            "epochs",
            "max_time",
            "device",
            "precision",
            "compile",
            "extra",
        ]
    )
    if rng.random() < 0.1:
        p["train_config"] = odd_value(rng)
        save(p, out)
        return Case("train-config", "whole")
    p["train_config"][key] = odd_value(rng)
    save(p, out)
    return Case("train-config", f"{key}")


@mutation("vocab")
def m_vocab(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    vocab = p["vocab"]
    how = rng.choice(["drop", "dup", "multi-char", "int", "huge", "not-list", "empty", "empty-strings", "swap"])
    if how == "drop":
        vocab.pop(rng.randrange(len(vocab)))
    elif how == "dup":
        vocab[rng.randrange(len(vocab))] = vocab[0]
    elif how == "multi-char":
        vocab[rng.randrange(len(vocab))] = "ab"
    elif how == "int":
        vocab[rng.randrange(len(vocab))] = 7
    elif how == "huge":
        p["vocab"] = [chr(0x4E00 + i) for i in range(100_000)]
        p["model_config"]["vocab_size"] = len(p["vocab"])
    elif how == "not-list":
        p["vocab"] = rng.choice(["abc", tuple(vocab), {c: 1 for c in vocab}, None])
    elif how == "empty":
        p["vocab"] = []
    elif how == "empty-strings":
        vocab[0] = vocab[1] = ""
    else:  # a different but valid vocabulary: loads
        i, j = rng.randrange(len(vocab)), rng.randrange(len(vocab))
        vocab[i], vocab[j] = vocab[j], vocab[i]
    save(p, out)
    return Case("vocab", how)


@mutation("missing-key")
def m_missing(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    where = rng.choice(["top", "top", "model", "optimizer", "progress", "config"])
    if where == "top":
        key = rng.choice(list(p))
        del p[key]
    elif where == "model":
        key = rng.choice(list(p["model"]))
        del p["model"][key]
    elif where == "optimizer" and "optimizer" in p:
        key = rng.choice(["state", "param_groups"])
        del p["optimizer"][key]
    elif where == "progress":
        key = rng.choice(list(p["progress"]))
        del p["progress"][key]
    else:
        key = rng.choice(list(p["model_config"]))
        del p["model_config"][key]
    save(p, out)
    return Case("missing-key", f"{where}.{key}" if where != "optimizer" or "optimizer" in seed.payload else where)


@mutation("extra-key")
def m_extra(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(["scalar", "dict", "tensor", "big-tensor", "nested", "string", "tensor-in-list", "expanded"])
    value: Any = {
        "scalar": 3,
        "dict": {"a": [1, 2, {"b": None}]},
        "tensor": torch.ones(3),
        "big-tensor": torch.ones(1 << 18),
        "nested": [[[[[[1]]]]]],
        "string": "x" * 100_000,
        "tensor-in-list": [torch.zeros(2, 2), torch.zeros(3)],
        "expanded": torch.zeros(1).expand(100_000, 1000),
    }[how]
    target = p if rng.random() < 0.7 else p[rng.choice(["model_config", "progress", "corpus", "rng"])]
    target["extra_" + how] = value
    save(p, out)
    return Case("extra-key", how, must_refuse=how == "expanded")


def _random_weight(rng, p) -> str:
    return rng.choice(list(p["model"]))


@mutation("weight-shape")
def m_shape(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    name = _random_weight(rng, p)
    shape = tuple(p["model"][name].shape)
    how = rng.choice(["plus-row", "flip", "3d", "scalar", "empty", "flat"])
    new = {
        "plus-row": (shape[0] + 1, *shape[1:]),
        "flip": shape[::-1],
        "3d": (1, *shape),
        "scalar": (),
        "empty": (0, *shape[1:]),
        "flat": (math.prod(shape),),
    }[how]
    p["model"][name] = torch.zeros(new)
    save(p, out)
    return Case("weight-shape", how, must_refuse=new != shape)


@mutation("dtype")
def m_dtype(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    dtype = rng.choice(
        [
            torch.float64,
            torch.float16,
            torch.bfloat16,
            torch.int64,
            torch.uint8,
            torch.bool,
            torch.int32,
            torch.complex64,
            torch.int8,
        ]
    )
    where = rng.choice(["model", "model", "hidden", "rng", "optimizer", "start_states"])
    if where == "model":
        name = _random_weight(rng, p)
        p["model"][name] = p["model"][name].to(dtype)
    elif where == "hidden" and p.get("hidden"):
        p["hidden"] = [h.to(dtype) for h in p["hidden"]]
    elif where == "rng":
        p["rng"]["torch"] = p["rng"]["torch"].to(dtype)
    elif where == "optimizer" and p.get("optimizer"):
        state = p["optimizer"]["state"][0]
        key = rng.choice(list(state))
        state[key] = state[key].to(dtype)
    elif where == "start_states" and p.get("start_states"):
        p["start_states"] = [t.to(dtype) for t in p["start_states"]]
    save(p, out)
    return Case("dtype", f"{where}:{str(dtype).replace('torch.', '')}", must_refuse=where == "model")


@mutation("nan-inf")
def m_nan(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    bad = rng.choice([float("nan"), float("inf"), -float("inf")])
    where = rng.choice(["model", "model", "start_states", "optimizer", "hidden"])
    if where == "model":
        tensor = p["model"][_random_weight(rng, p)]
    elif where == "start_states" and p.get("start_states"):
        tensor = p["start_states"][0]
    elif where == "optimizer" and p.get("optimizer"):
        tensor = p["optimizer"]["state"][0]["exp_avg"]
    elif p.get("hidden"):
        tensor = p["hidden"][0]
        where = "hidden"
    else:
        tensor, where = p["model"]["head.bias"], "model"
    tensor.view(-1)[rng.randrange(tensor.numel())] = bad
    save(p, out)
    return Case("nan-inf", where, must_refuse=where in ("model", "start_states"))


def _expanded(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(1).expand(shape) if shape else torch.zeros(())


@mutation("stride0-expand")
def m_expand(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(["one-weight", "bomb-hidden-60000", "bomb-hidden-6000", "hidden", "start_states", "rng", "opt"])
    if how.startswith("bomb"):
        hidden = int(how.rsplit("-", 1)[1])
        p["model_config"]["hidden"] = hidden
        config = ModelConfig(**p["model_config"])
        from charlstm.model.charrnn import weight_shapes

        p["model"] = {k: _expanded(s) for k, s in weight_shapes(config).items()}
        p.pop("optimizer", None)
        p.pop("hidden", None)
        p.pop("start_states", None)
    elif how == "one-weight":
        name = rng.choice([n for n, t in p["model"].items() if t.numel() > 1])
        p["model"][name] = _expanded(tuple(p["model"][name].shape))
    elif how == "hidden" and p.get("hidden"):
        p["hidden"] = [_expanded(tuple(h.shape)) for h in p["hidden"]]
    elif how == "start_states":
        p["start_states"] = [_expanded(tuple(t.shape)) for t in _start_states(p, 1024)]
    elif how == "rng":
        p["rng"]["torch"] = torch.zeros(1, dtype=torch.uint8).expand(5056)
    else:
        state = p.get("optimizer", {}).get("state", {}).get(0)
        if state is None:
            p["model"]["head.weight"] = _expanded(tuple(p["model"]["head.weight"].shape))
        else:
            state["exp_avg"] = _expanded(tuple(state["exp_avg"].shape))
    save(p, out)
    return Case("stride0-expand", how, must_refuse=True)


@mutation("overlap-view")
def m_overlap(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    name = rng.choice([n for n, t in p["model"].items() if t.dim() == 2])
    shape = tuple(p["model"][name].shape)
    how = rng.choice(["rows-overlap", "all-one-stride", "big-stride-out-of-range"])
    if how == "rows-overlap":  # row i starts at element i: rows share all but one element with the next
        view = torch.randn(shape[0] + shape[1]).as_strided(shape, (1, 1))
    elif how == "all-one-stride":  # every row is the same elements
        view = torch.randn(shape[1]).as_strided(shape, (0, 1))
    else:
        base = torch.randn(shape[0] * shape[1] * 2)
        view = base.as_strided(shape, (shape[1] * 2, 1))  # in range of its storage, but not owning it
    p["model"][name] = view
    save(p, out)
    return Case("overlap-view", how, must_refuse=True)


@mutation("offset-view")
def m_offset(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    name = _random_weight(rng, p)
    weight = p["model"][name]
    how = rng.choice(["offset", "prefix-of-bigger", "slice-of-bigger"])
    big = torch.randn(weight.numel() * 3)
    start = {"offset": weight.numel(), "prefix-of-bigger": 0, "slice-of-bigger": 5}[how]
    p["model"][name] = big[start : start + weight.numel()].view(weight.shape)
    save(p, out)
    return Case("offset-view", how, must_refuse=True)


@mutation("transposed")
def m_transposed(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    name = rng.choice([n for n, t in p["model"].items() if t.dim() == 2])
    weight = p["model"][name]
    p["model"][name] = weight.t().contiguous().t()  # same shape and values, column-major
    save(p, out)
    return Case("transposed", name.split(".")[0], must_refuse=True)


@mutation("shared-storage")
def m_shared(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(["same-tensor", "views-of-one", "hidden-pair", "optimizer-moments", "weight-and-moment"])
    by_shape = defaultdict(list)
    for n, t in p["model"].items():
        by_shape[tuple(t.shape)].append(n)
    pairs = [names for names in by_shape.values() if len(names) >= 2]
    if how == "same-tensor" and pairs:
        a, b = rng.choice(pairs)[:2]
        p["model"][b] = p["model"][a]
    elif how == "views-of-one" and pairs:
        a, b = rng.choice(pairs)[:2]
        both = torch.randn(2, *p["model"][a].shape)
        p["model"][a], p["model"][b] = both[0], both[1]
    elif how == "hidden-pair" and len(p.get("hidden") or []) == 2:
        p["hidden"][1] = p["hidden"][0]
    elif how == "optimizer-moments" and p.get("optimizer"):
        state = p["optimizer"]["state"][0]
        state["exp_avg_sq"] = state["exp_avg"]
    else:
        name = "head.bias"
        if p.get("optimizer"):
            p["optimizer"]["state"][len(p["model"]) - 1]["exp_avg"] = p["model"][name]
        else:
            p["model"]["embed.weight"] = torch.zeros(1)  # nothing to share: a wrong shape instead
            how = "fallback-shape"
    save(p, out)
    return Case("shared-storage", how, must_refuse=True)


@mutation("optimizer")
def m_optimizer(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    if not p.get("optimizer"):
        p["optimizer"] = rng.choice([{"state": {}, "param_groups": []}, {}, [], torch.zeros(3)])
        save(p, out)
        return Case("optimizer", "added-bad")
    opt = p["optimizer"]
    how = rng.choice(
        [
            "swap-states",
            "wrong-shape",
            "step-vector",
            "params-dup",
            "params-missing",
            "betas-str",
            "lr-huge",
            "state-str-key",
            "state-not-dict",
            "groups-empty",
            "extra-group-key",
            "moment-is-list",
            "step-int",
            "drop-state",
        ]
    )
    state, groups = opt["state"], opt["param_groups"]
    must = True
    if how == "swap-states":
        keys = sorted(state)
        a, b = rng.sample(keys, 2)
        state[a], state[b] = state[b], state[a]
        must = tuple(state[a]["exp_avg"].shape) != tuple(state[b]["exp_avg"].shape)
    elif how == "wrong-shape":
        state[0]["exp_avg"] = torch.zeros(3, 3)
    elif how == "step-vector":
        state[0]["step"] = torch.zeros(5)
    elif how == "params-dup":
        groups[0]["params"][0] = groups[0]["params"][1]
    elif how == "params-missing":
        groups[-1]["params"].pop()
    elif how == "betas-str":
        groups[0]["betas"] = "0.9"
    elif how == "lr-huge":
        groups[0]["lr"] = 10**100
    elif how == "state-str-key":
        state["zero"] = state.pop(0)
    elif how == "state-not-dict":
        opt["state"] = [1, 2]
    elif how == "groups-empty":
        opt["param_groups"] = []
    elif how == "extra-group-key":
        groups[0]["note"] = "hello"
        must = False
    elif how == "moment-is-list":
        state[0]["exp_avg"] = [1.0, 2.0]
    elif how == "step-int":
        state[0]["step"] = 3
        must = False
    else:
        state.pop(rng.choice(sorted(state)))
        must = False
    save(p, out)
    return Case("optimizer", how, must_refuse=must)


@mutation("hidden")
def m_hidden(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    layers, hidden = p["model_config"]["layers"], p["model_config"]["hidden"]
    count = 2 if p["model_config"]["cell"] == "lstm" else 1
    how = rng.choice(["other-batch", "wrong-hidden", "wrong-count", "2d", "not-list", "empty", "huge-batch", "bf16"])
    must = how in ("wrong-hidden", "wrong-count", "2d", "not-list")
    value: Any = {
        "other-batch": [torch.zeros(layers, 7, hidden) for _ in range(count)],
        "wrong-hidden": [torch.zeros(layers, 4, hidden + 1) for _ in range(count)],
        "wrong-count": [torch.zeros(layers, 4, hidden) for _ in range(count + 1)],
        "2d": [torch.zeros(4, hidden) for _ in range(count)],
        "not-list": torch.zeros(layers, 4, hidden),
        "empty": [],
        "huge-batch": [torch.zeros(layers, 20_000, hidden) for _ in range(count)],
        "bf16": [torch.zeros(layers, 4, hidden, dtype=torch.bfloat16) for _ in range(count)],
    }[how]
    p["hidden"] = value
    save(p, out)
    return Case("hidden", how, must_refuse=must)


@mutation("rng")
def m_rng(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(["short", "huge", "2d", "float", "not-dict", "ranks-good", "ranks-bad", "cuda-list", "extra"])
    must = how in ("huge", "2d", "float", "not-dict", "ranks-bad")
    if how == "short":
        p["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    elif how == "huge":
        p["rng"]["torch"] = torch.zeros(2 << 20, dtype=torch.uint8)
    elif how == "2d":
        p["rng"]["torch"] = torch.zeros(2, 2528, dtype=torch.uint8)
    elif how == "float":
        p["rng"]["torch"] = torch.zeros(5056)
    elif how == "not-dict":
        p["rng"] = [torch.get_rng_state()]
    elif how == "ranks-good":
        p["rng"]["ranks"] = [{"torch": torch.get_rng_state()} for _ in range(3)]
    elif how == "ranks-bad":
        p["rng"]["ranks"] = [{"torch": "state"}]
    elif how == "cuda-list":
        p["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8), None]
    else:
        p["rng"]["numpy"] = ("MT19937", [1, 2, 3])
    save(p, out)
    return Case("rng", how, must_refuse=must)


@mutation("start-states")
def m_start_states(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    config = p["model_config"]
    count = 2 if config["cell"] == "lstm" else 1
    layers, hidden = config["layers"], config["hidden"]
    how = rng.choice(
        [
            "good-1",
            "good-1024",
            "good-random",
            "k-0",
            "k-1025",
            "wrong-hidden",
            "wrong-count",
            "float64",
            "not-list",
            "2d",
            "nan",
            "none",
            "absent",
        ]
    )
    good = how.startswith("good") or how in ("none", "absent")
    k = {"good-1": 1, "good-1024": 1024, "k-0": 0, "k-1025": 1025}.get(how, rng.randint(1, 40))
    states = [torch.randn(layers, k, hidden).tanh() for _ in range(count)]
    if how == "wrong-hidden":
        states = [torch.zeros(layers, k, hidden + 1) for _ in range(count)]
    elif how == "wrong-count":
        states = states + states[:1]
        states[-1] = states[-1].clone()
    elif how == "float64":
        states = [s.double() for s in states]
    elif how == "2d":
        states = [s[0] for s in states]
        states = [s.clone() for s in states]
    elif how == "nan":
        states[0][0, 0, 0] = float("nan")
    value: Any = states
    if how == "not-list":
        value = states[0]
    elif how == "none":
        value = None
    if how == "absent":
        p.pop("start_states", None)
    else:
        p["start_states"] = value
    save(p, out)
    return Case("start-states", how, must_refuse=not good)


@mutation("progress")
def m_progress(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(["value", "value", "not-dict", "many-keys", "int-key"])
    if how == "value":
        key = rng.choice(list(p["progress"]))
        p["progress"][key] = odd_value(rng)
        how = f"{key}"
    elif how == "not-dict":
        p["progress"] = [1, 2]
    elif how == "many-keys":
        p["progress"].update({f"k{i}": i for i in range(100)})
    else:
        p["progress"][7] = 1
    save(p, out)
    return Case("progress", how)


def _dag(levels: int) -> list:
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


@mutation("corpus")
def m_corpus(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(
        [
            "dag-60",
            "dag-20",
            "deep-100",
            "cycle",
            "sources-not-list",
            "tensor-inside",
            "big-string",
            "huge-int",
            "config-bad",
            "records-str",
            "set",
            "none",
            "absent",
            "tuple",
        ]
    )
    must = how in ("dag-60", "deep-100", "cycle", "tensor-inside", "big-string", "huge-int")
    corpus = p.get("corpus") or {}
    if how.startswith("dag"):
        corpus["dag"] = _dag(int(how.split("-")[1]))
    elif how == "deep-100":
        deep: Any = 1
        for _ in range(100):
            deep = [deep]
        corpus["deep"] = deep
    elif how == "cycle":
        loop: list = []
        loop.append(loop)
        corpus["loop"] = loop
    elif how == "sources-not-list":
        corpus["sources"] = "memory"
    elif how == "tensor-inside":
        corpus["t"] = torch.zeros(3)
    elif how == "big-string":
        corpus["name"] = "x" * (5 << 20)
    elif how == "huge-int":
        corpus["chars"] = 10**100
    elif how == "config-bad":
        corpus["config"] = {"paths": [1, 2], "records": "weird"}
    elif how == "records-str":
        corpus["records"] = "many"
    elif how == "set":
        corpus["odd"] = {1, 2}
    elif how == "tuple":
        corpus["t"] = (1, 2)
    if how == "none":
        p["corpus"] = None
    elif how == "absent":
        p.pop("corpus", None)
    else:
        p["corpus"] = corpus
    save(p, out)
    return Case("corpus", how, must_refuse=must)


@mutation("structure")
def m_structure(rng, seed, out, marker):
    p = copy.deepcopy(seed.payload)
    how = rng.choice(
        [
            "list",
            "none",
            "model-list",
            "model-tensor",
            "format",
            "version-0",
            "version-2",
            "version-huge",
            "version-str",
            "version-bool",
            "config-list",
            "weights-in-ordereddict",
        ]
    )
    value: Any = p
    if how == "list":
        value = [p]
    elif how == "none":
        value = None
    elif how == "model-list":
        p["model"] = list(p["model"].values())
    elif how == "model-tensor":
        p["model"] = torch.zeros(3)
    elif how == "format":
        p["format"] = "charlstm2"
    elif how.startswith("version"):
        p["version"] = {
            "version-0": 0,
            "version-2": 2,
            "version-huge": 10**100,
            "version-str": "1",
            "version-bool": True,
        }[how]
    elif how == "config-list":
        p["model_config"] = list(p["model_config"].items())
    else:
        from collections import OrderedDict

        p["model"] = OrderedDict(p["model"])
    save(value, out)
    return Case("structure", how, must_refuse=how not in ("weights-in-ordereddict",))


# -- byte level


@mutation("flip-bytes")
def m_flip(rng, seed, out, marker):
    data = bytearray(seed.raw)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    out.write_bytes(bytes(data))
    return Case("flip-bytes", "anywhere")


@mutation("truncate")
def m_truncate(rng, seed, out, marker):
    cut = rng.choice([0, 4, 22, rng.randrange(len(seed.raw)), len(seed.raw) - 1, len(seed.raw) - 23])
    out.write_bytes(seed.raw[:cut])
    return Case("truncate", "file", must_refuse=True)


@mutation("data-record")
def m_record(rng, seed, out, marker):
    entries = entries_of(seed.raw)
    data_indices = [i for i, (n, d) in enumerate(entries) if "/data/" in n and len(d) > 8]
    i = rng.choice(data_indices)
    name, data = entries[i]
    how = rng.choice(["flip-rezipped", "flip-rezipped", "truncated", "extended", "emptied", "removed"])
    must = how in ("truncated", "extended", "emptied", "removed")
    if how == "flip-rezipped":  # valid CRC: the weights change (maybe into NaN)
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        entries[i] = (name, bytes(b))
    elif how == "truncated":
        entries[i] = (name, data[: rng.randrange(len(data))])
    elif how == "extended":
        entries[i] = (name, data + bytes(rng.choice([1, 4, 64, 4096])))
    elif how == "emptied":
        entries[i] = (name, b"")
    else:
        del entries[i]
    write_zip(out, entries)
    return Case("data-record", how, must_refuse=must)


@mutation("pickle-bytes")
def m_pickle_bytes(rng, seed, out, marker):
    entries = entries_of(seed.raw)
    _, data = pickle_of(entries)
    b = bytearray(data)
    how = rng.choice(["flip", "flip", "insert", "delete", "truncate", "duplicate-range", "random-opcode"])
    if how == "flip":
        for _ in range(rng.choice([1, 1, 2, 8])):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == "insert":
        pos = rng.randrange(len(b))
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
    elif how == "delete":
        pos = rng.randrange(len(b))
        del b[pos : pos + rng.randint(1, 6)]
    elif how == "truncate":
        del b[rng.randrange(len(b)) :]
    elif how == "duplicate-range":
        pos = rng.randrange(len(b))
        b[pos:pos] = b[pos : pos + rng.randint(1, 64)]
    else:
        pos = rng.randrange(2, len(b))
        b[pos] = rng.choice(b"}])(tNJKMGXqrhjaesucRQ\x80\x85\x86\x87\x88\x89\x8a\x8c\x94\x95.0123PIL")
    write_zip(out, with_pickle(entries, bytes(b)))
    return Case("pickle-bytes", how)


INT_OPS = ("BININT1", "BININT2", "BININT", "LONG1")


@mutation("pickle-edit")
def m_pickle_edit(rng, seed, out, marker):
    """Edit what the pickle says of a tensor: its storage's numel (a size lie), key, location or type, or the
    tensor's offset, sizes or strides."""
    entries = entries_of(seed.raw)
    _, data = pickle_of(entries)
    ops = opcodes(data)
    j = rng.choice([i for i, op in enumerate(ops) if op[0] == "BINPERSID"])
    # the persistent id: MARK 'storage' GLOBAL key location numel TUPLE (each value maybe memoized)
    t = j - 1 if ops[j - 1][0] != "BINPUT" else j - 2
    m = max(i for i in range(t) if ops[i][0] == "MARK")
    storage_ops = [op for op in ops[m + 1 : t] if op[0] not in ("BINPUT", "LONG_BINPUT")]
    # then the tensor: offset, sizes, strides (ints), up to requires_grad (NEWFALSE)
    stop = next(i for i in range(j, len(ops)) if ops[i][0] in ("NEWFALSE", "NEWTRUE"))
    tensor_ints = [op for op in ops[j + 1 : stop] if op[0] in INT_OPS]
    how = rng.choice(["numel", "numel", "offset", "size", "stride", "key", "location", "dtype"])
    must = False
    if how == "numel":
        original = storage_ops[4][1]
        value = rng.choice([0, 1, 10**10, 2**62, original * 1000, original + 1, original - 1, -1, original])
        target, replacement, must = storage_ops[4], pint(value), value != original
        how = f"numel {'x1000' if value == original * 1000 else value}"
    elif how in ("key", "location"):
        target = storage_ops[2 if how == "key" else 3]
        replacement = pstr(rng.choice(["0", "999", "../../etc/passwd", "cuda:7", "x" * 300, "data.pkl", ""]))
    elif how == "dtype":
        target = storage_ops[1]
        replacement = pglobal(
            "torch",
            rng.choice(
                [
                    "DoubleStorage",
                    "HalfStorage",
                    "ByteStorage",
                    "LongStorage",
                    "BoolStorage",
                    "ComplexFloatStorage",
                    "QInt8Storage",
                    "UntypedStorage",
                    "Storage",
                ]
            ),
        )
    else:
        target = {
            "offset": tensor_ints[0],
            "size": tensor_ints[min(1, len(tensor_ints) - 1)],
            "stride": tensor_ints[-1],
        }[how]
        value = rng.choice([0, 1, 2, 7, 10**6, 2**40, 10**30, -1])
        replacement = pint(value)
        must = how == "offset" and value != 0
    new = data[: target[2]] + replacement + data[target[3] :]
    write_zip(out, with_pickle(entries, new))
    return Case("pickle-edit", how, must_refuse=must)


@mutation("zip-structure")
def m_zip(rng, seed, out, marker):
    entries = entries_of(seed.raw)
    how = rng.choice(
        [
            "deflate-all",
            "deflate-data",
            "deflate-pickle",
            "zip-bomb",
            "dup-pickle",
            "extra-entry",
            "prepended",
            "appended",
            "comment",
            "other-folder",
            "renamed-folder",
            "encrypted-flag",
            "rezipped",
        ]
    )
    must = how not in ("extra-entry", "renamed-folder", "rezipped")
    if how == "deflate-all":
        write_zip(out, entries, compress=lambda n: True)
    elif how == "deflate-data":
        write_zip(out, entries, compress=lambda n: "/data/" in n)
    elif how == "deflate-pickle":
        write_zip(out, entries, compress=lambda n: n.endswith("data.pkl"))
    elif how == "zip-bomb":  # 200 MB of zeros declared as a storage, deflated to ~200 KB
        prefix = entries[0][0].split("/")[0]
        numel = 50_000_000
        pkl = (
            b"\x80\x02}("
            + pstr("w")
            + pglobal("torch._utils", "_rebuild_tensor_v2")
            + b"(("
            + pstr("storage")
            + pglobal("torch", "FloatStorage")
            + pstr("0")
            + pstr("cpu")
            + pint(numel)
            + b"tQ"
            + pint(0)
            + b"("
            + pint(numel)
            + b"t("
            + pint(1)
            + b"t\x89"
            + pglobal("collections", "OrderedDict")
            + b")RtRu."
        )
        write_zip(
            out,
            [
                (f"{prefix}/data.pkl", pkl),
                (f"{prefix}/byteorder", b"little"),
                (f"{prefix}/data/0", bytes(numel * 4)),
                (f"{prefix}/version", b"3\n"),
            ],
            compress=lambda n: True,
        )
    elif how == "dup-pickle":
        index, data = pickle_of(entries)
        evil = inject(data, "x", pglobal("posix", "system") + b"(" + pstr(f"touch {marker}") + b"tR")
        write_zip(out, [*entries, (entries[index][0], evil)])
    elif how == "extra-entry":
        write_zip(out, [*entries, (entries[0][0].split("/")[0] + "/notes.txt", b"hello" * 100)])
    elif how == "prepended":
        write_zip(out, entries, prefix=os.urandom(rng.choice([1, 100, 4096])))
    elif how == "appended":
        write_zip(out, entries, suffix=os.urandom(rng.choice([1, 100])))
    elif how == "comment":
        write_zip(out, entries, comment=b"a zip comment")
    elif how == "other-folder":
        name, data = entries[-1]
        entries[-1] = ("elsewhere/" + name.split("/", 1)[1], data)
        write_zip(out, entries)
    elif how == "renamed-folder":
        write_zip(out, [("renamed/" + n.split("/", 1)[1], d) for n, d in entries])
    elif how == "encrypted-flag":
        write_zip(out, entries)
        data = bytearray(out.read_bytes())
        pos = data.rfind(b"PK\x01\x02")  # the last central directory entry: set its encrypted bit
        data[pos + 8] |= 1
        out.write_bytes(bytes(data))
    else:
        write_zip(out, entries)
    return Case("zip-structure", how, must_refuse=must)


class _Evil:
    """Pickles as a call of `function(*args)` (what an attacker's torch.save writes)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@mutation("code-global")
def m_code(rng, seed, out, marker):
    """Pickles asking to import and call code: each would create the marker file if it ran."""
    how = rng.choice(
        [
            "torch.save-os.system",
            "torch.save-open",
            "torch.save-exec",
            "torch.save-subprocess",
            "posix.system",
            "builtins.open",
            "builtins.eval",
            "nt.system",
            "__builtin__.open",
            "shutil.copy",
            "in-corpus",
            "torch.load",
            "getattr-chain",
        ]
    )
    if how.startswith("torch.save-"):
        import subprocess as sp

        evil = {
            "torch.save-os.system": _Evil(os.system, f"touch {marker}"),
            "torch.save-open": _Evil(open, str(marker), "w"),
            "torch.save-exec": _Evil(exec, f"open({str(marker)!r}, 'w')"),
            "torch.save-subprocess": _Evil(sp.call, ["touch", str(marker)]),
        }[how]
        p = copy.deepcopy(seed.payload)
        p[rng.choice(["model", "corpus", "extra", "vocab"])] = evil
        save(p, out)
        return Case("code-global", how, must_refuse=True)
    entries = entries_of(seed.raw)
    _, data = pickle_of(entries)
    calls = {
        "posix.system": pglobal("posix", "system") + b"(" + pstr(f"touch {marker}") + b"tR",
        "nt.system": pglobal("nt", "system") + b"(" + pstr(f"touch {marker}") + b"tR",
        "builtins.open": pglobal("builtins", "open") + b"(" + pstr(str(marker)) + pstr("w") + b"tR",
        "__builtin__.open": pglobal("__builtin__", "open") + b"(" + pstr(str(marker)) + pstr("w") + b"tR",
        "builtins.eval": pglobal("builtins", "eval") + b"(" + pstr(f"open({str(marker)!r}, 'w')") + b"tR",
        "shutil.copy": pglobal("shutil", "copy") + b"(" + pstr(str(seed.path)) + pstr(str(marker)) + b"tR",
        "in-corpus": pglobal("builtins", "open") + b"(" + pstr(str(marker)) + pstr("w") + b"tR",
        "torch.load": pglobal("torch", "load") + b"(" + pstr(str(seed.path)) + b"tR",
        "getattr-chain": pglobal("builtins", "getattr") + b"(" + pglobal("os", "path") + pstr("join") + b"tR",
    }
    key = "corpus" if how == "in-corpus" else "extra"
    write_zip(out, with_pickle(entries, inject(data, key, calls[how])))
    return Case("code-global", how, must_refuse=True)


@mutation("pickle-bomb")
def m_bomb(rng, seed, out, marker):
    """Few bytes of pickle that cost much: allocations torch's unpickler allows, deep or shared structures."""
    entries = entries_of(seed.raw)
    _, data = pickle_of(entries)
    how = rng.choice(
        [
            "bytearray",
            "bytearray-huge",
            "tensor-new",
            "deep-tuple-key",
            "deep-tuple-value",
            "deep-list",
            "dag-corpus",
            "cycle",
            "long-binput",
            "memo-flood",
            "mark-flood",
            "big-pickle",
            "unicode-len-lie",
            "huge-long",
            "set",
            "counter",
            "_codecs",
            "none-flood",
            "string-flood",
            "colliding-keys",
        ]
    )
    must, value = True, b""
    if how == "bytearray":
        value = pglobal("builtins", "bytearray") + b"(" + pint(2**31 - 1) + b"tR"
    elif how == "bytearray-huge":
        value = pglobal("builtins", "bytearray") + b"(" + pint(10**13) + b"tR"
    elif how == "tensor-new":
        value = pglobal("torch", "Tensor") + b"(" + pint(100_000) + pint(100_000) + b"t\x81"
    elif how == "deep-tuple-key":  # hashing it overflows the C stack: torch.load dies of SIGSEGV
        value = b"}N" + b"\x85" * 300_000 + pint(1) + b"s"
    elif how == "deep-tuple-value":
        value = b"N" + b"\x85" * 600_000
    elif how == "deep-list":
        value = b"]" * 300_000 + b"a" * 299_999
    elif how == "dag-corpus":
        # t0 = []; t(i+1) = (t(i), t(i)): 80 levels, 2**80 leaves for a naive walk; replaces the real corpus
        value = b"]q\x00" + b"".join(b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(80))
    elif how == "cycle":
        value = b"]q\x00h\x00a"
    elif how == "long-binput":
        value = b"Nr\xff\xff\xff\xff"
        must = False  # harmless: a memo of one entry (None) under key "extra"
    elif how == "memo-flood":
        value = b"]q\x00(" + b"h\x00" * 1_500_000 + b"e"  # 3 MB: within the pickle's size limit
    elif how == "mark-flood":
        value = b"(" * 1_000_000 + b"N"
    elif how == "colliding-keys":  # ints whose hashes are all 0: a dict of them fills in quadratic time
        value = b"}(" + b"".join(pint(k * (2**61 - 1)) + b"N" for k in range(1, 40_001)) + b"u"
    elif how == "none-flood":  # the most opcodes the pickle's size limit allows, each a stack push
        value = b"(" + b"N" * ((4 << 20) - len(data) - 64) + b"t"
    elif how == "string-flood":  # a vocabulary-like list of as many short strings as fit
        value = b"](" + pstr("a") * (((4 << 20) - len(data) - 64) // 6) + b"e"
        must = False
    elif how == "big-pickle":
        value = b"]q\x00(" + b"h\x00" * 3_000_000 + b"e"  # 6 MB
    elif how == "unicode-len-lie":
        value = b"X\xff\xff\xff\x7fabc"
    elif how == "huge-long":
        value = b"\x8a\xff" + os.urandom(255)
        must = False
    elif how == "set":
        value = b"\x8f"  # EMPTY_SET: torch accepts it, a checkpoint never holds one
    elif how == "counter":
        value = pglobal("collections", "Counter") + b")R"
    else:
        value = pglobal("_codecs", "encode") + b"(" + pstr("x" * 100) + pstr("latin1") + b"tR"
    key = "corpus" if how in ("dag-corpus", "cycle") else "extra"
    write_zip(out, with_pickle(entries, inject(data, key, value)))
    return Case("pickle-bomb", how, must_refuse=must)


# ----------------------------------------------------------------------------------------------- worker


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS


def _targets(path: Path, seed_name: str, resume: bool, run_dir: Path) -> str:
    """What the commands do with a checkpoint; returns 'loaded' (or raises)."""
    from charlstm.checkpoint import store as ckpt
    from charlstm.cli import render
    from charlstm.config import SampleConfig, from_dict
    from charlstm.data.vocab import Vocab
    from charlstm.generate.sample import sample_text
    from charlstm.model.charrnn import CharRNN
    from charlstm.runs.model_file import LoadedModel
    from charlstm.training.summary import summary_of

    payload = ckpt.load_model_checkpoint(path)
    # the model built as model_file.load_model builds it (from the payload loaded above: one load less per case)
    model = CharRNN(from_dict(ModelConfig, payload["model_config"]))
    model.load_state_dict(payload["model"])
    loaded = LoadedModel(model=model.eval(), vocab=Vocab(payload["vocab"]), path=path, payload=payload)
    sample_text(loaded, SampleConfig(length=8, seed=1, num_samples=2))
    data = summary_of(path)
    render.info_rows(data)
    json.dumps(data)
    if resume:
        from charlstm.training.trainer import Trainer

        shutil.rmtree(run_dir, ignore_errors=True)
        Trainer(
            seed_corpus(seed_name),
            ModelConfig(),
            TrainConfig(max_steps=10**6, batch_size=4, seq_len=8),
            run_dir,
            resume_from=path,
        )
    return "loaded"


def worker_main(as_limit_mb: int) -> None:
    """Read one JSON case per line on stdin, answer one JSON line per case on the protocol pipe (stdout is sent
    to stderr so that nothing the code prints can break the protocol)."""
    import resource

    from charlstm.errors import CharlstmError

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import charlstm.cli.app
    import charlstm.generate.sample
    import charlstm.training.run  # noqa: F401

    limit = _status("VmSize") + (as_limit_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    proto.write(json.dumps({"ready": True, "rss": _status("VmRSS")}) + "\n")
    run_dir = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    for line in sys.stdin:
        job = json.loads(line)
        marker = Path(job["marker"])
        _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        try:
            outcome = _targets(Path(job["path"]), job["seed"], job["resume"], run_dir)
            message = ""
        except CharlstmError as exc:
            outcome, message = "refused", str(exc)
        except BaseException as exc:
            outcome = "BAD"
            message = (
                f"{type(exc).__name__}: {exc}".replace("\n", " | ")[:300]
                + " @ "
                + "".join(traceback.format_tb(exc.__traceback__)[-2:]).replace("\n", " | ")[-400:]
            )
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
        proto.write(
            json.dumps(
                {
                    "outcome": outcome,
                    "message": message,
                    "seconds": seconds,
                    "rss_before": before,
                    "rss_peak": peak,
                    "marker": marker.exists(),
                }
            )
            + "\n"
        )


class Worker:
    """The worker process, restarted when it dies or overruns a case."""

    def __init__(self, as_limit_mb: int, log: Path):
        self.as_limit_mb, self.log = as_limit_mb, log
        self.process: subprocess.Popen | None = None
        self.ready = False
        self.baseline_rss = 0

    def launch(self) -> None:
        """Start the process (it imports torch: seconds, which the caller may spend on something else)."""
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--as-limit-mb", str(self.as_limit_mb)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True, cwd=ROOT
        )
        self.ready = False

    def start(self) -> None:
        """Launch if needed, and wait until the worker is ready for cases."""
        if self.process is None or self.process.poll() is not None:
            self.launch()
        if not self.ready:
            hello = self._read(120)
            if hello is None or not hello.get("ready"):
                raise RuntimeError(f"the fuzz worker did not start (see {self.log})")
            self.baseline_rss, self.ready = hello["rss"], True

    def _read(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return json.loads(line) if line else None

    def submit(self, path: Path, seed: str, resume: bool, marker: Path) -> None:
        if self.process is None or self.process.poll() is not None or not self.ready:
            self.start()
        self.process.stdin.write(
            json.dumps({"path": str(path), "seed": seed, "resume": resume, "marker": str(marker)}) + "\n"
        )
        self.process.stdin.flush()

    def collect(self, marker: Path, timeout: float) -> dict:
        answer = self._read(timeout)
        if answer is None:
            died = self.process.poll()
            self.stop()
            what = f"worker died (exit {died})" if died is not None else f"no answer within {timeout:.0f} s"
            return {
                "outcome": "BAD",
                "message": what,
                "seconds": timeout,
                "rss_before": 0,
                "rss_peak": 0,
                "marker": marker.exists(),
            }
        return answer

    def run(self, path: Path, seed: str, resume: bool, marker: Path, timeout: float = 60.0) -> dict:
        """One case, start to end."""
        self.submit(path, seed, resume, marker)
        return self.collect(marker, timeout)

    def stop(self) -> None:
        if self.process is not None:
            try:
                self.process.kill()  # our own child, by its handle
                self.process.wait(10)
            except OSError:
                pass
            self.process, self.ready = None, False


# ------------------------------------------------------------------------------------------------ driver


@dataclass
class Result:
    kind: str
    variant: str
    outcome: str
    message: str
    seconds: float
    rss_peak_mb: float
    rss_delta_mb: float
    seed: str


def judge(case: Case, answer: dict, time_limit: float, rss_limit_mb: float) -> tuple[str, str]:
    """The outcome and why, BAD for any broken promise."""
    outcome, message = answer["outcome"], answer["message"]
    delta_mb = (answer["rss_peak"] - answer["rss_before"]) / 2**20
    if answer["marker"]:
        return "BAD", "CODE RAN: the marker file exists"
    if outcome == "refused" and ("\n" in message or not message.strip()):
        return "BAD", f"refused with a message that is not one line: {message!r:.200}"
    if answer["seconds"] > time_limit:
        return "BAD", f"took {answer['seconds']:.1f} s (limit {time_limit:.0f} s): {message:.200}"
    if delta_mb > rss_limit_mb:
        return "BAD", f"took {delta_mb:.0f} MB over its start (limit {rss_limit_mb:.0f} MB): {message:.200}"
    if outcome == "loaded" and case.must_refuse:
        return "BAD", "LOADED a checkpoint that must be refused"
    return outcome, message


def run_fuzz(
    seeds: list[Seed],
    cases: int,
    seed: int,
    work: Path,
    resume_every: int = 5,
    time_limit: float = 5.0,
    rss_limit_mb: float = 500.0,
    as_limit_mb: int = 3072,
    kinds: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    worker: Worker | None = None,
) -> list[Result]:
    """Run `cases` seeded cases (kinds in turn, seeds and variants drawn from `seed`); the results. The next
    case is written while the worker loads the current one (two files in turn)."""
    rng = random.Random(seed)
    kinds = kinds or list(MUTATIONS)
    own_worker = worker is None
    worker = worker or Worker(as_limit_mb, work / "worker.log")
    results: list[Result] = []

    def make(index: int) -> tuple[Case, Seed, Path, Path, bool]:
        kind = kinds[index % len(kinds)]
        base = rng.choice(seeds)
        path, marker = work / f"case-{index % 2}.pt", work / f"{MARKER_NAME}-{index % 2}"
        marker.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        try:
            case = MUTATIONS[kind](random.Random(rng.getrandbits(64)), base, path, marker)
        except Exception as exc:  # a mutation that does not apply to this seed: a plain copy instead
            case = Case(kind, f"n/a ({type(exc).__name__})")
            path.write_bytes(base.raw)
        return case, base, path, marker, resume_every > 0 and index % resume_every == 0

    try:
        warm = seeds[0]  # one untimed case first: the first resume and sample pay for lazy imports
        worker.run(warm.path, warm.name, True, work / "warm-up-marker")
        current = make(0) if cases else None
        if current:
            worker.submit(current[2], current[1].name, current[4], current[3])
        for index in range(cases):
            upcoming = make(index + 1) if index + 1 < cases else None  # while the worker runs `current`
            case, base, _, marker, _ = current
            answer = worker.collect(marker, timeout=max(30.0, time_limit * 6))
            outcome, message = judge(case, answer, time_limit, rss_limit_mb)
            results.append(
                Result(
                    case.kind,
                    case.variant,
                    outcome,
                    message,
                    answer["seconds"],
                    answer["rss_peak"] / 2**20,
                    (answer["rss_peak"] - answer["rss_before"]) / 2**20,
                    base.name,
                )
            )
            if upcoming:
                worker.submit(upcoming[2], upcoming[1].name, upcoming[4], upcoming[3])
            current = upcoming
            if progress:
                progress(index + 1)
    finally:
        if own_worker:
            worker.stop()
        for slot in (0, 1):
            (work / f"{MARKER_NAME}-{slot}").unlink(missing_ok=True)
    return results


def report(results: list[Result], elapsed: float) -> str:
    lines = []
    table: dict[str, Counter] = defaultdict(Counter)
    worst: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in results:
        table[r.kind][r.outcome] += 1
        worst[r.kind][0] = max(worst[r.kind][0], r.seconds)
        worst[r.kind][1] = max(worst[r.kind][1], r.rss_delta_mb)
    width = max([len(k) for k in table] + [len("mutation kind")])
    header = f"{'mutation kind':<{width}}  " + "  ".join(f"{o:>8}" for o in OUTCOMES)
    lines.append(header + "     cases   max s  max MB")
    for kind in sorted(table):
        row = table[kind]
        lines.append(
            f"{kind:<{width}}  "
            + "  ".join(f"{row[o]:>8}" for o in OUTCOMES)
            + f"  {sum(row.values()):>8}  {worst[kind][0]:>6.2f}  {worst[kind][1]:>6.1f}"
        )
    total = Counter(r.outcome for r in results)
    lines.append(f"{'all':<{width}}  " + "  ".join(f"{total[o]:>8}" for o in OUTCOMES) + f"  {len(results):>8}")
    if results:
        slowest = max(results, key=lambda r: r.seconds)
        largest = max(results, key=lambda r: r.rss_delta_mb)
        highest = max(results, key=lambda r: r.rss_peak_mb)
        lines.append("")
        mean = sum(r.seconds for r in results) / len(results)
        lines.append(
            f"cases: {len(results)} in {elapsed:.0f} s (the targets of a case: {mean * 1000:.1f} ms on average)"
        )
        lines.append(
            f"largest time of a case: {slowest.seconds:.3f} s ({slowest.kind}/{slowest.variant}, {slowest.outcome})"
        )
        lines.append(
            f"largest RSS growth of a case: {largest.rss_delta_mb:.1f} MB over the worker's RSS before it "
            f"({largest.kind}/{largest.variant}, {largest.outcome})"
        )
        lines.append(
            f"largest peak RSS (VmHWM) of the worker in a case: {highest.rss_peak_mb:.0f} MB "
            f"({highest.kind}/{highest.variant})"
        )
    skipped = Counter(r.kind for r in results if r.variant.startswith("n/a"))
    if skipped:
        lines.append(
            "mutations that did not apply to their seed (a copy of it ran instead): "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(skipped.items()))
        )
    bad = [r for r in results if r.outcome == "BAD"]
    for r in bad[:40]:
        lines.append(f"BAD {r.kind}/{r.variant} (seed {r.seed}): {r.message}")
    messages = Counter((r.kind, r.message.split(": ", 1)[-1][:100]) for r in results if r.outcome == "refused")
    lines.append("")
    lines.append("most common refusals (kind: message after the file name):")
    for (kind, message), count in messages.most_common(25):
        lines.append(f"  {count:>5}  {kind}: {message}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- bombs, ours vs torch.load

TORCH_LOAD_PROBE = r"""
import json, resource, sys, time, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
limit = status("VmSize") + (int(sys.argv[2]) << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
before, start = status("VmRSS"), time.perf_counter()
try:
    payload = torch.load(sys.argv[1], weights_only=True)
    weights = payload.get("model", {}) if isinstance(payload, dict) else {}
    finite = all(bool(torch.isfinite(t).all()) for t in weights.values())  # what the old check did next
    outcome = "loaded" + ("" if finite else " (not finite)")
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start,
                  "rss_mb": (status("VmHWM") - before) / 2**20}))
"""


def torch_load_probe(path: Path, as_limit_mb: int, timeout: float = 120.0) -> dict:
    """torch.load(weights_only=True) of `path`, then the finiteness check of the weights, in a fresh process
    under the same address-space limit as the worker (it may die of a signal)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", TORCH_LOAD_PROBE, str(path), str(as_limit_mb)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"outcome": f"no answer within {timeout:.0f} s", "seconds": timeout, "rss_mb": float("nan")}
    if done.returncode != 0:
        signal_name = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        return {"outcome": f"process died ({signal_name})", "seconds": float("nan"), "rss_mb": float("nan")}
    return json.loads(done.stdout.strip().splitlines()[-1])


class Fixed(random.Random):
    """A generator whose choice() picks `variant` when it is offered."""

    def __init__(self, variant: str):
        super().__init__(0)
        self.variant = variant

    def choice(self, options):
        return self.variant if self.variant in options else super().choice(options)


def bomb_files(seeds: list[Seed], work: Path) -> dict[str, Path]:
    """Named hostile checkpoints, made from the LSTM seed: the memory bombs this work is about."""
    from charlstm.model.charrnn import weight_shapes

    lstm = next(s for s in seeds if s.name == "lstm")
    files: dict[str, Path] = {}
    for hidden in (60000, 6000):
        payload = {k: v for k, v in lstm.payload.items() if k not in ("optimizer", "hidden")}
        payload["model_config"] = {**payload["model_config"], "hidden": hidden}
        shapes = weight_shapes(ModelConfig(**payload["model_config"]))
        payload["model"] = {name: torch.zeros(1).expand(shape) for name, shape in shapes.items()}
        files[f"stride-0 weights, hidden {hidden}"] = work / f"bomb-expand-{hidden}.pt"
        torch.save(payload, files[f"stride-0 weights, hidden {hidden}"])
    variants = {
        "bytearray": "REDUCE builtins.bytearray(2**31 - 1)",
        "deep-tuple-key": "dict key of 300k nested tuples",
        "colliding-keys": "dict of 40k int keys of one hash",
        "none-flood": "4 MB pickle of pushes",
        "dag-corpus": "corpus: 80-level DAG of tuples",
    }
    for variant, label in variants.items():
        files[label] = work / f"bomb-{variant}.pt"
        m_bomb(Fixed(variant), lstm, files[label], work / "marker")
    files["deflate zip bomb (200 MB record)"] = work / "bomb-zip.pt"
    m_zip(Fixed("zip-bomb"), lstm, files["deflate zip bomb (200 MB record)"], work / "marker")
    entries = entries_of(lstm.raw)
    _, data = pickle_of(entries)
    ops = opcodes(data)
    j = next(i for i, op in enumerate(ops) if op[0] == "BINPERSID")
    numel = next(op for op in reversed(ops[:j]) if op[0] in INT_OPS)
    files["storage declares 10**10 elements"] = work / "bomb-lie.pt"
    write_zip(
        files["storage declares 10**10 elements"],
        with_pickle(entries, data[: numel[2]] + pint(10**10) + data[numel[3] :]),
    )
    return files


def bomb_report(seeds: list[Seed], work: Path, as_limit_mb: int) -> str:
    worker = Worker(as_limit_mb, work / "bomb-worker.log")
    lines = [
        f"{'hostile checkpoint':<38} {'bytes':>9}  charlstm (every command's target)                       "
        f"            torch.load(weights_only=True) + isfinite of the weights"
    ]
    try:
        warm = seeds[0]
        worker.run(warm.path, warm.name, True, work / "warm-marker")
        for label, path in bomb_files(seeds, work).items():
            ours = worker.run(path, "lstm", False, work / "marker")
            growth = (ours["rss_peak"] - ours["rss_before"]) / 2**20
            answer = f"{ours['outcome']}: {ours['message'].split(': ', 1)[-1][:60]}"
            theirs = torch_load_probe(path, as_limit_mb)
            lines.append(
                f"{label:<38} {path.stat().st_size:>9}  {answer:<70} {ours['seconds']:>6.3f} s "
                f"{growth:>6.1f} MB | {theirs['outcome'][:70]}  {theirs['seconds']:.2f} s "
                f"{theirs['rss_mb']:.0f} MB"
            )
    finally:
        worker.stop()
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-every", type=int, default=5, help="run the resume target every Nth case (0: never)")
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds a case may take")
    parser.add_argument("--rss-limit-mb", type=float, default=500.0, help="MB a case may add to the worker's RSS")
    parser.add_argument("--as-limit-mb", type=int, default=3072, help="the worker's address-space headroom")
    parser.add_argument("--kinds", default="", help="comma-separated mutation kinds (default: all)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--no-bombs", action="store_true", help="skip the table of bombs against torch.load")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.as_limit_mb)
        return 0
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="charlstm-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = make_seeds(work / "seeds")
    print(f"seeds: {', '.join(s.name for s in seeds)} ({time.perf_counter() - start:.1f} s to train and save)")
    print(
        f"cases: {args.cases}, seed {args.seed}, resume target every {args.resume_every} cases; limits "
        f"{args.time_limit:g} s and {args.rss_limit_mb:g} MB per case, worker address space +{args.as_limit_mb} MB",
        flush=True,
    )
    kinds = [k for k in args.kinds.split(",") if k] or None
    if not args.no_bombs:
        print(
            "\nmemory bombs and other hostile files: time and RSS growth of the case (VmHWM over VmRSS before it), "
            f"both sides under an address-space limit of +{args.as_limit_mb} MB"
        )
        print(bomb_report(seeds, work, args.as_limit_mb), flush=True)
        print()
    begin = time.perf_counter()

    def progress(done: int) -> None:
        if done % 1000 == 0:
            print(f"  {done} cases, {time.perf_counter() - begin:.0f} s", flush=True)

    results = run_fuzz(
        seeds,
        args.cases,
        args.seed,
        work,
        args.resume_every,
        args.time_limit,
        args.rss_limit_mb,
        args.as_limit_mb,
        kinds,
        progress,
    )
    print(report(results, time.perf_counter() - begin))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.outcome == "BAD" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
