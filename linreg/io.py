"""Writing files so that a crash, a full disk or a second run never leaves half a file or loses a result.

Every file linreg writes (checkpoints, predictions, summary.json, figures, exports) is written to a
temporary file beside its final name, flushed to disk, and renamed over it: readers see the old file
or the new one, never a mix, whatever fails in between (a full disk, ``kill -9``, a power cut). The
temporary file must be in the same folder: a rename across filesystems (Lightning's default goes
through ``TMPDIR``) is a copy, which a kill can leave half done.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from linreg.errors import LinRegError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a stale temporary file is then left alone
    fcntl = None  # type: ignore[assignment]

OUTPUT_SUFFIXES = (".csv", ".parquet")
# Failures to write that are the machine's state, not a bug: one line, not a traceback.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def check_output(
    path: str | Path, overwrite: bool, suffixes: Sequence[str] = OUTPUT_SUFFIXES, inputs: Iterable[str] = ()
) -> Path:
    """Refuse an output we could not or should not write, before any work is done."""
    p = Path(path)
    _check_link(p)
    if p.is_dir():
        raise LinRegError(f"--output {p} is a folder; give a file name")
    if p.suffix.lower() not in suffixes:
        raise LinRegError(f"--output {p}: the file name must end in {' or '.join(suffixes)}")
    for given in inputs:
        if _same_or_inside(p, Path(given)):
            why = "is the input" if not Path(given).is_dir() else "is inside the input folder"
            raise LinRegError(f"--output {p} {why} {given}; write the predictions elsewhere")
    if p.exists() and not overwrite:
        raise LinRegError(f"--output {p} already exists; pass --overwrite true to replace it")
    if not p.parent.exists():
        raise LinRegError(f"--output {p}: folder {p.parent} does not exist")
    check_writable(p.parent, f"--output {p}")
    return p


def _check_link(p: Path) -> None:
    """An output that is a symbolic link must lead somewhere: a loop or a dangling link is refused
    (writing would replace the link by a file, and ``resolve`` raises on a loop)."""
    if not p.is_symlink():
        return
    try:
        p.resolve(strict=True)
    except RuntimeError as exc:  # Python < 3.13 raises this on a loop
        raise LinRegError(f"--output {p} is a symbolic link that loops ({exc}); give another name") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinRegError(f"--output {p} is a symbolic link that loops; give another name") from exc
        target = os.readlink(p)
        raise LinRegError(
            f"--output {p} is a symbolic link to {target}, which does not exist; remove the link or give another name"
        ) from exc


def _same_or_inside(output: Path, given: Path) -> bool:
    """Whether ``output`` is the input file, or a file the input folder (or glob) would read next time."""
    out = output.resolve()
    if given.is_dir():
        return given.resolve() in out.parents
    if any(ch in str(given) for ch in "*?["):  # the output would match the pattern next time
        import fnmatch

        pattern = os.path.abspath(given)
        return any(fnmatch.fnmatch(str(name), pattern) for name in (out, output.absolute()))
    return given.resolve() == out


def check_writable(folder: str | Path, what: str, hint: str = "") -> None:
    """Refuse, before any work, a folder we could not write to (read-only, no permission): a fit that
    trained for an hour and then cannot save has lost the hour. A folder still to be made is judged by
    the nearest one that exists."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise LinRegError(f"{what}: cannot write in {existing} ({exc.strerror or exc}){hint}") from exc


def atomic_write(path: str | Path, write: Callable[[Path], Any], overwrite: bool = True) -> Path:
    """Write to a temporary file beside ``path``, then rename it over: readers see all or nothing."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise LinRegError(f"{p} already exists; pass --overwrite true to replace it")
    tmp = temporary(p)
    try:
        with writing(p), _held(tmp):
            write(tmp)
            publish(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


@contextlib.contextmanager
def _held(tmp: Path) -> Iterator[None]:
    """An advisory lock on a temporary file while it is written: ``remove_stale`` tells a file whose
    writer died (``kill -9``: the kernel drops its lock) from one another process is still writing."""
    if fcntl is None:
        yield
        return
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale(folder: str | Path, names: str = "*") -> list[Path]:
    """Remove the temporary files ``atomic_write`` left in ``folder`` (for files matching the glob
    ``names``) when its process was killed mid-write; one that a live process is writing (locked)
    stays. Returns those removed."""
    if fcntl is None:
        return []
    removed = []
    for tmp in Path(folder).glob(f".{names}.*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass  # locked: being written right now
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A failure to write ``path`` (a full disk, a lost permission) as one line naming it."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc).strip().splitlines()[0]
        raise LinRegError(f"{path}: cannot write ({why})") from exc


def temporary(path: Path) -> Path:
    """An empty temporary file beside ``path`` (same folder, so same filesystem: the rename is atomic)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise LinRegError(f"{path}: cannot write ({exc.strerror})") from exc
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place: on disk first (fsync), with the permissions a replaced
    file had (else a new file's, from the umask: mkstemp makes it private), then renamed over ``path``."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # the rename itself on disk; not every filesystem allows this
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Strict JSON: a non-finite number (an infinite t statistic, say) is written as null, not ``Infinity``."""
    text = json.dumps(_finite(data), indent=2, allow_nan=False)
    return atomic_write(path, lambda t: t.write_text(text + "\n"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
