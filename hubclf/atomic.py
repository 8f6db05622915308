"""Crash-safe file and folder writes: a kill at any instant leaves either the old content or the new, never a mix.

Every file hubclf writes goes through this module (the SQLite promise, at the scale of files and folders):

    atomic_write_json(path, {"loss": float("nan")})     # temp file in the same folder, fsync, rename, fsync folder
    atomic_write_text(path, "hello\\n")
    with staged_dir("out/best") as tmp:                  # write a whole folder next to the real one...
        (tmp / "model.safetensors").write_bytes(...)
    # ...it replaces "out/best" in one rename once every file is on disk

JSON is strict: NaN and ±inf are stored as ``null`` (``json.dumps`` would write ``NaN``, which no JSON parser
outside Python accepts).

Only regular files are replaced: a path that is a device, FIFO, socket, folder or symbolic link is refused
(``NotARegularFileError``), so ``hubclf export MODEL /dev/null`` run as root cannot swap the device node for a file.
A replaced file keeps its permission bits; a new file or folder gets the ones the umask gives (``0o666 & ~umask``,
``0o777 & ~umask``), not ``mkstemp``'s owner-only ``0o600``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hubclf._faults import fault_point

__all__ = [
    "atomic_write_bytes",
    "atomic_write_file",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
    "fsync_tree",
    "replace_dir",
    "restore_dir",
    "staged_dir",
    "strict_json_dumps",
    "to_strict_json",
    "pid_alive",
    "hostname",
    "NotARegularFileError",
    "check_replaceable",
    "file_kind",
    "current_umask",
]

_OLD_SUFFIX = ".old"  # ``.NAME.old``: the previous folder, during the two-rename fallback of replace_dir


# ---- strict JSON ------------------------------------------------------------------------------------------------
def to_strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, recursively; tuples become lists.

    Example::

        to_strict_json({"loss": float("nan"), "top1": [0.5, float("inf")]})   # {"loss": None, "top1": [0.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_strict_json(item) for item in value]
    return value


def strict_json_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes NaN/inf as ``null`` and refuses anything else that is not JSON.

    Example::

        strict_json_dumps({"loss": float("inf")})   # '{"loss": null}'
    """
    return json.dumps(to_strict_json(value), allow_nan=False, **kwargs)


# ---- files ------------------------------------------------------------------------------------------------------
class NotARegularFileError(ValueError):
    """A write would replace something that is not a regular file (a device, FIFO, socket, folder or link)."""


_KINDS = {
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link",
}  # fmt: skip


def file_kind(mode: int) -> str:
    """What ``os.lstat(...).st_mode`` describes, in words: ``"a FIFO (named pipe)"``, ``"a regular file"``...

        file_kind(os.lstat("/dev/null").st_mode)   # 'a character device'
    """
    return "a regular file" if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "a special file")


def check_replaceable(path: str | os.PathLike) -> os.stat_result | None:
    """The ``lstat`` of the regular file at ``path`` (``None`` when nothing is there); anything else is refused
    with a ``NotARegularFileError`` that says what it is. Nothing is opened.

        check_replaceable("/dev/null")   # NotARegularFileError: /dev/null is a character device ...
    """
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file in the way of a folder is named later)
        return None
    if not stat.S_ISREG(info.st_mode):
        raise NotARegularFileError(
            f"{path} is {file_kind(info.st_mode)}, not a regular file: hubclf only writes regular files (give "
            "another path)"
        )
    return info


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere by
    setting and restoring it (not thread-safe, hence the fallback only).

        current_umask()   # 0o022
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file inside ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def make_parent_dirs(path: str | os.PathLike) -> None:
    """``path``'s missing parent folders, created; a file where a folder must be is named, where ``mkdir`` says only
    "[Errno 17] File exists" about a path the user did not type.

        make_parent_dirs("out/run1/model.safetensors")   # creates out/run1/
    """
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), parent)
        raise NotADirectoryError(f"cannot write {path}: {blocking} is a file, not a folder") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers (and a crash) see the old file or the new one, never half of it.

    Example::

        atomic_write_bytes("out/weights.bin", payload)
    """
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_file(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Atomic write through a library's own writer: ``write(tmp_path)`` fills a temporary file next to ``path``,
    which is then fsynced and renamed over ``path``.

    Example::

        atomic_write_file("cache/features.safetensors", lambda tmp: save_file(tensors, tmp))
    """
    path = Path(path)
    existing = check_replaceable(path)
    make_parent_dirs(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # The replaced file's permission bits, or an ordinary new file's (mkstemp makes it owner-only).
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~current_umask()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        fault_point("atomic.before_rename")
        check_replaceable(path)  # again: something may have been put there while the file was written
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """Strict JSON (NaN/inf as ``null``), written atomically, with a final newline.

    Example::

        atomic_write_json("out/trainer_state.json", {"epoch": 2, "best_top1": None})
    """
    return atomic_write_text(path, strict_json_dumps(value, indent=indent) + "\n")


def fsync_tree(directory: str | os.PathLike) -> None:
    """fsync every file and folder under ``directory`` (files another process wrote included)."""
    directory = Path(directory)
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


# ---- folders ----------------------------------------------------------------------------------------------------
def _old_name(final_dir: Path) -> Path:
    return final_dir.with_name(f".{final_dir.name}{_OLD_SUFFIX}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc = _libc()
    renameat2 = getattr(libc, "renameat2", None) if libc is not None else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # this filesystem cannot exchange: use the two-rename fallback
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Put the fully written folder ``tmp_dir`` in place of ``final_dir`` (which may not exist yet).

    Every file of ``tmp_dir`` is fsynced first. On Linux the two folders are exchanged in one atomic system call;
    elsewhere the old folder is first renamed to ``.NAME.old`` next to it, so a kill between the two renames
    leaves it there and ``restore_dir(final_dir)`` (called by every hubclf reader of such folders) puts it back.

    Example::

        replace_dir("out/.best.tmp-1234", "out/best")
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    fault_point("replace_dir.before_rename")
    if final_dir.exists() and _exchange(tmp_dir, final_dir):
        fsync_dir(final_dir.parent)
        fault_point("replace_dir.after_rename")
        shutil.rmtree(tmp_dir)  # now holds the old content
        return final_dir
    old = _old_name(final_dir)
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
        fault_point("replace_dir.between_renames")
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
    fault_point("replace_dir.after_rename")
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def restore_dir(final_dir: str | os.PathLike) -> bool:
    """Undo a ``replace_dir`` that was killed between its two renames: True if ``final_dir`` was put back."""
    final_dir = Path(final_dir)
    old = _old_name(final_dir)
    if final_dir.exists() or not old.is_dir():
        return False
    os.replace(old, final_dir)
    fsync_dir(final_dir.parent)
    return True


@contextlib.contextmanager
def staged_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``final_dir``; on success it replaces ``final_dir`` atomically.

    On an exception the temporary folder is removed and ``final_dir`` is left as it was. Temporary folders left
    by a killed process (its pid is dead) are cleaned up here.

    Example::

        with staged_dir("out/final") as tmp:
            save_file(tensors, tmp / "model.safetensors")
    """
    final_dir = Path(final_dir).resolve()  # "." has no name to put a sibling next to
    if final_dir.exists() and not final_dir.is_dir():  # a folder swap would put a folder in place of the file
        raise NotADirectoryError(f"{final_dir} is {file_kind(final_dir.stat().st_mode)}, not a folder")
    make_parent_dirs(final_dir)
    restore_dir(final_dir)
    prefix = f".{final_dir.name}.tmp-"
    for stale in final_dir.parent.glob(f"{prefix}*"):
        pid = stale.name.removeprefix(prefix).partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final_dir.parent))
    try:
        # mkdtemp makes it owner-only; the folder keeps the mode of the one it replaces, or gets the umask's.
        previous = final_dir.stat().st_mode if final_dir.is_dir() else None
        os.chmod(tmp, stat.S_IMODE(previous) if previous is not None else 0o777 & ~current_umask())
        yield tmp
        replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- processes --------------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing any more
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def hostname() -> str:
    return socket.gethostname()
