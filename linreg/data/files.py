"""The files of a table: one file, a folder's Parquet or CSV parts, or a glob's matches, each real file
once; and the stat that tells whether one changed since it was listed."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from linreg.errors import LinRegError

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".csv.gz")


def file_kind(path: str) -> str | None:
    name = path.lower()
    if name.endswith(PARQUET):
        return "parquet"
    if name.endswith(CSV):
        return "csv"
    return None


def _wildcard(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand(path: str) -> list[str]:
    """The files of a table: a file, every Parquet/CSV file under a folder, or a glob's matches, sorted.

    A path that exists is that file or folder, glob characters in its name or not (``data[2020].csv``):
    only a path that does not exist is a pattern. Links are followed, but every real folder is walked
    once and every real file counted once, so a link back to a parent (a loop) adds no rows.
    """
    if os.path.isdir(path):
        # Like pyarrow: no part of the path under the folder may start with "." or "_" (.ipynb_checkpoints,
        # _temporary, _SUCCESS), or a stray copy would be read as more rows.
        files = [f for f, parts in _walk(path) if not any(part.startswith((".", "_")) for part in parts)]
        where = f"the folder {path}"
    elif os.path.exists(path) or not _wildcard(path):
        return [path]
    else:
        files = _glob(path)
        where = f"the pattern {path!r}"
    files = _once(f for f in files if file_kind(f) and os.path.isfile(f))
    if not files:
        raise LinRegError(f"{where} holds no .parquet or .csv files")
    kinds = {file_kind(f) for f in files}
    if len(kinds) > 1:
        raise LinRegError(f"{where} mixes Parquet and CSV files; give one kind")
    return files


def _walk(root: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every file under ``root`` with its path components below it, following links, each real folder
    once (its real path first, where it is reached both ways at one level)."""
    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        rel = os.path.relpath(folder, root)
        parts = () if rel == os.curdir else tuple(Path(rel).parts)
        for name in names:
            yield os.path.join(folder, name), (*parts, name)


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, except that ``**`` walks each real folder once: glob's own
    follows a link to a parent round and round, one more copy of every file each time."""
    parts = Path(pattern).parts
    if "**" not in parts:
        return glob.glob(pattern)  # a fixed depth: a loop cannot repeat a file without end
    first = parts.index("**")
    above = os.path.join(*parts[:first]) if first else ""
    roots = glob.glob(above) if _wildcard(above) else [above]  # the folders above ``**``: a fixed depth too
    return [
        os.path.join(root, *names)
        for root in roots
        for _, names in _walk(root or os.curdir)
        if _matches(parts[first:], names)
    ]


def _matches(pattern: Sequence[str], names: Sequence[str]) -> bool:
    """Path components against glob components, as ``glob`` matches them: ``**`` any number of
    folders, and a name starting with "." only where the pattern's component does too."""
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, names[i:]) for i in range(len(names) + 1) if not _hidden(names[:i]))
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _matches(rest, names[1:])


def _hidden(names: Sequence[str]) -> bool:
    return any(name.startswith(".") for name in names)


def _once(files: Iterator[str] | list[str]) -> list[str]:
    """Each real file once, under its shortest name (a loop's longer names are the same file), sorted."""
    kept: dict[str, str] = {}
    for file in sorted(files, key=lambda f: (f.count(os.sep), f)):
        kept.setdefault(os.path.realpath(file), file)
    return sorted(kept.values())


def file_stamp(file: str) -> tuple[int, int]:
    """What tells a file changed without reading it: its size and modification time."""
    st = os.stat(file)
    return st.st_size, st.st_mtime_ns
