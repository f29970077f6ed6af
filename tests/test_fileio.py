"""Tensor files: safetensors only, and never a pickle, whatever the first byte of a header length."""

import pickle

import pytest
import torch

from passportnorm.fileio import load_tensors, looks_like_pickle, save_tensors


def _file_whose_length_starts_with_0x80(path):
    """A safetensors file whose 8-byte header length is 128 modulo 256 (so its first byte is 0x80)."""
    for padding in range(1, 400):
        save_tensors({"w": torch.ones(3)}, path, metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            return path
    raise AssertionError("no padding gave a header length of 128 modulo 256")


def test_a_safetensors_file_whose_header_length_starts_with_0x80_loads(tmp_path):
    path = _file_whose_length_starts_with_0x80(tmp_path / "w.safetensors")
    assert not looks_like_pickle(path)
    assert torch.equal(load_tensors(path)["w"], torch.ones(3))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_and_zip_archives_are_still_refused(tmp_path, protocol):
    path = tmp_path / "p.bin"
    path.write_bytes(pickle.dumps({"w": 1}, protocol=protocol))
    assert looks_like_pickle(path)
    with pytest.raises(ValueError, match="pickle or torch.save archive"):
        load_tensors(path)
    torch.save({"w": torch.ones(1)}, tmp_path / "t.pt")
    assert looks_like_pickle(tmp_path / "t.pt")
