"""Fault injection: stand-ins that make a stage raise, hang, or return a given value.

Applied through overrides like any fake (`overrides={Encoder: sg.testing.raises(...)}`, or
one method: `{"Encoder.encode": sg.testing.hangs(30)}`), so every executor injects them the
same way. `compiler.override` asks a fault for a callable shaped like the stage's own (sync,
async, or async generator for a streaming stage) and gives it the stage's annotations, so
strict mode checks what `returns(...)` gives against what the stage declares.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any


class FaultHung(AssertionError):
    """`hangs(seconds)` waited its seconds out: no timeout stopped the stage."""


@dataclass(frozen=True, eq=False)
class Fault:
    """What the stand-in does on every call: raise `error`, sleep `seconds`, or return
    `value` (a streaming stage: yield it as its one chunk)."""

    kind: str
    error: BaseException | None = None
    seconds: float = 0.0
    value: Any = None

    @property
    def needs_timeout(self) -> bool:
        """A hang is only a test of the stage's `timeout_s`; without one it would wait."""
        return self.kind == "hangs"

    def stand_in(self, like: Callable[..., Any]) -> Callable[..., Any]:
        """A callable to call instead of `like`, of the same kind (async generator or not)."""
        act = self._act
        if inspect.isasyncgenfunction(like):
            async def chunks(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                yield await act()

            return chunks

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await act()

        return call

    async def _act(self) -> Any:
        if self.kind == "raises":
            raise copy.copy(self.error)  # type: ignore[misc]
        if self.kind == "hangs":
            await asyncio.sleep(self.seconds)
            raise FaultHung(f"hangs({self.seconds:g}): the stage was not stopped by a timeout")
        return self.value

    def __repr__(self) -> str:
        if self.kind == "raises":
            return f"raises({self.error!r})"
        if self.kind == "hangs":
            return f"hangs({self.seconds:g})"
        return f"returns({self.value!r})"


def raises(error: BaseException | type[BaseException] = RuntimeError) -> Fault:
    """The stage raises `error` (an exception, or a class: raised with 'injected fault')."""
    if isinstance(error, type) and issubclass(error, BaseException):
        error = error("injected fault")
    if not isinstance(error, BaseException):
        raise TypeError(f"raises() needs an exception or an exception class, got {error!r}")
    return Fault("raises", error=error)


def hangs(seconds: float = 3600.0) -> Fault:
    """The stage waits `seconds` before answering: past its `timeout_s`, which must be set
    (override refuses a hang on a stage without one: the request would wait)."""
    if not seconds > 0:
        raise ValueError(f"hangs() needs seconds > 0, got {seconds!r}")
    return Fault("hangs", seconds=float(seconds))


def returns(value: Any) -> Fault:
    """The stage returns `value` whatever its input (e.g. a value of the wrong type: strict
    mode catches it, a plain run lets it through)."""
    return Fault("returns", value=value)
