"""hubclf.atomic: strict JSON, atomic file writes, whole-folder replacement that a kill cannot leave half done."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hubclf.atomic as atomic
from hubclf.atomic import (
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    pid_alive,
    replace_dir,
    restore_dir,
    staged_dir,
    strict_json_dumps,
    to_strict_json,
)


def test_non_finite_numbers_become_null_and_the_rest_is_refused():
    value = {"loss": float("nan"), "top1": [0.5, float("inf"), -float("inf")], "ok": (1, "a")}
    assert to_strict_json(value) == {"loss": None, "top1": [0.5, None, None], "ok": [1, "a"]}
    assert json.loads(strict_json_dumps(value)) == {"loss": None, "top1": [0.5, None, None], "ok": [1, "a"]}
    with pytest.raises(TypeError):
        strict_json_dumps({"tensor": object()})


def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "state.json", {"epoch": 1, "loss": float("inf")})
    assert path.read_text() == '{\n  "epoch": 1,\n  "loss": null\n}\n'
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"

    def failing_writer(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_file(path, failing_writer)
    assert path.read_text() == "new\n"  # the old content survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_dir_swaps_whole_folders(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "best"
    for version in ("old", "new"):
        tmp = tmp_path / f".best.tmp-{version}"
        tmp.mkdir()
        (tmp / "weights").write_text(version)
        (tmp / f"only-{version}").write_text("")
        replace_dir(tmp, final)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert sorted(p.name for p in final.iterdir()) == ["only-new", "weights"]
    assert (final / "weights").read_text() == "new"


def test_restore_dir_undoes_a_swap_killed_between_its_two_renames(tmp_path):
    old = tmp_path / ".best.old"  # the fallback's first rename done, the second not
    old.mkdir()
    (old / "weights").write_text("old")
    assert restore_dir(tmp_path / "best") is True
    assert (tmp_path / "best" / "weights").read_text() == "old"
    assert restore_dir(tmp_path / "best") is False


def test_staged_dir_keeps_the_old_folder_on_error_and_cleans_up_dead_writers(tmp_path):
    final = tmp_path / "final"
    with staged_dir(final) as tmp:
        (tmp / "a").write_text("1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".final.tmp-{int(dead.stdout)}-xyz"  # a writer that was killed
    leftover.mkdir()
    with pytest.raises(RuntimeError, match="boom"), staged_dir(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("boom")
    assert (final / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_pid_alive():
    assert pid_alive(os.getpid())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not pid_alive(int(dead.stdout))
    assert not pid_alive(0)


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    from hubclf.atomic import atomic_write_text, make_parent_dirs, staged_dir

    notes = tmp_path / "notes.txt"
    notes.write_text("a file")
    expected = rf"^cannot write {notes}/run/a.json: {notes} is a file, not a folder$"
    with pytest.raises(NotADirectoryError, match=expected):
        atomic_write_text(notes / "run" / "a.json", "{}")  # mkdir alone said "[Errno 17] File exists"
    with pytest.raises(NotADirectoryError, match=rf"{notes} is a file, not a folder$"):
        with staged_dir(notes / "best"):
            pass
    assert notes.read_text() == "a file"
    make_parent_dirs(tmp_path / "a" / "b" / "c.txt")
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "c.txt").exists()


# ---- guards: only regular files are replaced, and they keep their mode --------------------------------------------
def _specials(tmp_path):
    """A FIFO, a socket, a character device (a copy of /dev/null's node, where mknod is allowed), a symbolic link
    and a folder, each where a file is about to be written."""
    import socket
    import stat as st

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    link = tmp_path / "link"
    (tmp_path / "target.txt").write_text("kept")
    link.symlink_to(tmp_path / "target.txt")
    folder = tmp_path / "folder"
    folder.mkdir()
    found = {"FIFO": fifo, "socket": sock, "symbolic link": link, "folder": folder}
    try:
        os.mknod(tmp_path / "null", 0o666 | st.S_IFCHR, os.makedev(1, 3))
        found["character device"] = tmp_path / "null"
    except PermissionError:  # not root: the other kinds still show the rule
        pass
    return found, server


def test_atomic_writes_refuse_to_replace_anything_but_a_regular_file(tmp_path):
    from hubclf.atomic import NotARegularFileError, atomic_write_bytes

    found, server = _specials(tmp_path)
    try:
        for kind, path in found.items():
            before = os.lstat(path)
            with pytest.raises(NotARegularFileError, match=rf"^{path} is an? {kind}.*not a regular file"):
                atomic_write_bytes(path, b"x")
            after = os.lstat(path)
            assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), kind  # left as it was
    finally:
        server.close()
    assert (tmp_path / "target.txt").read_text() == "kept"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    import stat as st

    kept = tmp_path / "shared.json"
    kept.write_text("{}")
    os.chmod(kept, 0o644)
    atomic_write_json(kept, {"a": 1})
    assert st.S_IMODE(kept.stat().st_mode) == 0o644  # was 0o600 (mkstemp's) after every rewrite
    os.chmod(kept, 0o640)
    atomic_write_text(kept, "x")
    assert st.S_IMODE(kept.stat().st_mode) == 0o640
    previous = os.umask(0o027)
    try:
        new = atomic_write_text(tmp_path / "new.txt", "x")
        with staged_dir(tmp_path / "model") as tmp:
            (tmp / "a").write_text("a")
    finally:
        os.umask(previous)
    assert st.S_IMODE(new.stat().st_mode) == 0o640
    assert st.S_IMODE((tmp_path / "model").stat().st_mode) == 0o750  # mkdtemp's 0o700 before
    os.chmod(tmp_path / "model", 0o755)
    with staged_dir(tmp_path / "model") as tmp:  # a replaced folder keeps its mode too
        (tmp / "b").write_text("b")
    assert st.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_staged_dir_refuses_to_swap_a_folder_in_for_a_special_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotADirectoryError, match="is a FIFO.*not a folder"):
        with staged_dir(fifo):
            pass
    assert os.path.exists(fifo) and not os.path.isdir(fifo)
