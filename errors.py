"""The one exception family of servegraph.

Every error a user sees is a :class:`PipelineError`. Errors about the graph itself (found while
binding or compiling) are :class:`CompileError`; errors while a request runs are
:class:`StageError` (a stage raised: ours, a 5xx) or :class:`InputError` (the caller's payload is
wrong: a 4xx); a stage that ran past its `timeout_s` is a :class:`StageTimeoutError` (a 504).
Messages say what went wrong, where (the stage and the user's source line), and
how to fix it. All of them pickle with their fields intact so they survive a Ray hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceSite:
    """Where the user wrote something: file, line and the source text of that line."""

    file: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.code}" if self.code else f"{self.file}:{self.line}"


class PipelineError(Exception):
    """Root of every servegraph error."""


class CompileError(PipelineError):
    """The graph is wrong: found while binding or by a compiler pass, before anything runs."""

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        pass_name: str = "compile",
        site: SourceSite | str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.stage = stage
        self.pass_name = pass_name
        self.site = str(site) if site is not None else None
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"stage '{self.stage}'" if self.stage else "graph"
        if self.site:
            where += f" ({self.site})"
        text = f"[{self.pass_name}] {where}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(self.__dict__)))


class BindError(CompileError):
    """`bind`, `map` or `InputNode` used in a way that cannot make a graph."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("pass_name", "bind")
        super().__init__(message, **kwargs)


class OptionsError(CompileError):
    """A deployment option is unknown or has a bad value."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("pass_name", "validate")
        super().__init__(message, **kwargs)


class TypeMismatchError(CompileError):
    """A producer's annotated output type cannot feed a consumer's annotated parameter."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("pass_name", "typecheck")
        super().__init__(message, **kwargs)


class PackingError(CompileError):
    """The GPU replicas do not fit the cluster spec (the message says what would)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("pass_name", "pack")
        super().__init__(message, **kwargs)


class CapacityError(CompileError):
    """The cluster spec cannot serve the target load of a profile-planned compile (the message
    names the bottleneck stage and what it would need: how many more CPUs or GPUs)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("pass_name", "capacity")
        super().__init__(message, **kwargs)


class DeployError(PipelineError):
    """The plan cannot be deployed where it was sent (e.g. the cluster is too small for it)."""


class InputError(PipelineError):
    """The request payload does not fit the pipeline's input (HTTP 4xx: the caller's fault)."""

    status_code = 422

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        self.message = message
        self.errors = errors or []
        super().__init__(self._render())

    def _render(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(self.__dict__)))


class StageError(PipelineError):
    """A stage raised while serving a request (HTTP 5xx naming the stage)."""

    status_code = 500

    def __init__(
        self,
        stage: str,
        message: str,
        *,
        site: str | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.stage = stage
        self.message = message
        self.site = site
        self.error_type = error_type
        self.request_id = request_id
        self.attempts = attempts  # calls made: 1 + the retries its max_retries allowed
        super().__init__(self._render())

    def _render(self) -> str:
        text = self._where()
        if self.error_type:
            text += f" raised {self.error_type}: {self.message}"
        else:
            text += f" failed: {self.message}"
        return text + self._tries()

    def _where(self) -> str:
        return f"stage '{self.stage}'" + (f" ({self.site})" if self.site else "")

    def _tries(self) -> str:
        return f" (after {self.attempts} attempts)" if getattr(self, "attempts", 1) > 1 else ""

    def with_attempts(self, attempts: int) -> StageError:
        """This error, saying how many calls were made before it surfaced."""
        self.attempts = attempts
        self.args = (self._render(),)
        return self

    def at_element(self, index: int) -> StageError:
        """This error, saying which element of a map's list its call was for (once)."""
        prefix = f"element {index} of the map: "
        if not self.message.startswith("element "):
            self.message = prefix + self.message
            self.args = (self._render(),)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), dict(self.__dict__)))


class StageTimeoutError(StageError):
    """A stage's call (or, for a streaming stage, the wait for its next chunk) ran past the
    stage's `timeout_s` (HTTP 504 naming the stage)."""

    status_code = 504

    def __init__(self, stage: str, timeout_s: float, *, site: str | None = None,
                 request_id: str | None = None, attempts: int = 1,
                 waiting_for: str = "result") -> None:
        self.timeout_s = timeout_s
        super().__init__(stage, f"no {waiting_for} within timeout_s={timeout_s:g}", site=site,
                         error_type="StageTimeoutError", request_id=request_id,
                         attempts=attempts)

    def _render(self) -> str:
        return f"{self._where()} timed out: {self.message}{self._tries()}"


class DeadlineError(StageTimeoutError):
    """The request's own deadline passed (its graph's `timeout_s`, or the shorter one its
    caller gave): its calls still running were cancelled (HTTP 504 naming them)."""

    def __init__(self, pipeline: str, timeout_s: float, running: list[str], *,
                 request_id: str | None = None, left: bool = False) -> None:
        self.running = running
        self.timeout_s = timeout_s
        message = (f"the request's deadline passed ({timeout_s:.3g} s were left when the call "
                   "began)" if left else f"the request's deadline of {timeout_s:g} s passed")
        StageError.__init__(self, running[0] if running else pipeline, message,
                            error_type="DeadlineError", request_id=request_id)

    def _render(self) -> str:
        still = ", ".join(self.running) if self.running else "nothing"
        return f"{self.message} with {still} still running (cancelled)"


class EdgeTypeError(StageError):
    """Strict mode: a value crossing an edge does not match the consumer's annotation."""


def _rebuild(cls: type[Any], state: dict[str, Any]) -> Exception:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, err._render())
    return err
