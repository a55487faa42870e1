"""The `bench --cases` report (`cli/bench.py`), checked on literal responses: what it prints and
what its `--json` summary holds."""

from __future__ import annotations

import httpx

from servegraph.cli.bench import Case, CheckedReport

GOOD, BAD = Case(body={"x": 1}, expect=10), Case(raw="{", bad=True)


def answered(report: CheckedReport, case: Case, index: int, status: int, body: object) -> None:
    report.good += not case.bad
    report.bad += case.bad
    report.latencies_ms.append(1.0)
    report.check(case, f"r{index}", httpx.Response(status, json=body), at_s=0.1 * index)


def test_the_printed_report_counts_correct_and_wrong_answers() -> None:
    report = CheckedReport("http://127.0.0.1:8000/diamond", requests=6, concurrency=2,
                           seconds=0.5)
    for index, (case, status, body) in enumerate([
            (GOOD, 200, 10), (GOOD, 200, 10), (GOOD, 200, 11), (BAD, 400, {"error": "json"}),
            (BAD, 200, 10), (GOOD, 500, "boom")]):
        answered(report, case, index, status, body)
    lines = report.render().splitlines()
    assert lines[0] == "http://127.0.0.1:8000/diamond: 6 requests at concurrency 2 in 0.50 s"
    assert lines[-2:] == [
        "  responses: 200: 4, 400: 1, 500: 1",
        "  checked: 2 of 4 good requests correct, 2 wrong (1 a 5xx naming no stage); "
        "1 of 2 bad requests not answered with a 4xx",
    ]


def test_the_json_summary_says_how_many_were_wrong_when_it_lists_only_some() -> None:
    report = CheckedReport("http://127.0.0.1:8000/diamond", requests=30, concurrency=4,
                           seconds=1.0)
    for index in range(30):
        answered(report, GOOD, index, 200, index)
    summary = report.summary()
    assert (summary["correct"], len(summary["wrong"]), summary["wrong_total"]) == (1, 20, 29)
    assert summary["wrong"][0] == "r0: 200 0"
    assert (summary["bad_not_4xx_total"], summary["unnamed_5xx_total"]) == (0, 0)
    assert report.render().splitlines()[-1] == (
        "  checked: 1 of 30 good requests correct, 29 wrong; 0 of 0 bad requests not "
        "answered with a 4xx")
