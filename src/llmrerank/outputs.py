"""Writing outputs so that no fault harms them: one writer at a time, and nothing final until it is complete.

Every file or folder the package writes for a user (a reranked run and its sidecar, a retrieved run, a plot, a
trained model) goes through here:

- :func:`check_writable` is called once the inputs are read and checked, before any work is done, so an output
  that cannot be written fails at once with a clear message rather than after an hour of reranking;
- :class:`OutputLock` refuses a second process that writes the same output (an advisory ``flock`` on
  ``<output>.lock``, which the kernel releases when the holder exits, however it exits, so a lock left by a
  killed process never blocks a later run);
- the content is written beside the target (:func:`partial_path`, ``<output>.partial``) and renamed over it
  only once complete (:func:`write_atomic`, :func:`replace_folder`), so a crash leaves the earlier output
  intact and can never be mistaken for a finished one.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, Union

PathLike = Union[str, Path]


class OutputError(OSError):
    """An output cannot be written (a read-only folder, a path under a regular file, a full disk, ...)."""


class OutputLockedError(OutputError):
    """Another process is writing the same output."""


def partial_path(path: PathLike) -> Path:
    """Where the content of ``path`` is written until it is complete: ``<path>.partial`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


def lock_path(path: PathLike) -> Path:
    p = Path(os.path.abspath(path))  # "." and ".." have no name of their own
    return p.with_name(p.name + ".lock")


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def check_writable(path: PathLike, what: str = "output", folder: bool = False) -> Path:
    """``path`` as a Path, or an :class:`OutputError` saying why it cannot be written, without touching anything.

    The nearest folder that exists above ``path`` must be a writable folder (the missing ones are made when
    writing), and ``path`` itself must not be a folder (or, with ``folder``, must not be a file).
    """
    p = Path(path)
    if not Path(os.path.abspath(p)).name:  # "/" ("." and ".." name the folder they stand for)
        raise OutputError(f"cannot write the {what} {str(path)!r}: give a file name")
    if not folder and p.is_dir():
        raise OutputError(f"cannot write the {what} {p}: it is a folder; give a file path")
    if folder and p.exists() and not p.is_dir():
        raise OutputError(f"cannot write the {what} {p}: it is a file, not a folder")
    absolute = Path(os.path.abspath(p))
    # a folder that exists is written into (and its lock beside it); anything else is made in its parent
    if folder and absolute.is_dir() and not os.access(absolute, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what} {p}: {absolute} is not writable; choose another path")
    parent = absolute.parent  # where it is made, or renamed into place, and where its lock goes
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write the {what} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write the {what} {p}: {parent} is not writable (its lock file goes there); choose another path"
        )
    return p


def make_parent(path: Path, what: str = "output") -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write the {what} {path}: {_reason(e)}") from e


class OutputLock:
    """Hold ``<path>.lock`` while writing ``path``; a second holder gets :class:`OutputLockedError`.

    A context manager. The lock is an advisory ``fcntl.flock``: released by the kernel when the process ends,
    so a stale ``.lock`` file left by ``kill -9`` is taken over by the next run. The file records the holder's
    pid for the message, and is removed on release. Re-entrant within a thread: the command line takes the lock
    before it loads a model, and the writer it calls takes it again; another thread is refused like another
    process.
    """

    _held: ClassVar[dict[tuple[int, str], int]] = {}  # (thread, lock file) held -> how many times

    def __init__(self, path: PathLike, what: str = "output"):
        self.path = Path(path)
        self.what = what
        self.file: IO[str] | None = None
        self.key = (0, "")

    def __enter__(self) -> OutputLock:
        import fcntl

        self.key = (threading.get_ident(), str(lock_path(self.path)))
        if self.key in self._held:
            self._held[self.key] += 1
            return self
        lock = lock_path(self.path)
        make_parent(lock, self.what)
        while True:
            try:
                f = open(lock, "a+", encoding="utf-8")
            except OSError as e:
                raise OutputError(
                    f"cannot write the {self.what} {self.path}: its lock file {lock}: {_reason(e)}"
                ) from e
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise OutputError(f"cannot lock the {self.what} {self.path}: {_reason(e)}") from e
                who = (
                    "another thread of this process"
                    if holder == str(os.getpid())
                    else f"another process (pid {holder})"
                )
                raise OutputLockedError(
                    f"{self.path} is being written by {who}; wait for it to finish, or write to another path"
                ) from None
            # the holder before us may have removed the file between our open and our lock: lock the new one
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        self._held[self.key] = 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._held[self.key] -= 1
        if self._held[self.key]:
            return
        del self._held[self.key]
        if self.file is None:
            return
        try:
            os.unlink(lock_path(self.path))
        except FileNotFoundError:
            pass
        self.file.close()  # closing releases the lock
        self.file = None


def fsync_file(f: IO[Any]) -> None:
    f.flush()
    os.fsync(f.fileno())


def write_atomic(path: PathLike, write: Callable[[IO[Any]], None] | str | bytes, what: str = "output") -> Path:
    """Write ``path`` whole or not at all: under its lock, into ``<path>.partial``, then renamed over it.

    ``write`` is the content (str or bytes) or a function given the open partial file (binary when it writes
    bytes is up to it: the file is opened in binary mode for bytes and for a function, text mode for a str).
    Until the rename, an earlier ``path`` stays as it was; a failure removes the partial file.
    """
    p = check_writable(path, what)
    with OutputLock(p, what):
        make_parent(p, what)
        tmp = partial_path(p)
        try:
            if isinstance(write, str):
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(write)
                    fsync_file(f)
            else:
                with open(tmp, "wb") as f:
                    if isinstance(write, bytes):
                        f.write(write)
                    else:
                        write(f)
                    fsync_file(f)
            os.replace(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write the {what} {p}: {_reason(e)}") from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return p


def replace_folder(partial: Path, final: Path) -> None:
    """Put the complete folder ``partial`` in place of ``final`` (which may exist), as nearly atomically as a
    folder can be: the old one is moved aside, the new one renamed in, then the old one removed. A crash between
    the two renames leaves the old folder at ``<final>.old``, which the next call puts back first."""
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        os.replace(old, final)  # an earlier call died between its renames
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)
