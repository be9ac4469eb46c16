"""Writing outputs safely: each file appears whole or not at all, a case's files appear together,
and a folder that cannot be written is named before any work is spent.

Used for every file the package writes (label maps, sidecars, previews, exported models, bench
results, the format cache), not only NIfTI.
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

from veloxseg.runtime.errors import InputError

__all__ = [
    "atomic_write_bytes",
    "atomic_writer",
    "create_output_folder",
    "nearest_unwritable_folder",
    "remove_dead_temps",
    "replaced_input",
    "staged_outputs",
]

_STAGED: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("staged_outputs", default=None)
_TEMP_STEM_BYTES = 200  # of an output's name in its temp name: 255-byte names must work
# This host in temp names (8 hex digits): only its own dead processes' temps are removed.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the block succeeds.

    Data goes to ``.{name}.tmp-{host}-{pid}-{random}`` (the name cut to 200 bytes, so that
    names up to the usual 255-byte limit work) beside ``path`` (never a name a reader would
    take for the output), is fsynced, then ``os.replace``d; on any error the temp is removed and
    ``path`` is untouched. Failures to create or move the file raise ``InputError``. Temps of
    ``path`` that a killed run of this host left (SIGKILL, the OOM killer) are removed first.
    """
    path = Path(path)
    remove_dead_temps(path)
    tmp = Path(f"{_temp_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}")
    try:  # from before the temp exists: a signal right after its creation still removes it
        try:
            handle = open(tmp, "xb")  # noqa: SIM115 - closed below, before the rename
        except OSError as e:
            raise InputError(
                f"cannot write {path} ({e.strerror}); check the folder exists and is writable"
            ) from e
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        staged = _STAGED.get()
        if staged is not None:
            staged.append((tmp, path))  # renamed with the others when the stage succeeds
        else:
            _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temp_prefix(path: Path) -> Path:
    stem = path.name.encode()[:_TEMP_STEM_BYTES].decode(errors="ignore")
    return path.with_name(f".{stem}.tmp-{_HOST}-")


def remove_dead_temps(path: Path) -> None:
    """Remove the temps of ``path`` whose process has ended: a killed run's partial output
    (gigabytes, for whole-body probabilities) would otherwise stay beside the output for good.
    Only this host's temps are looked at: a pid means nothing on another host."""
    prefix = _temp_prefix(Path(path))
    for temp in prefix.parent.glob(glob.escape(prefix.name) + "*"):
        pid = temp.name[len(prefix.name) :].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            temp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def staged_outputs() -> Iterator[None]:
    """Atomic writes inside this block keep their temp files, and all are renamed to their
    final names, in order, only when the block succeeds (on any error all are removed): a case's
    outputs appear together or not at all."""
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        yield
        for _, path in staged:  # what would stop a rename half-way, checked before the first
            if path.is_dir():
                raise InputError(f"cannot write {path}: a folder has that name; remove it")
        while staged:
            tmp, path = staged[0]
            _replace(tmp, path)
            staged.pop(0)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        _STAGED.reset(token)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path} ({e.strerror}); check it is writable") from e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_writer``)."""
    with atomic_writer(path) as f:
        f.write(data)


def create_output_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) for outputs, or say in one line why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"cannot create the output folder {folder} ({e.strerror}); choose another -o"
        ) from e


def nearest_unwritable_folder(path: Path) -> Path | None:
    """The nearest existing folder at or above ``path`` (the folders still to create go under
    it) if it cannot be written, else None: checked before the work, not found after it."""
    folder = path.absolute()
    while not folder.exists():
        folder = folder.parent
    return None if os.access(folder, os.W_OK | os.X_OK) else folder


def replaced_input(output: Path, inputs: Iterable[Path]) -> Path | None:
    """The input that writing ``output`` would replace, else None: the same path however
    spelt (``sub/..``, symlinks), or the same file under another name (a hard link)."""
    target = Path(output).resolve()
    for source in inputs:
        source = Path(source)
        if target == source.resolve():
            return source
        if target.exists() and source.exists() and os.path.samefile(target, source):
            return source
    return None
