"""A class the config names that cannot be built for want of an optional package, as one line."""

from __future__ import annotations

import re
from typing import Any

from jsonargparse import Namespace


def missing_package(exc: BaseException, trainer: Any) -> str | None:
    """A class the config names (a logger, a callback) that cannot be built for want of a package:
    which flag and class, which package, and how to get it; None for any other failure."""
    chain: list[BaseException] = []
    classes: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        classes += re.findall(r"given class_path '([^']+)'", str(cause))
        cause = cause.__cause__ or cause.__context__
    missing = next((e for e in chain if isinstance(e, ImportError)), None)
    if missing is None:
        return None
    text = str(missing)
    found = re.search(r"Requirement '([A-Za-z0-9_.\-]+)", text)
    package = found.group(1) if found else (missing.name or "").split(".")[0]
    if not package:
        return None
    hint = re.search(r"`(pip install[^`]*)`", text)
    install = hint.group(1) if hint else f"pip install {package}"
    what = classes[-1] if classes else "a class in the config"
    for flag in ("logger", "callbacks"):
        given = trainer.get(flag) if trainer is not None else None
        given = given if isinstance(given, list) else [given]
        if any(isinstance(c, Namespace) and c.get("class_path") == what for c in given):
            what = f"--trainer.{flag} {what}"
    return f"{what} cannot be built: it needs the package {package}, which is not installed here; {install}"
