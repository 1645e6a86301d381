"""Files written whole or not at all: what every file transferkit writes goes through.

`atomic_write` writes into a temporary sibling (created with the process umask, as any other file),
flushes and fsyncs it, renames it over the target and fsyncs the folder. A reader (another process
loading the file) sees the old content or the new, never half; ``kill -9`` at any moment leaves the old
file or the new one plus, at worst, a stale temporary sibling, which the next write to the same name
removes (`remove_stale_temps`); Ctrl-C during the write is held back until the rename is done, so it
lands in a consistent state and the caller's usual "interrupted" handling runs. A target that is a
symbolic link is refused: transferkit never writes through one.

Examples:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_text(folder / "notes.json", "{}\\n")
    >>> (folder / "notes.json").read_text()
    '{}\\n'
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if os.name == "posix":
    import fcntl

__all__ = ["atomic_write", "deferred_interrupt", "refuse_symlink", "remove_stale_temps", "write_text"]

_TEMP_SUFFIX = ".tmp"


def refuse_symlink(path: Path, what: str = "file") -> None:
    """Raise if ``path`` is a symbolic link: writing there would change the file it points to.

    Raises:
        FileExistsError: ``path`` is a symbolic link (the message names it and its target).
    """
    if path.is_symlink():
        raise FileExistsError(
            f"refusing to write the {what} {path}: it is a symbolic link (to {os.readlink(path)}), and "
            "transferkit never writes through one; remove the link, or choose another path"
        )


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block ends, then raise `KeyboardInterrupt` as usual.

    Only the main thread receives signals; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _temp_sibling(path: Path, name: str | None) -> tuple[Path, int]:
    """A new temporary file beside ``path``, created exclusively with the umask's mode, and its descriptor."""
    tmp = path.with_name(name or f".{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    refuse_symlink(tmp, "temporary file")
    if name is not None:  # a fixed name: a stale one from a killed write is replaced
        tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    if os.name == "posix":
        fcntl.flock(fd, fcntl.LOCK_EX)  # `remove_stale_temps` leaves a temp file alone while it is held
    return tmp, fd


def _settle(tmp: Path, fd: int) -> int:
    """Make the written ``tmp`` durable and readable as the umask allows; return the descriptor now held.

    Some writers replace the file they are given (safetensors writes its own temporary file, mode 0600,
    and renames it): the new file is locked and given the mode any file the process creates would get.
    """
    new = os.open(tmp, os.O_RDONLY)
    if os.fstat(new).st_ino == os.fstat(fd).st_ino:
        os.close(new)
    else:
        if os.name == "posix":
            fcntl.flock(new, fcntl.LOCK_EX)
        os.close(fd)
        fd = new
    os.fsync(fd)
    if os.name == "posix":
        os.fchmod(fd, 0o666 & ~_umask())
    return fd


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[str], Any], *, temp_name: str | None = None
) -> None:
    """Call ``write(temp_path)``, then make its file ``path`` in one rename.

    Args:
        path: The file to write; its folder must exist. A symbolic link there is refused.
        write: Writes the whole content to the path it is given (``torch.save``, safetensors' ``save_file``,
            ``Path.write_text``).
        temp_name: A fixed name for the temporary sibling (default: ``.NAME.RANDOM.tmp``, which
            `remove_stale_temps` recognises).

    Raises:
        FileExistsError: ``path`` is a symbolic link.
        OSError: The write failed; ``path`` keeps its earlier content and the temporary file is removed.
    """
    path = Path(path)
    refuse_symlink(path)
    remove_stale_temps(path)
    with deferred_interrupt():
        tmp, fd = _temp_sibling(path, temp_name)
        try:
            write(str(tmp))
            fd = _settle(tmp, fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        _fsync_folder(path.parent)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by writes that were killed; return them.

    A temporary file still being written (its writer holds a lock on it) is left alone.
    """
    removed = []
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*{_TEMP_SUFFIX}"):
        if tmp.is_symlink() or not tmp.is_file():
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.name == "posix":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process is writing it now
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
