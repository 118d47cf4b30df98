"""Writing files so that a crash or a second run never leaves half a file or loses a result."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linreg.errors import LinregError

if TYPE_CHECKING:
    pass

OUTPUT_SUFFIXES = (".csv", ".parquet")


def check_output(path: str | Path, overwrite: bool, suffixes: Sequence[str] = OUTPUT_SUFFIXES) -> Path:
    """Refuse an output we could not or should not write, before any work is done."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise LinregError(f"--output {p}: the file name must end in {' or '.join(suffixes)}")
    if p.exists() and not overwrite:
        raise LinregError(f"--output {p} already exists; pass --overwrite true to replace it")
    if not p.parent.exists():
        raise LinregError(f"--output {p}: folder {p.parent} does not exist")
    return p


def atomic_write(path: str | Path, write: Callable[[Path], Any], overwrite: bool = True) -> Path:
    """Write to a temporary file beside ``path``, then rename it over: readers see all or nothing."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise LinregError(f"{p} already exists; pass --overwrite true to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result gets a normal file's permissions
    try:
        write(Path(tmp))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


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
