"""servegraph's pytest plugin (registered through the `pytest11` entry point).

Fixtures:
- `pipeline`: a `PipelineTester`; a test taking it runs once per executor (`local`,
  `local-strict`, `ray`). Choose with `--servegraph-executors=local,ray` (the run) and
  `@pytest.mark.servegraph_executors("local", "ray")` (a test). The `ray` runs carry the `ray`
  marker, so `-m "not ray"` deselects them.
- `servegraph_ray`: one local Ray with Serve per pytest session (started on first use,
  stopped at the end even on failure), listening on a free port, which it yields. Its logical
  GPUs let GPU stages be scheduled on a machine without one. With `RAY_ADDRESS` set, it
  connects to that cluster instead and leaves it running.
- `servegraph_grpc_port`: the port where that Serve's gRPC proxy serves every servegraph
  graph (`plan.to_proto()` is the service).
- `golden`: `golden.check(graph_or_plan, "name")` compares the plan and its Mermaid diagram
  with `golden/name.plan.json` and `golden/name.mmd` beside the test module;
  `--servegraph-update-golden` writes them instead.

A failing test that ran requests through `pipeline` gets their traces (every node's inputs,
output and timing) as a "servegraph trace" section of its report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .golden import Golden
from .tester import EXECUTORS, PipelineTester

TESTER = pytest.StashKey[PipelineTester]()
RAY_CPUS = 16
RAY_GPUS = 4  # logical: fractional GPU scheduling needs no GPU
# deprecation warnings attributed to Ray's own modules (pydantic's point at Ray's lines)
RAY_WARNINGS = "ignore::DeprecationWarning:ray.*"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("servegraph")
    group.addoption("--servegraph-executors", default=",".join(EXECUTORS),
                    help="executors the `pipeline` fixture runs each test on, comma-separated "
                    f"(default: {','.join(EXECUTORS)})")
    group.addoption("--servegraph-update-golden", action="store_true", default=False,
                    help="write the golden files that `golden.check` compares with")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Iterator[None]:
    """Ray's deprecation warnings are Ray's to fix, not the project's: importing `ray.serve`
    alone warns 18 times (`PydanticDeprecatedSince20`, from Ray's pydantic v1-style config).
    Filtered from here, before pytest's warnings plugin reads the filters to load the
    conftests (a conftest may import Ray), so they apply to every phase after it too; the
    project's own `filterwarnings` and `-W` still decide everything else."""
    early_config.addinivalue_line("filterwarnings", RAY_WARNINGS)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    _names(config.getoption("servegraph_executors"), "--servegraph-executors")
    config.addinivalue_line(
        "markers", "servegraph_executors(*names): the executors (local, local-strict, ray) a "
        "test taking the `pipeline` fixture runs on")
    config.addinivalue_line(
        "markers", "ray: needs the shared Ray instance (started once per pytest session)")


def _names(value: str | tuple[str, ...], where: str) -> list[str]:
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [n for n in names if n and n not in EXECUTORS]
    if unknown:
        raise pytest.UsageError(f"{where}: unknown executor {', '.join(unknown)}; "
                                f"choose from {', '.join(EXECUTORS)}")
    return [n for n in names if n]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pipeline" not in metafunc.fixturenames or not _ours(metafunc):
        return
    chosen = _names(metafunc.config.getoption("servegraph_executors"), "--servegraph-executors")
    marker = metafunc.definition.get_closest_marker("servegraph_executors")
    if marker is not None:
        wanted = _names(tuple(marker.args), f"{metafunc.definition.nodeid}: "
                        "@pytest.mark.servegraph_executors")
        chosen = [name for name in wanted if name in chosen]
    metafunc.parametrize("pipeline", [
        pytest.param(name, id=name, marks=[pytest.mark.ray] if name == "ray" else [])
        for name in chosen], indirect=True)


def _ours(metafunc: pytest.Metafunc) -> bool:
    """The `pipeline` the test gets is this plugin's (a project's own fixture of that name
    is left alone)."""
    definitions = getattr(metafunc, "_arg2fixturedefs", {}).get("pipeline")
    if not definitions:
        return True
    return getattr(definitions[-1].func, "__module__", __name__) == __name__


@pytest.fixture
def pipeline(request: pytest.FixtureRequest) -> Iterator[PipelineTester]:
    """The executor this run of the test uses; see `servegraph.testing.PipelineTester`."""
    name = getattr(request, "param", "local")
    if name == "ray":
        request.getfixturevalue("servegraph_ray")
    tester = PipelineTester(name)
    request.node.stash[TESTER] = tester
    try:
        yield tester
    finally:
        tester.close()


@pytest.fixture(scope="session")
def servegraph_ray() -> Iterator[int]:
    """One Ray with Serve for the session; yields Serve's HTTP port."""
    from ..serving.session import serve_session

    with serve_session(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS) as port:
        yield port


@pytest.fixture(scope="session")
def servegraph_grpc_port(servegraph_ray: int) -> int:
    """The port where the session's Serve serves every servegraph graph over gRPC (skips the
    test on a `RAY_ADDRESS` cluster whose Serve was started without it)."""
    from ..serving.launch import serve_grpc_port

    port = serve_grpc_port()
    if port is None:
        pytest.skip("the running Serve has no servegraph gRPC servicer")
    return port


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """Golden files in `golden/` beside the test module."""
    return Golden(Path(request.path).parent / "golden",
                  update=request.config.getoption("servegraph_update_golden"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]
                              ) -> Iterator[Any]:
    report = yield
    if report.when == "call" and report.failed:
        tester = item.stash.get(TESTER, None)
        if tester is not None and tester.traces:
            report.sections.append(("servegraph trace", tester.report()))
    return report
