"""Checkpoint files: atomic, checksummed, verified on load, kept when damaged, umask modes."""

import logging
import os
import stat

import pytest
import torch

from calibrant.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state():
    g = torch.Generator().manual_seed(0)
    return {"epoch": 2, "model": {"w": torch.randn(256, 256, generator=g)}, "config": {"a": 1}}


def _flip(path, n=2000):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_round_trip_and_no_temporary_files(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    state = load_checkpoint(path, required=("epoch", "model"))
    assert state["epoch"] == 2
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    save_checkpoint(path, {**_state(), "epoch": 3})  # replaces the file in place
    assert load_checkpoint(path)["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_the_file_records_its_checksum(tmp_path):
    import hashlib

    path = save_checkpoint(tmp_path / "best.pt", _state())
    wrapper = torch.load(path, weights_only=True)  # the wrapper itself is plain tensors/strings
    assert wrapper["format_version"] == 2
    payload = wrapper["payload"].numpy().tobytes()
    assert hashlib.sha256(payload).hexdigest() == wrapper["sha256"]


def test_flipped_bytes_are_a_checksum_error_and_the_file_is_kept(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    damaged = _flip(path)
    with pytest.raises(CheckpointError, match="fails its checksum") as err:
        load_checkpoint(path)
    assert "last.pt" in str(err.value)
    assert path.read_bytes() == damaged  # kept as it was, for inspection or recovery


def test_truncated_checkpoint_is_corrupt(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    assert path.exists()


def test_format_1_checkpoints_load_unverified_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, **_state()}, path)  # what calibrant wrote before checksums
    with caplog.at_level(logging.WARNING, logger="calibrant.checkpoint"):
        state = load_checkpoint(path, required=("model",))
    assert state["epoch"] == 2
    assert "without a checksum" in caplog.text and "old.pt" in caplog.text


def test_unknown_format_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
