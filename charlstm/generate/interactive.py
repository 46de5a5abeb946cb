"""Talking to a model (`charlstm sample RUN --interactive`): what the user types is fed to the model, which
continues it, streaming; the state is kept across turns until `/reset`.

`Conversation` is the model's side (a state, a seeded generator, feeding text, continuing it, the top next
characters); `run_session` is the terminal's side: a prompt_toolkit prompt (line editing, history, Ctrl-D to
leave) and the commands below. Generation uses charlstm's one-character steppers (steppers.py: the fast NumPy
step on the CPU) and its draw rule (next_char.py), with the uniforms of a seeded generator, so a session replays the
same for the same seed and the same input.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch

from charlstm.config import SampleConfig
from charlstm.data.vocab import show_chars
from charlstm.errors import CharlstmError
from charlstm.generate.escapes import decode_escapes
from charlstm.generate.sample import pick_seed, pick_start_states
from charlstm.generate.steppers import make_stepper
from charlstm.runs.model_file import LoadedModel

DEFAULT_TOP = 5  # characters /top lists when no N is given
MAX_TOP = 50
CONTEXT_SHOWN = 60  # characters of the text so far shown above a /top list

HELP = """\
Type text and press Enter: the model reads it and continues it. It remembers everything so far.
  Enter alone        continue from where it stopped
  \\n, \\t             a newline, a tab inside what you type; start a line with // to send a leading /
  /top [N]           the N most likely next characters (default 5); then type a number to pick one,
                     Enter to stop picking
  /temp 0.5          sampling temperature (0 = always the most likely character)
  /length 300        characters per continuation
  /seed 7            restart the random numbers from this seed
  /reset             forget everything (the state starts over)
  /help              this text
  Ctrl-C             stop a continuation; Ctrl-D (or /quit) leaves"""


class Conversation:
    """A model, a state that persists across turns, and a seeded generator."""

    def __init__(self, loaded: LoadedModel, config: SampleConfig):
        self.loaded, self.vocab = loaded, loaded.vocab
        self.config = replace(config, num_samples=1, stop=list(config.stop))
        self.seed = pick_seed(config.seed)
        self.rng = torch.Generator(device="cpu").manual_seed(self.seed)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the state the model starts a sample from (a record start state, read through the
        end-of-record marker, for a record-trained model; else after a newline), and no text so far."""
        self.stepper = make_stepper(self.loaded.model, 1)
        eor = self.vocab.end_of_record
        initial = pick_start_states(self.loaded, 1, self.rng) if eor is not None else None
        if eor is not None:
            first = eor
        elif "\n" in self.vocab.index:
            first = self.vocab.index["\n"]
        else:
            first = 0  # a model that never saw a newline: start after its first character
        with torch.inference_mode():
            self.logits = self.stepper.start(torch.tensor([[first]]), initial)  # (1, V)
        self.numpy = isinstance(self.logits, np.ndarray)  # the NumPy CPU steppers take and give arrays
        self.text = ""  # the text so far (typed and generated), for showing the context
        self.ended_record = False  # the last continuation ended with the end-of-record marker

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.rng = torch.Generator(device="cpu").manual_seed(seed)

    def check(self, text: str) -> None:
        """Characters the model never saw make a CharlstmError (nothing is fed)."""
        unknown = self.vocab.unknown(text)
        if unknown:
            raise CharlstmError(f"not in the model's vocabulary: {show_chars(unknown)}; nothing was fed")

    def feed(self, text: str) -> None:
        """The model reads `text` (checked first: all or nothing)."""
        self.check(text)
        with torch.inference_mode():
            for token in self.vocab.encode(text).tolist():
                self._step(token)
        self.text += text

    def _step(self, token: int) -> None:
        ids = np.array([token]) if self.numpy else torch.tensor([token])
        self.logits = self.stepper.step(ids)

    def continuation(self, length: int | None = None) -> Iterator[str]:
        """Up to `length` (default: the config's) characters, one at a time, each fed back as it is drawn; a
        record-trained model may end its record sooner (the marker is read, and nothing is yielded for it)."""
        config = self.config
        eor = self.vocab.end_of_record
        self.ended_record = False
        with torch.inference_mode():
            for _ in range(config.length if length is None else length):
                uniforms = torch.rand(1, generator=self.rng)  # (1,): the same stream as sample.generate's
                ids = self.stepper.draw(self.logits, uniforms.double().numpy() if self.numpy else uniforms, config)
                token = int(ids[0])
                self._step(token)
                if token == eor:
                    self.text += "\n"
                    self.ended_record = True
                    return
                char = self.vocab.chars[token]
                self.text += char
                yield char

    def top(self, n: int) -> list[tuple[int, float]]:
        """The `n` most likely next characters and their probabilities (the model's, before temperature)."""
        logits = torch.as_tensor(np.asarray(self.logits) if self.numpy else self.logits.cpu()).float()[0]
        probs = torch.softmax(logits, dim=-1)
        values, ids = torch.topk(probs, min(n, probs.numel()))
        return list(zip(ids.tolist(), values.tolist()))

    def pick(self, token: int) -> str:
        """Feed a character chosen by id; returns what it shows as ("" for the end-of-record marker)."""
        with torch.inference_mode():
            self._step(token)
        char = self.vocab.chars[token]
        self.text += char or "\n"
        return char


def char_label(char: str) -> str:
    """How a character is named in a /top list: 'e', ' ', '\\n', or the end of a record."""
    return "end of record" if char == "" else repr(char)


class Session:
    """The commands, the turns and the /top picking, on top of a Conversation; `prompt(text) -> line` reads a
    line (raising EOFError at Ctrl-D, KeyboardInterrupt at Ctrl-C), `write(text)` shows text as it comes."""

    def __init__(self, conversation: Conversation, prompt: Callable[[str], str], write: Callable[[str], None]):
        self.conversation, self.prompt, self.write = conversation, prompt, write
        self.picking = 0  # N while the user picks from a /top N list, else 0

    def run(self) -> None:
        self.write(f"Talking to {self.conversation.loaded.path}: type text and the model continues it. ")
        self.write("/help lists the commands; Ctrl-D leaves.\n")
        while True:
            try:
                line = self.prompt(f"pick 1-{self.picking} (Enter to stop)> " if self.picking else "> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
                self.picking = 0
                continue
            except EOFError:
                self.write("\n")
                return
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """One line from the user; False to leave."""
        if self.picking:
            if line.strip().isdigit():
                self._pick(int(line.strip()))
                return True
            self.picking = 0
            if not line:
                return True
        if line.startswith("/") and not line.startswith("//"):
            return self._command(line)
        text = decode_escapes(line[1:] if line.startswith("//") else line)
        try:
            self.conversation.feed(text)
        except CharlstmError as exc:
            self.write(f"{exc}\n")
            return True
        self.write(text)
        self._continue()
        return True

    def _continue(self) -> None:
        """Stream a continuation; Ctrl-C stops it (the characters shown so far were read by the model)."""
        try:
            for char in self.conversation.continuation():
                self.write(char)
        except KeyboardInterrupt:
            self.write(" [stopped]")
        self.write("\n")
        if self.conversation.ended_record:
            self.write("[end of record]\n")

    def _command(self, line: str) -> bool:
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        conversation = self.conversation
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                self.write(HELP + "\n")
            elif name == "/reset":
                conversation.reset()
                self.write("Forgotten: the model starts over.\n")
            elif name == "/top":
                n = _number(argument, int, "/top N", 1, MAX_TOP) if argument else DEFAULT_TOP
                self.picking = n
                self._show_top()
            elif name == "/temp":
                value = _number(argument, float, "/temp 0.8", 0.0, None)
                conversation.config = replace(conversation.config, temperature=value)
                self.write(f"Temperature {value:g}.\n")
            elif name == "/length":
                value = _number(argument, int, "/length 300", 1, None)
                conversation.config = replace(conversation.config, length=value)
                self.write(f"Continuations of {value:,} characters.\n")
            elif name == "/seed":
                value = _number(argument, int, "/seed 7", 0, 2**63 - 1)
                conversation.reseed(value)
                self.write(f"Seed {value}.\n")
            else:
                self.write(f"Unknown command {name}; /help lists them (start with // to send a leading /).\n")
        except CharlstmError as exc:
            self.write(f"{exc}\n")
        return True

    def _show_top(self) -> None:
        conversation = self.conversation
        context = conversation.text[-CONTEXT_SHOWN:].replace("\n", "⏎")
        self.write(f"…{context}▌\n" if conversation.text else "")
        for rank, (token, probability) in enumerate(conversation.top(self.picking), start=1):
            self.write(f"  {rank:>2}  {char_label(conversation.vocab.chars[token]):<15} {100 * probability:5.1f}%\n")

    def _pick(self, rank: int) -> None:
        choices = self.conversation.top(self.picking)
        if not 1 <= rank <= len(choices):
            self.write(f"Pick a number from 1 to {len(choices)}, or press Enter to stop picking.\n")
            return
        char = self.conversation.pick(choices[rank - 1][0])
        self.write(f"picked {char_label(char)}\n")
        self._show_top()


def _number(text: str, kind: type, example: str, low: float, high: float | None):
    """A command's number, within [low, high], or a CharlstmError saying how to write it."""
    try:
        value = kind(text)
    except ValueError:
        raise CharlstmError(f"cannot read {text!r} as a number; e.g. {example}") from None
    if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
        bound = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
        raise CharlstmError(f"{example.split()[0]} takes a number {bound}, got {text}")
    return value


def run_session(loaded: LoadedModel, config: SampleConfig) -> None:
    """The interactive sampler on this terminal (prompt_toolkit: line editing, history with the arrow keys)."""
    import sys

    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    if not sys.stdin.isatty():
        raise CharlstmError("--interactive needs a terminal (stdin is not one); pipe text with --prime instead")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops a continuation, not charlstm
    try:
        prompts = PromptSession(history=InMemoryHistory())

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        Session(Conversation(loaded, config), prompts.prompt, write).run()
    finally:
        signal.signal(signal.SIGINT, previous)
