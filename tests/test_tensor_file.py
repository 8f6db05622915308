"""hubclf.tensor_file: safetensors files written byte for byte as safetensors writes them, around the page cache
where the filesystem allows it, with the checksum taken on the way."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
import safetensors.torch
import torch
import xxhash

from hubclf import tensor_file
from hubclf.tensor_file import CHECKSUM, direct_writes_possible, file_checksum, write_model, write_safetensors


def every_dtype() -> dict[str, torch.Tensor]:
    """One tensor of each dtype safetensors knows, in odd shapes (scalar, empty, channels-last, a transposed view)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"t_{str(dtype).removeprefix('torch.')}": torch.randn(3, 5, generator=generator).to(dtype)
               for dtype in tensor_file.SAFETENSORS_DTYPES}  # fmt: skip
    tensors["scalar"] = torch.tensor(7, dtype=torch.int32)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["channels_last"] = torch.randn(2, 3, 4, 5, generator=generator).to(memory_format=torch.channels_last)
    tensors["transposed"] = torch.randn(4, 6, generator=generator).t()
    return tensors


def reference_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    # safetensors.torch.save wants contiguous tensors; a one-key metadata (its order of several keys varies by run).
    return safetensors.torch.save({name: t.contiguous() for name, t in tensors.items()}, metadata=metadata)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_the_file_is_byte_for_byte_what_safetensors_writes(tmp_path, monkeypatch, direct):
    if direct and not direct_writes_possible(tmp_path):
        pytest.skip(f"{tmp_path}'s filesystem refuses O_DIRECT")
    if not direct:
        monkeypatch.setattr(os, "O_DIRECT", 0, raising=False)
    tensors = every_dtype()
    path = tmp_path / "model.safetensors"
    checksum = write_safetensors(path, tensors, {"format": "pt"}, checksum=True)
    written = path.read_bytes()
    assert written == reference_bytes(tensors, {"format": "pt"})
    assert checksum == xxhash.xxh3_128(written).hexdigest() == file_checksum(path)
    loaded = safetensors.torch.load_file(path)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_files_larger_than_the_buffer_and_not_a_whole_number_of_blocks(tmp_path):
    """Several 8 MiB buffers, and a last block cut back to the file's real size."""
    tensors = {"big": torch.arange(5_000_001, dtype=torch.float32), "tail": torch.arange(3, dtype=torch.uint8)}
    path = tmp_path / "big.safetensors"
    checksum = write_safetensors(path, tensors, checksum=True)
    reference = safetensors.torch.save(tensors)
    assert path.stat().st_size == len(reference) and len(reference) % 4096 != 0
    assert path.read_bytes() == reference and checksum == xxhash.xxh3_128(reference).hexdigest()


def test_a_filesystem_without_o_direct_gets_the_same_bytes(tmp_path, monkeypatch):
    """tmpfs on old kernels and some network filesystems refuse O_DIRECT at open (EINVAL); others accept it at open
    and refuse the write: both end in an ordinary write of the same bytes."""
    real_open, real_write = os.open, os.write
    direct_flag = getattr(os, "O_DIRECT", 0)
    if not direct_flag:
        pytest.skip("this OS has no O_DIRECT")
    refused = []

    def open_without_direct(path, flags, *args, **kwargs):
        if flags & direct_flag and str(path).endswith("open.safetensors"):
            refused.append("open")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    def write_without_direct(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_flag:
            refused.append("write")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", open_without_direct)
    monkeypatch.setattr(os, "write", write_without_direct)
    tensors = every_dtype()
    for name in ("open.safetensors", "write.safetensors"):
        checksum = write_safetensors(tmp_path / name, tensors, {"format": "pt"}, checksum=True)
        assert (tmp_path / name).read_bytes() == reference_bytes(tensors, {"format": "pt"})
        assert checksum == file_checksum(tmp_path / name)
    assert "open" in refused and ("write" in refused or not direct_writes_possible(tmp_path))


def test_other_write_errors_are_raised_not_retried(tmp_path, monkeypatch):
    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_safetensors(tmp_path / "x.safetensors", {"w": torch.ones(3)})


def test_what_safetensors_refuses_is_refused(tmp_path):
    weight = torch.ones(4)
    with pytest.raises(RuntimeError, match="a and b share memory"):
        write_safetensors(tmp_path / "x", {"a": weight, "b": weight[:2]})
    with pytest.raises(ValueError, match="sparse"):
        write_safetensors(tmp_path / "x", {"s": torch.eye(3).to_sparse()})
    with pytest.raises(ValueError, match="no name for torch.complex128"):
        write_safetensors(tmp_path / "x", {"c": torch.ones(2, dtype=torch.complex128)})
    with pytest.raises(ValueError, match="metadata maps str to str"):
        write_safetensors(tmp_path / "x", {"w": torch.ones(1)}, {"epoch": 3})


def test_tied_weights_go_through_save_model_and_load_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # one storage, two names
    path = tmp_path / "tied.safetensors"
    checksum = write_model(path, model, {"format": "pt"}, checksum=True)
    assert checksum == file_checksum(path)
    restored = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    restored[1].weight = restored[0].weight
    safetensors.torch.load_model(restored, path)
    assert torch.equal(restored[1].weight, model[0].weight)


def test_a_model_without_tied_weights_is_its_state_dict(tmp_path):
    model = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    write_model(tmp_path / "m.safetensors", model, {"format": "pt"})
    assert (tmp_path / "m.safetensors").read_bytes() == reference_bytes(model.state_dict(), {"format": "pt"})


def test_the_checksum_of_earlier_manifests_is_still_computed(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"hubclf" * 1000)
    assert file_checksum(tmp_path / "f", "sha256") == hashlib.sha256(b"hubclf" * 1000).hexdigest()
    assert CHECKSUM == "xxh3_128" and file_checksum(tmp_path / "f") == xxhash.xxh3_128(b"hubclf" * 1000).hexdigest()
