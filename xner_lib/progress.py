"""Progress for every long loop of the library: a tqdm bar in a terminal, one summary line elsewhere.

Under papermill (and in any Jupyter kernel without widgets) ``tqdm.auto`` falls back to text bars, and
every redraw is kept in the executed notebook: megabytes of ``\\r``-separated bars. :func:`progress`
therefore draws a bar only when stderr is a terminal outside a notebook kernel; otherwise it counts
silently and writes one line when the stage closes::

    train seed 1: 878/878 steps in 1034.2 s (loss=0.214)

``$XNER_PROGRESS`` forces a mode: ``bar``, ``summary`` or ``off``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO, TypeVar

from tqdm import tqdm

MODES = ("bar", "summary", "off")
ENV = "XNER_PROGRESS"

E = TypeVar("E")


class Progress(Protocol):
    """What the library uses of a progress object (a ``tqdm`` bar or a :class:`SummaryProgress`)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


def in_notebook_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel, e.g. a notebook run by papermill."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def progress_mode(file: TextIO | None = None) -> str:
    """``$XNER_PROGRESS`` when set, else ``bar`` if ``file`` (default stderr) is a terminal outside a
    notebook kernel, else ``summary``."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"${ENV}={forced!r}: expected one of {', '.join(MODES)}")
        return forced
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    tty = bool(isatty()) if callable(isatty) else False
    return "bar" if tty and not in_notebook_kernel() else "summary"


class SummaryProgress:
    """Counts like a tqdm bar and writes one line when closed: ``desc: n/total unit in S s (postfix)``.

    Closes itself when iteration ends (also on ``break``, when the loop drops the iterator) and on
    leaving a ``with`` block; a second close writes nothing.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, desc: str = "", total: float | None = None,
                 unit: str = "it", initial: float = 0, file: TextIO | None = None, silent: bool = False) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.desc, self.total, self.unit = desc, total, unit
        self.initial = self.n = initial
        self.file, self.silent = file, silent
        self.postfix = ""
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress object wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> SummaryProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Remember ``key=value`` pairs for the summary line (the last call wins, as tqdm shows it)."""
        items = {**dict(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def summary(self) -> str:
        """The line :meth:`close` writes."""
        n = f"{self.n:g}" if self.total is None else f"{self.n:g}/{self.total:g}"
        text = f"{self.desc}: {n} {self.unit} in {time.perf_counter() - self.start:.1f} s"
        extras = [f"{self.initial:g} already done"] if self.initial else []
        extras += [self.postfix] if self.postfix else []
        return text + (f" ({'; '.join(extras)})" if extras else "")

    def close(self) -> None:
        """Write the summary line once (nothing when silent)."""
        if self.closed:
            return
        self.closed = True
        if not self.silent:
            stream = self.file if self.file is not None else sys.stderr
            print(self.summary(), file=stream, flush=True)


def progress(iterable: Iterable[E] | None = None, *, desc: str, total: float | None = None, unit: str = "it",
             initial: float = 0, disable: bool = False, leave: bool = True, file: TextIO | None = None
             ) -> Progress:
    """A progress object over ``iterable`` (or updated by hand): a tqdm bar in a terminal, a
    :class:`SummaryProgress` (one line when it closes) in a notebook kernel or when ``file`` (default
    stderr) is not a terminal; ``disable`` (or ``$XNER_PROGRESS=off``) shows nothing. Use it as tqdm:
    iterate it, or ``update``/``set_postfix``/``close`` it, or as a context manager."""
    mode = "off" if disable else progress_mode(file)
    if mode == "bar":
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave, file=file)
    return SummaryProgress(iterable, desc=desc, total=total, unit=unit, initial=initial, file=file,
                           silent=mode == "off")
