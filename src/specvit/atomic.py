"""Write files so that nothing half-written is ever left under the final name."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def tmp_path_for(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    if tmp.exists():
        tmp.unlink()
    try:
        yield tmp
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    os.replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --------------------------------------------------------------------------- locks
def lock_path_for(path) -> Path:
    """The lock file of output ``path`` (a file or a run directory): ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


#: ``damaged``: an HDF5 write failed (a full disk) and closing the file failed too, so the HDF5
#: library's exit handler would crash the interpreter; the ``specvit`` command then exits with
#: ``os._exit`` after printing its error (:func:`specvit.cli.console_main`).
HDF5_STATE = {"damaged": False}

#: Locks this process holds: lock file -> [OutputLock, depth] (a nested acquire of the same lock by
#: the same process, e.g. ``simulate`` then its ``DatasetWriter``, is not a second writer).
_HELD: dict = {}

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def output_oserror(e: OSError, path, what: str = "cannot write the output"):
    """A :class:`~specvit.errors.OutputError` for an OS error while writing ``path``, or None if it is
    not about space or permissions (then re-raise the original)."""
    from specvit.errors import DiskFullError, OutputError

    reason = os.strerror(e.errno) if e.errno else str(e)
    if e.errno in _NO_SPACE:
        return DiskFullError(f"{what}: {reason} (free some space, then rerun the same command to continue)",
                             file=path)
    if e.errno in _READ_ONLY or isinstance(e, PermissionError):
        return OutputError(f"{what}: {reason} (the directory is not writable)", file=path)
    return None


class OutputLock:
    """Exclusive lock of one output (a file or a run directory) for the life of the writing process.

    An advisory ``fcntl.flock`` on the lock file :func:`lock_path_for` (``.<name>.lock`` beside the
    output), which holds the owner's PID. The kernel drops the lock when its owner exits or dies
    (also on SIGKILL), so a lock file left by a dead process is simply taken over. A second process
    gets :class:`~specvit.errors.OutputLockedError` naming the lock file and the owner's PID. Nested
    acquires in the same process are counted, not refused. Worker processes of the owner do not take
    the lock (only the owner writes the output, or writes it through its workers).
    """

    def __init__(self, path, *, what: str = "output"):
        self.path = Path(path)
        self.lock = lock_path_for(self.path)
        self.what = what
        self._fd = self._pid = None

    def _key(self) -> str:
        return os.path.abspath(self.lock)

    def acquire(self) -> "OutputLock":
        import fcntl

        from specvit.errors import OutputLockedError

        held = _HELD.get(self._key())
        if held is not None and held[0]._pid == os.getpid():
            held[1] += 1
            return self
        try:
            self.lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise (output_oserror(e, self.path, f"cannot create the {self.what}'s directory") or e) from None
        while True:
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise (output_oserror(e, self.path, f"cannot create the lock file {str(self.lock)!r}") or e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"the {self.what} is being written by another process (pid {pid}); wait for it to finish "
                    "or stop it (--restart and --overwrite never take over a running writer)",
                    file=self.path, lock=str(self.lock), pid=pid) from None
            # the previous owner unlinks the lock file on release: make sure ours is still the one there
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # a full disk: the flock alone still excludes other writers
            pass
        self._fd, self._pid = fd, os.getpid()
        _HELD[self._key()] = [self, 1]
        return self

    def release(self) -> None:
        held = _HELD.get(self._key())
        if held is None or held[0]._pid != os.getpid():
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self._key()]
        owner = held[0]
        with contextlib.suppress(OSError):
            os.unlink(owner.lock)  # while still holding it: a waiting process re-checks the path
        os.close(owner._fd)
        owner._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
