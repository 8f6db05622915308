"""The one writer of safetensors files: the bytes ``safetensors.torch.save_file`` writes, without the page cache.

A checkpoint writes hundreds of MB per epoch (AlexNet: 218 MB of weights and as much SGD momentum). Through the page
cache, the kernel copies every page, then writes it back, and the write evicts the images a run reads. On a 2-core
VM that kernel work measured 1.6-2 s of CPU per 432 MB (buffered write + fsync + delete), taken from the training
threads; written with ``O_DIRECT`` it measured 0.1-0.25 s. So the file is streamed through one small page-aligned
buffer straight to the disk, and checksummed on the way (a checkpoint's manifest needs the checksum without reading
the file back). Where the filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems) or the OS has none, the same
bytes go through an ordinary write.

The layout is safetensors' own (tested byte for byte against ``safetensors.torch.save``): an 8-byte little-endian
header length, a JSON header (``__metadata__`` first, then the tensors in safetensors' order: wider dtypes first,
then by name), padded with spaces to a multiple of 8, then the tensors' bytes. It writes a new file; atomicity is
the caller's (``atomic_write_file``, ``staged_dir``, a checkpoint's temporary folder).

    checksum = write_safetensors("out/.tmp/model.safetensors", model.state_dict(), {"format": "pt"}, checksum=True)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import mmap
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash

__all__ = [
    "CHECKSUM",
    "SAFETENSORS_DTYPES",
    "direct_writes_possible",
    "file_checksum",
    "has_shared_tensors",
    "write_model",
    "write_safetensors",
]

# The checksum written beside big files (checkpoint manifests, feature-cache shards): it detects damage (a truncated
# copy, a bad disk, a file changed by hand), not tampering, which no checksum stored beside the file can. xxHash3 runs
# at 14.5 GB/s on one core where sha256 runs at 1.44 (measured here): the writer thread, which shares the cores with
# training, spends 0.03 s on a 436 MB checkpoint instead of 0.3. "sha256": what manifests written before said.
CHECKSUM = "xxh3_128"
_CHECKSUMS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}

# torch dtype -> safetensors' name, in safetensors' own order (its Dtype enum, narrowest first): tensors are laid
# out widest first, so that every tensor starts aligned to its element size.
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.complex64: "C64",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}
_RANK = {dtype: rank for rank, dtype in enumerate(SAFETENSORS_DTYPES)}
_CHUNK = 8 << 20  # the bounce buffer: the memory this writer holds, whatever the file's size
_BLOCK = 4096  # O_DIRECT wants buffer, offset and length aligned to the device's block: 4096 covers them all


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
    *, checksum: bool = False,
) -> str | None:  # fmt: skip
    """Write ``tensors`` to the new file ``path`` in the safetensors format; return the file's ``CHECKSUM`` (hex)
    when ``checksum``, else None. Tensors on a GPU are copied to the CPU one at a time; the writer holds one 8 MiB
    buffer, whatever the file's size.

        write_safetensors(tmp / "model.safetensors", {"w": torch.ones(2)}, {"format": "pt"})
    """
    header, ordered = _header(tensors, metadata)
    hasher = _CHECKSUMS[CHECKSUM]() if checksum else None
    fd, direct = _open(path)
    try:
        try:
            _stream(fd, header, ordered, hasher, direct)
        except OSError as error:
            if not direct or error.errno != errno.EINVAL:
                raise
            # A device whose block is larger than 4096, or a filesystem that accepts O_DIRECT at open but not
            # at write: start over through the page cache.
            os.close(fd)
            fd, direct = _open(path, allow_direct=False)
            hasher = _CHECKSUMS[CHECKSUM]() if checksum else None
            _stream(fd, header, ordered, hasher, direct)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hasher.hexdigest() if hasher is not None else None


def write_model(
    path: str | os.PathLike, model: torch.nn.Module, metadata: Mapping[str, str] | None = None, *,
    checksum: bool = False,
) -> str | None:  # fmt: skip
    """``model``'s state dict as ``write_safetensors`` writes it; a model with tied weights (one storage under several
    names) goes through ``safetensors.torch.save_model``, which keeps one name and records the others in the metadata
    for ``safetensors.torch.load_model``.

        write_model(tmp / "model.safetensors", model, {"format": "pt"}, checksum=True)
    """
    state = model.state_dict()
    if has_shared_tensors(state):
        import safetensors.torch  # only for this rare case

        safetensors.torch.save_model(model, str(path), dict(metadata or {}), force_contiguous=True)
        return file_checksum(path) if checksum else None
    return write_safetensors(path, state, metadata, checksum=checksum)


def file_checksum(path: str | os.PathLike, algorithm: str = CHECKSUM) -> str:
    """The checksum (hex) of the file at ``path``, read 1 MiB at a time: ``CHECKSUM``, or ``"sha256"``.

        file_checksum("out/checkpoints/step_00000010/model.safetensors")   # '5f0c...' (32 hex digits)
    """
    hasher = _CHECKSUMS[algorithm]()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _header(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, torch.Tensor]]]:
    """safetensors' header and the tensors in file order; refuses what ``safetensors.torch.save_file`` refuses."""
    if sys.byteorder != "little":
        raise ValueError("write_safetensors writes little-endian files only")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name!r}: a safetensors file maps names (str) to tensors, not {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name}: a sparse tensor cannot be saved; make it dense first")
        if tensor.dtype not in _RANK:
            raise ValueError(f"{name}: safetensors has no name for {tensor.dtype}")
    _refuse_shared(tensors)
    ordered = sorted(tensors.items(), key=lambda item: (-_RANK[item[1].dtype], item[0]))
    entries: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata maps str to str")
        entries["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def has_shared_tensors(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether two of ``tensors`` share memory (tied weights), which ``write_safetensors`` refuses.

        has_shared_tensors(model.state_dict())   # False for AlexNet, VGG and most vision models
    """
    try:
        _refuse_shared(tensors)
    except RuntimeError:
        return True
    return False


def _refuse_shared(tensors: Mapping[str, torch.Tensor]) -> None:
    """Two names for one storage would be written twice and loaded as two tensors (safetensors refuses them too;
    ``safetensors.torch.save_model`` is the way to save tied weights)."""
    seen: dict[tuple[torch.device, int], str] = {}
    for name, tensor in tensors.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key in seen:
            raise RuntimeError(f"{seen[key]} and {name} share memory; save the model with save_model instead")
        seen[key] = name


def _open(path: str | os.PathLike, allow_direct: bool = True) -> tuple[int, bool]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0) if allow_direct else 0
    if direct:
        try:
            return os.open(path, flags | direct, 0o666), True
        except OSError as error:
            if error.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
    return os.open(path, flags, 0o666), False


def _stream(fd: int, header: bytes, ordered: list[tuple[str, torch.Tensor]], hasher: Any, direct: bool) -> None:
    """Copy the header and the tensors through one page-aligned buffer into ``fd``, hashing the bytes on the way."""
    buffer = mmap.mmap(-1, _CHUNK)  # anonymous: page-aligned, as O_DIRECT needs
    try:
        filled = written = 0
        sources = itertools.chain([memoryview(header)], (_bytes_of(tensor) for _, tensor in ordered))
        for source in sources:  # one at a time: a GPU tensor's CPU copy lives until it is in the buffer
            position = 0
            while position < len(source):
                take = min(_CHUNK - filled, len(source) - position)
                buffer[filled : filled + take] = source[position : position + take]
                filled, position = filled + take, position + take
                if filled == _CHUNK:
                    _write_all(fd, buffer, filled, filled, hasher)
                    written, filled = written + filled, 0
        # O_DIRECT writes whole blocks: the last one is padded, and the padding cut off by ftruncate.
        padded = filled + (-filled % _BLOCK if direct else 0)
        buffer[filled:padded] = bytes(padded - filled)
        _write_all(fd, buffer, filled, padded, hasher)
        if direct:
            os.ftruncate(fd, written + filled)
    finally:
        # A slice of the buffer that an error's traceback still holds keeps it open; it is freed with the traceback.
        with contextlib.suppress(BufferError):
            buffer.close()


def _write_all(fd: int, buffer: mmap.mmap, filled: int, length: int, hasher: Any) -> None:
    with memoryview(buffer) as view:
        if hasher is not None:
            hasher.update(view[:filled])
        done = 0
        while done < length:
            done += os.write(fd, view[done:length])


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    # reshape(-1) makes a channels-last or strided tensor contiguous (a copy of that tensor only).
    flat = tensor.reshape(-1).contiguous()
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def direct_writes_possible(directory: str | os.PathLike) -> bool:
    """Whether files in ``directory`` can be opened with ``O_DIRECT`` (tests and the docs' claims use it)."""
    probe = Path(directory) / f".hubclf-direct-probe-{os.getpid()}"
    try:
        fd, direct = _open(probe)
        os.close(fd)
        return direct
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
