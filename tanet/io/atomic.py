"""Atomic outputs: nothing half-written is ever left under a final name.

Files are written to a temporary name in the destination folder and renamed into place;
folders are filled under a temporary name and swapped in whole. ``tempfile`` creates those
owner-only (0600/0700); they get the modes a plain ``open``/``mkdir`` would give
(0666/0777 less the umask), so outputs are as readable as any other file of the user's.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file/folder: 0666/0777 less the umask."""
    return (0o777 if directory else 0o666) & ~umask()


def mkstemp_public(**kwargs: Any) -> tuple[int, str]:
    """``tempfile.mkstemp`` with the default file mode instead of 0600."""
    fd, tmp = tempfile.mkstemp(**kwargs)
    os.fchmod(fd, default_mode())
    return fd, tmp


def mkdtemp_public(**kwargs: Any) -> str:
    """``tempfile.mkdtemp`` with the default folder mode instead of 0700."""
    tmp = tempfile.mkdtemp(**kwargs)
    os.chmod(tmp, default_mode(directory=True))
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes bytes to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_public(prefix=temp_sibling_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a full disk or file-size limit: name the file it hit
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], lineterminator: str = "\n"
) -> None:
    """Writes a CSV table (a header row, then ``rows``) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Writes an object as indented JSON atomically (keys kept in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def process_start_ticks(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc``), or None.

    With the pid it names one process for good: a pid alone is reused by later processes.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), after the command name
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, group: bool = False) -> bool:
    """Whether a process (``group``: a process group) of that id exists (one of another user's counts)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_token(pid: int | None = None) -> str:
    """``<pid>-<start ticks>`` of a process: unlike a pid alone, never reused by a later one."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{process_start_ticks(pid) or 0}"


def owner_alive(token: str) -> bool:
    """Whether the process that wrote ``token`` (:func:`owner_token`) still runs."""
    pid_text, _, ticks = token.partition("-")
    if not pid_text.isdigit() or not pid_alive(int(pid_text)):
        return False
    now = process_start_ticks(int(pid_text))
    return ticks in ("", "0") or now is None or now == ticks


_NAME_KEEP = 64  # bytes of the final name kept in a temporary name (NAME_MAX is 255)


def _name_key(path: Path) -> str:
    """Short stand-in for ``path.name`` in temporary names, so a 250-byte output name still fits."""
    raw = path.name.encode()
    if len(raw) <= _NAME_KEEP:
        return path.name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return raw[:40].decode(errors="ignore") + "~" + digest


def temp_sibling_prefix(path: Path) -> str:
    """Prefix of this process's temporary siblings of ``path``: ``.<name>.<pid>-<start>.``.

    The owner token lets a later run tell a dead writer's leftovers (killed by SIGKILL or a
    power cut) from a live writer's, and remove them (:func:`remove_dead_siblings`).
    """
    return f".{_name_key(path)}.{owner_token()}."


def remove_dead_siblings(path: Path) -> list[Path]:
    """Removes temporary siblings of ``path`` whose writer is gone; returns what it removed."""
    removed = []
    key = _name_key(path)
    for tmp in path.parent.glob(f".{glob.escape(key)}.*.tmp*"):
        token = tmp.name[len(key) + 2 :].split(".", 1)[0]
        if token[:1].isdigit() and not owner_alive(token):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling folder that replaces ``path`` only if the block succeeds.

    On an exception the temporary folder is removed and any previous ``path`` is left as
    it was, so a killed or failed stage never leaves a partial output folder. The swap is
    one atomic ``renameat2(RENAME_EXCHANGE)`` when ``path`` exists (two renames where the
    kernel lacks it); temporary folders of killed writers are cleaned up on the next call.

    Args:
        path: the final folder.

    Yields:
        The temporary folder to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_siblings(path)
    tmp = Path(mkdtemp_public(prefix=temp_sibling_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous content
        return
    old = None
    if path.exists():
        old = path.with_name(f"{temp_sibling_prefix(path)}old.tmp")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
