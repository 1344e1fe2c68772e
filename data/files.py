"""Atomic file writes: the one implementation every file this project writes goes through.

A file is first written to a temporary file beside its target (``tempfile.mkstemp`` in the
target's folder, named ``.<target name>.<random>.tmp``), flushed to disk, given the mode an
ordinary file gets (:func:`file_mode`), then renamed onto the target with ``os.replace``.
Readers therefore never see a half-written file; on any failure the temporary file is removed
and an existing target is left as it was (for a set of files, see :func:`atomic_write_files`).
An ``OSError`` is re-raised naming the target, never the temporary file, e.g.
``[Errno 28] cannot write (No space left on device): 'DIR/summary.json'``.

Users: result files (:mod:`app.results`), saved volumes (:func:`data.io.save_nifti_atomic`),
the preprocessing cache and label maps (:mod:`data.preprocess`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_write_files", "atomic_write_with", "file_mode"]

Writer = Callable[[str], None]  # writes the file whose path it is given


def file_mode(path: str | os.PathLike) -> int:
    """Permission bits for a file about to be (re)written atomically at ``path``: those of the
    existing file (writing into a file keeps its mode), else ``0o666 & ~umask``, what ``open()``
    gives a new file. Temporary files (``mkstemp``: 0600) get this mode before the rename, so
    results are as readable to collaborators as any file the user writes."""
    try:
        return os.stat(path).st_mode & 0o7777
    except (FileNotFoundError, NotADirectoryError):
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc`` as an OSError about ``target`` (same errno, so the same subclass)."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return OSError(exc.errno, f"cannot write ({reason})", str(target))


def _bytes_writer(data: bytes) -> Writer:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return write


def _write_temporary(target: Path, write: Writer, suffix: str = ".tmp") -> str:
    """A new temporary file beside ``target`` written by ``write(its path)``, flushed to disk and
    with the mode :func:`file_mode` gives ``target``; returns its path. On failure it is removed
    and an ``OSError`` names ``target``."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode(target))  # mkstemp makes 0600: give the mode an ordinary file gets
        return tmp
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, target) from exc
        raise


def _write_set(staged: Mapping[Path, Writer], suffix: str = ".tmp") -> None:
    """Write every target through its temporary file, then rename all (see :func:`atomic_write_files`)."""
    temporary: list[tuple[str, Path]] = []
    renamed = False
    try:
        for target, write in staged.items():
            temporary.append((_write_temporary(target, write, suffix), target))
        for tmp, target in temporary:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _naming(exc, target) from exc
            renamed = True
    except BaseException:
        for tmp, _ in temporary:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if renamed:
            for _, target in temporary:
                target.unlink(missing_ok=True)
        raise


def atomic_write_files(files: Mapping[str | os.PathLike, bytes | str]) -> None:
    """Write several files (bytes, or text as UTF-8) all or nothing, each like :func:`atomic_write_bytes`.

    Every file is first written to a temporary file beside its target; only when all are written
    are they renamed into place. If anything fails, the temporary files are removed; if it fails
    after a rename, every target of the set is deleted (the results contract rebuilds them from
    the parts on a rerun), so a reader never finds a set with files missing or files from
    different calls. A failure before any rename leaves existing targets untouched.
    ``OSError``\\ s are re-raised naming the target file.
    """
    _write_set({Path(target): _bytes_writer(data.encode("utf-8") if isinstance(data, str) else data)
                for target, data in files.items()})


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``.

    On failure no temporary file is left and ``path`` is untouched; an ``OSError`` (permission
    denied, disk full...) is re-raised naming ``path``, not the temporary file.
    """
    atomic_write_files({path: data})


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, write: Writer, suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically with ``write(temporary path)``, for writers that need a file name
    rather than bytes (nibabel picks gzip from a ``.gz`` ending: pass ``suffix=".tmp.nii.gz"``;
    ``numpy.savez`` streams into an open file). Same guarantees as :func:`atomic_write_bytes`;
    returns ``path``."""
    path = Path(path)
    _write_set({path: write}, suffix)
    return path
