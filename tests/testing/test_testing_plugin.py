"""servegraph's pytest plugin, run on small test files through pytest's `pytester`: executor
selection, golden files and `--servegraph-update-golden`, traces in failure reports."""

from __future__ import annotations

import pytest

GRAPH_TEST = '''
import servegraph as sg


@sg.deployment
def {stage}(text: str) -> str:
    return text.upper()


def test_golden(golden):
    with sg.InputNode() as inp:
        out = {stage}.bind(inp.text)
    golden.check(sg.Graph(out, name="shout"), "shout")
'''


@pytest.fixture(autouse=True)
def quiet(pytester: pytest.Pytester) -> None:
    """The inner runs' settings, as the repository's own."""
    pytester.makeini("""
        [pytest]
        asyncio_default_fixture_loop_scope = function
        filterwarnings =
            ignore:Module already imported so cannot be rewritten. __main__
    """)


def test_update_golden_writes_the_files_and_a_change_to_the_graph_fails(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_graph=GRAPH_TEST.format(stage="shout"))
    missing = pytester.runpytest("-p", "no:cacheprovider")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*golden*shout.plan.json does not exist: run pytest with "
                                  "--servegraph-update-golden to accept the new version"])

    pytester.runpytest("--servegraph-update-golden").assert_outcomes(passed=1)
    golden = pytester.path / "golden"
    assert sorted(path.name for path in golden.iterdir()) == ["shout.mmd", "shout.plan.json"]
    plan = (golden / "shout.plan.json").read_text()
    assert '"site": "test_graph.py: out = shout.bind(inp.text)"' in plan
    assert (golden / "shout.mmd").read_text().startswith("flowchart LR\n")
    pytester.runpytest().assert_outcomes(passed=1)

    # lines moving (an edit above the graph) change nothing: no line numbers are kept
    pytester.makepyfile(test_graph="\n\n\n" + GRAPH_TEST.format(stage="shout"))
    pytester.runpytest().assert_outcomes(passed=1)

    pytester.makepyfile(test_graph=GRAPH_TEST.format(stage="yell"))
    changed = pytester.runpytest()
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines([
        "*shout.plan.json differs from the pipeline compiled now:",
        "*--- shout.plan.json (golden)", "*+++ shout.plan.json (now)",
        '*-      "label": "shout",', '*+      "label": "yell",',
        "*run pytest with --servegraph-update-golden to accept the new version"])
    pytester.runpytest("--servegraph-update-golden").assert_outcomes(passed=1)
    assert '"label": "yell"' in (golden / "shout.plan.json").read_text()
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_failing_test_reports_the_trace_of_its_requests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_wrong='''
        import servegraph as sg


        @sg.deployment
        def inc(x: int) -> int:
            return x + 1


        @sg.deployment
        def double(x: int) -> int:
            return 2 * x


        def test_twice(pipeline):
            with sg.InputNode() as inp:
                out = double.bind(inc.bind(inp.x))
            assert pipeline.run(sg.Graph(out, name="twice"), {"x": 1}) == 5
    ''')
    result = pytester.runpytest("--servegraph-executors=local")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*- servegraph trace -*",
        "1 traced request(s) on local",
        "trace of 'twice' on local",
        "#  node  op * label * stage * start ms  took ms  inputs  output",
        "1  n0    input * input * - * -       {'x': 1}",
        "2  n1    select  input.x * - * -       1",
        "3  n2    call    inc * inc * 1       2",
        "4  n3    call    double * double * 2       4",
    ])


def test_executors_are_chosen_by_option_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_choice='''
        import pytest


        def test_every(pipeline):
            assert pipeline.executor in ("local", "local-strict", "ray")


        @pytest.mark.servegraph_executors("local-strict", "ray")
        def test_two(pipeline):
            assert pipeline.strict or pipeline.on_ray
    ''')

    def collected(*args: str) -> list[str]:
        result = pytester.runpytest("--co", "-q", *args)
        return [line for line in result.outlines if "::" in line]

    assert collected() == [
        "test_choice.py::test_every[local]", "test_choice.py::test_every[local-strict]",
        "test_choice.py::test_every[ray]", "test_choice.py::test_two[local-strict]",
        "test_choice.py::test_two[ray]"]
    assert collected("-m", "not ray") == [
        "test_choice.py::test_every[local]", "test_choice.py::test_every[local-strict]",
        "test_choice.py::test_two[local-strict]"]
    assert collected("--servegraph-executors=local") == [
        "test_choice.py::test_every[local]", "test_choice.py::test_two[NOTSET]"]
    ran = pytester.runpytest("--servegraph-executors=local,local-strict", "-rs")
    ran.assert_outcomes(passed=3)
    bad = pytester.runpytest("--servegraph-executors=local,gpu")
    bad.stderr.fnmatch_lines(["*--servegraph-executors: unknown executor gpu; choose from "
                              "local, local-strict, ray"])


def test_a_projects_own_pipeline_fixture_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own='''
        import pytest


        @pytest.fixture
        def pipeline():
            return "mine"


        def test_mine(pipeline):
            assert pipeline == "mine"
    ''')
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize("imported_in", ["conftest", "test module"])
def test_rays_own_deprecation_warnings_stay_out_of_a_projects_run(
        pytester: pytest.Pytester, imported_in: str) -> None:
    """Importing `ray.serve` warns 18 times (Ray's config uses pydantic v1 idioms); a project
    with the plugin and no filter of its own sees none of them, whether its conftest or a test
    module imports Ray, while its own deprecations still show."""
    importing = "import ray.serve\n"
    if imported_in == "conftest":
        pytester.makeconftest(importing)
    pytester.makepyfile(test_mine=(importing if imported_in != "conftest" else "") + '''
import warnings


def test_mine():
    warnings.warn("mine", DeprecationWarning)
''')
    # a fresh process: this one imported Ray already, and a module warns only when imported
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    assert "Pydantic" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*DeprecationWarning: mine"])


STAGES_IN_THE_TEST_FILE = '''
import pytest

import servegraph as sg


@sg.deployment
class Shout:
    def __init__(self, mark: str) -> None:
        self.mark = mark

    def __call__(self, text: str) -> str:
        return text.upper() + self.mark


@sg.deployment(num_replicas=2)
def count(text: str) -> int:
    return len(text)


@pytest.mark.servegraph_executors("ray")
def test_stages_defined_here(pipeline):
    with sg.InputNode() as inp:
        out = [Shout.bind("!").__call__.bind(inp.text), count.bind(inp.text)]
    assert pipeline.run(sg.Graph(out, name="here"), {"text": "hi"}) == ["HI!", 2]
'''


@pytest.mark.ray
def test_stages_defined_in_a_test_module_run_on_ray(pytester: pytest.Pytester) -> None:
    """pytest puts `tests/` on this process's `sys.path` only: the replicas cannot import
    `test_here` by name, so `sg.serve` sends its stages by value."""
    (pytester.mkdir("tests") / "test_here.py").write_text(STAGES_IN_THE_TEST_FILE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_here.py")
    result.assert_outcomes(passed=1)
