"""One run at a time per run folder: an OS lock on ``.transferkit.lock`` inside it.

``transferkit train`` (and ``demo``) take the lock before they look at ``--out`` (is it empty, may
``--overwrite`` replace it, what does ``--resume`` continue) and hold it until the command ends, so a
second command on the same folder is refused at once, naming the process that holds it, instead of both
passing the checks and writing over each other. The lock is ``flock`` on an open file: the system
releases it when the process ends in any way, ``kill -9`` included, so a stale lock file never blocks
anything and there is nothing to delete by hand. The file holds one line naming its holder (pid, host,
start time, command), for the refusal message only; it is removed when the command ends normally.
A process forked meanwhile (a DataLoader worker) closes its copy of the lock at once, so it never keeps
the folder locked after the command itself is gone.

On a system without ``fcntl`` (Windows) folders are not locked; docs/cli.md says so.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..atomic import refuse_symlink

if os.name == "posix":
    import fcntl

__all__ = ["LOCK_FILE", "RunFolderInUse", "locked_run_folder"]

LOCK_FILE = ".transferkit.lock"
_HOLDER_BYTES = 300  # enough for the holder's line; a longer file is not one this module wrote
_HELD: set[int] = set()  # the lock descriptors this process holds


def _close_inherited() -> None:
    """In a forked child: drop the copies of the parent's locks (the parent's own stay held)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if os.name == "posix":
    os.register_at_fork(after_in_child=_close_inherited)


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder's lock; the message names the folder and that process."""


@contextlib.contextmanager
def locked_run_folder(folder: Path, *, command: str, flag: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s lock for the block; the folder (and its missing parents) is created when missing.

    Folders this call created that are empty when the block ends (the command was refused, or failed
    before writing anything) are removed again, so a refused command leaves nothing behind.

    Args:
        folder: The run folder.
        command: What holds the lock, for another process's refusal (``"transferkit train"``).
        flag: The option that named ``folder``, for messages.

    Raises:
        NotADirectoryError: ``folder`` is a file.
        RunFolderInUse: Another process holds the lock.
        FileExistsError: The lock file is a symbolic link.

    Examples:
        >>> with locked_run_folder(Path("runs/ab"), command="transferkit train"):  # doctest: +SKIP
        ...     ...  # no other transferkit command can take runs/ab meanwhile
    """
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} {folder} is a file; pass a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # the deepest first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        fd = _acquire(path, flag)
    except BaseException:
        _remove_if_empty(created)
        raise
    _HELD.add(fd)
    try:
        _write_holder(fd, command)
        yield
    finally:
        if os.name == "posix":  # removed while still held: a process waiting on it sees a new file
            path.unlink(missing_ok=True)
        _HELD.discard(fd)
        os.close(fd)
        _remove_if_empty(created)


def _acquire(path: Path, flag: str) -> int:
    """Open and lock ``path``; return its descriptor.

    A holder removes the file as it ends; a process that opened the old file just before may then lock
    it, so the lock counts only when ``path`` is still the file locked (else it tries again).
    """
    while True:
        refuse_symlink(path, "lock file")
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        if os.name != "posix":
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderInUse(
                f"{flag} {path.parent} is in use by another transferkit command ({holder}); wait for it "
                f"to end, or choose another {flag}. Its lock ({path}) is released by the system when that "
                "process ends, so there is nothing to delete"
            ) from None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _write_holder(fd: int, command: str) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    line = f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"
    os.ftruncate(fd, 0)
    os.write(fd, line.encode())


def _read_holder(fd: int) -> str:
    text = os.pread(fd, _HOLDER_BYTES, 0).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "it has not written its pid yet"


def _remove_if_empty(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote there, or another one did): keep it and its parents
            return
