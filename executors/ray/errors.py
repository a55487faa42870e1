"""Ray's errors as servegraph's: the `StageError` a replica raised travels inside a Ray error
as its cause; a replica that died is named from the actor name Ray writes into the error.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

from ray.exceptions import ActorDiedError, RayError

from ...errors import PipelineError, StageError


def as_pipeline_error(error: BaseException, where: str, request_id: str | None = None
                      ) -> BaseException:
    """The servegraph error inside a Ray error (a stage's StageError travels as its cause)."""
    if isinstance(error, asyncio.CancelledError):
        return error
    found = find_pipeline_error(error)
    if found is None:
        dead = _dead_stage(error)
        if dead is not None:
            found = StageError(dead, "its replica died before finishing the call; Serve is "
                               "starting another", error_type="ActorDiedError")
        else:
            found = StageError(where, f"{type(error).__name__}: {error}".splitlines()[0],
                               error_type=type(error).__name__)
    if request_id and hasattr(found, "request_id"):
        found.request_id = request_id
    return found


# The name Serve gives a replica actor (`SERVE_REPLICA::<app>#<deployment>#<id>`), which Ray
# writes into an ActorDiedError, also when Serve wraps it as an upstream's death.
_REPLICA_NAME = re.compile(r"SERVE_REPLICA::[^#\s]*#([^#\s]+)#")


def _dead_stage(error: BaseException) -> str | None:
    """The stage whose replica died, when a Ray error in `error`'s chain says so: the called
    stage's own, or an upstream whose unfinished result was passed on."""
    for link in _chain(error):
        if isinstance(link, ActorDiedError) and (match := _REPLICA_NAME.search(str(link))):
            return match.group(1)
    return None


def find_pipeline_error(error: BaseException | None) -> PipelineError | None:
    return next((link for link in _chain(error)
                 if isinstance(link, PipelineError) and not isinstance(link, RayError)), None)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what caused it, each once: a Ray task error's `cause` (the exception its
    task raised), else `__cause__`."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else error.__cause__
