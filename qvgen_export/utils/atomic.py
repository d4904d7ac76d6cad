"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Temp names are recognisable, ``.NAME.qvgen-tmp-<host>-<pid>-<random>`` beside the final path, so
that a later write into the same folder can remove the leftovers of a process that was killed
(SIGKILL, power loss) before it could clean up: a temp is removed only when it was made on this
host by a pid that no longer exists. Files and folders are created with the default modes
(0666/0777) minus the umask, like any ``open``/``mkdir``, never 0600/0700.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".qvgen-tmp-"
OLD_MARK = ".qvgen-old-"
# ``.NAME.qvgen-tmp-HOST-PID-RAND`` / ``.NAME.qvgen-old-HOST-PID-RAND``; HOST may hold dashes, so
# PID and RAND are matched from the right.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.qvgen-(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No space left while writing an output; the message names the path and what was written."""

    def __init__(self, path: str | Path, what: str, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or "no space left on device"
        super().__init__(cause.errno or errno.ENOSPC, f"{path}: disk full while writing {what} ({reason})")
        self.path = str(path)
        self.what = what

    def __str__(self) -> str:  # OSError's default prefixes "[Errno 28]"; keep the one line clean
        return str(self.args[1])


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _temp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.qvgen-{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove the temp files and folders that dead processes of this host left in ``folder``.

    A ``.NAME.qvgen-old-*`` (the previous version of NAME, moved aside for an instant during an
    overwrite) is put back under NAME when NAME is missing, else removed. Returns what was handled.
    """
    folder = Path(folder)
    done: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return done
    host = _host()
    for p in sorted(entries, key=lambda q: q.name):
        m = _LEFTOVER.match(p.name)
        if m is None or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        final = folder / m["name"]
        if m["kind"] == "old" and not final.exists() and not final.is_symlink():
            with contextlib.suppress(OSError):
                os.replace(p, final)
                done.append(p)
                continue
        _remove(p)
        done.append(p)
    return done


def discard(path: str | Path) -> None:
    """Remove a file or folder so that a kill midway never leaves it half-deleted under its own
    name: it is renamed to a temp name first (one atomic step), which :func:`clean_stale` removes
    if the deletion itself is interrupted."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    tmp = _temp_name(path)
    os.replace(path, tmp)
    _remove(tmp)


def leftovers(folder: str | Path) -> list[str]:
    """Names of qvgen temp files/folders in ``folder`` (any process); for tests and checks."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _LEFTOVER.match(p.name))


@contextlib.contextmanager
def disk_full_names(path: str | Path, what: str) -> Iterator[None]:
    """Turn a disk-full ``OSError`` raised in the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(path, what, e) from None
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, what: str = "the output file") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``.

    The temp file exists (empty, mode 0666 minus umask) when the block starts; writers may
    replace or truncate it.
    """
    path = Path(path)
    clean_stale(path.parent)
    tmp_path = _temp_name(path)
    with disk_full_names(path, what):
        fd = os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
    try:
        with disk_full_names(path, what):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, what: str = "the output folder") -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path``.

    An interrupted write leaves only a hidden ``.NAME.qvgen-tmp-*`` folder, which the next
    atomic write into the same parent removes once its process is gone; never a ``path`` that
    looks complete. Replacing an existing ``path`` moves it aside to ``.NAME.qvgen-old-*`` for
    the instant between two renames; a kill exactly there is repaired by :func:`clean_stale`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite to replace it)")
    clean_stale(path.parent)
    tmp = _temp_name(path)
    with disk_full_names(path, what):
        os.mkdir(tmp, 0o777)
    try:
        with disk_full_names(path, what):
            yield tmp
        if path.exists():
            old = _temp_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path``'s parent if needed and check it is a writable folder (by writing a probe).

    ``os.access`` is not enough: it says yes to root on a read-only mount's files and knows
    nothing of quotas, so a real (empty, removed) temp file is created.
    """
    parent = Path(path).resolve().parent
    return check_writable_folder(parent)


def check_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it writable now, before any long work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{folder}: output folder is a file") from None
    except OSError as e:
        raise PermissionError(f"{folder}: cannot create output folder ({e.strerror or e})") from None
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: output folder is not a folder")
    probe = _temp_name(folder / "write-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(folder, "a write probe", e) from None
        raise PermissionError(f"{folder}: output folder is not writable ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder
