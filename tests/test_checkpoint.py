import os
import pickle

import pytest
import torch

from charlstm.checkpoint import store as ckpt
from charlstm.errors import CharlstmError
from charlstm.runs import directory as rundir

from .helpers import CreatesFile


def payload(value: float = 1.0):
    return {"model_config": {"vocab_size": 3}, "vocab": ["a", "b", "c"], "model": {"w": torch.full((2, 2), value)}}


def test_save_and_load_round_trip(tmp_path):
    ckpt.save_checkpoint(payload(), tmp_path / "x.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "x.pt")
    assert loaded["format"] == "charlstm" and loaded["version"] == ckpt.VERSION
    assert torch.equal(loaded["model"]["w"], torch.ones(2, 2))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.save_checkpoint(payload(1.0), path)

    def dying_save(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped part-way through writing

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(payload(2.0), path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_full_disk_is_a_clear_error_and_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    ckpt.save_checkpoint(payload(1.0), path)

    def full(obj, handle):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CharlstmError, match="disk is full"):
        ckpt.save_checkpoint(payload(2.0), path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2, 2))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "charlstm", "version": 1, "model": CreatesFile(str(target))}, evil)
    assert not target.exists()
    with pytest.raises(CharlstmError, match="refusing to load"):
        ckpt.load_checkpoint(evil)
    assert not target.exists()
    # a bare pickle (not a torch zip) with the same payload is refused too
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(CreatesFile(str(target))))
    with pytest.raises(CharlstmError):
        ckpt.load_checkpoint(raw)
    assert not target.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a loadable"),
        (b"hello world", "not a loadable"),
        (None, "not a loadable"),
        ("other", "not a charlstm"),
        ("newer", "version 99"),
    ],
)
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        ckpt.save_checkpoint(payload(), path)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif content == "other":
        torch.save({"weights": torch.zeros(2)}, path)
    elif content == "newer":
        torch.save({"format": "charlstm", "version": 99, **payload()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CharlstmError, match=message):
        ckpt.load_checkpoint(path)


def test_resolve_and_find_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("old", "new"):
        ckpt.save_checkpoint(payload(), root / name / "best.pt")
        ckpt.save_checkpoint(payload(), root / name / "latest.pt")
    os.utime(root / "old" / "best.pt", (1, 1))
    os.utime(root / "old" / "latest.pt", (1, 1))
    assert rundir.find_latest_run(root) == root / "new"
    assert rundir.resolve_checkpoint(root / "new") == root / "new" / "best.pt"
    assert rundir.resolve_checkpoint(root / "new", prefer=rundir.LATEST) == root / "new" / "latest.pt"
    with pytest.raises(CharlstmError, match="train one first"):
        rundir.find_latest_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharlstmError, match="not a charlstm run"):
        rundir.resolve_checkpoint(tmp_path / "empty")
