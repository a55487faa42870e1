"""`servegraph doctor APP` and `servegraph top APP`: a live application's stages from its
metrics, Serve's status and its plan (`serving.doctor`), as a table and findings, as JSON
(`--json`), or as a table that refreshes (`top`, rich's `Live`; `--once` prints one frame)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import UsageError, connect, load_profile

if TYPE_CHECKING:
    from rich.table import Table

    from ..serving.doctor import Report


def cmd_doctor(args: argparse.Namespace) -> int:
    report = examine(args)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
        return 0
    from rich.console import Console

    console = Console(width=max(120, Console().width))
    console.print(stage_table(report))
    print(summary(report))  # one line a finding, unwrapped, for grep and copy-paste
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(width=max(120, Console().width))
    if args.once:
        console.print(stage_table(examine(args)))
        return 0
    import time

    with Live(stage_table(examine(args)), console=console, screen=False) as live:
        try:
            while True:
                time.sleep(args.interval)  # the refresh period the user asked for
                live.update(stage_table(examine(args)))
        except KeyboardInterrupt:
            return 0


def examine(args: argparse.Namespace) -> Report:
    """The report of `args.name` on the cluster at `--address` (or `RAY_ADDRESS`)."""
    from ..serving import doctor

    profile = load_profile(args.profile) if getattr(args, "profile", None) else None
    connect(args.address)
    try:
        return doctor.examine(args.name, window_s=getattr(args, "window", None) or 0.0,
                              profile=profile, thresholds=doctor.Thresholds(
                                  cold_start_s=getattr(args, "cold_start_s", 10.0)))
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def stage_table(report: Report) -> Table:
    """Per stage: replicas, calls, p50/p99, utilisation, in flight, queued, batch fill."""
    from rich.table import Table

    table = Table(title=f"{report.application}: stages", title_justify="left")
    profiled = any(row.profiled_ms is not None for row in report.stages)
    for column in ("stage", "replicas", "calls", "p50 ms", "p99 ms", "busy", "in flight",
                   "queued", "batch fill", "errors", "cold start s",
                   *(["profiled ms"] if profiled else [])):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in report.stages:
        mark = " *" if row.stage == report.bottleneck else ""
        table.add_row(row.stage + mark, row.replicas, str(row.calls), _num(row.p50_ms),
                      _num(row.p99_ms), _pct(row.utilisation), f"{row.in_flight:.0f}",
                      f"{row.queued:.0f}", _pct(row.batch_fill), str(row.errors),
                      _num(row.cold_start_s), *([_num(row.profiled_ms)] if profiled else []))
    return table


def summary(report: Report) -> str:
    lines = [f"{name}: end to end p50 {_num(f['p50_ms'])} ms, p99 {_num(f['p99_ms'])} ms"
             for name, f in sorted(report.pipelines.items())]
    lines.append(f"bottleneck: {report.bottleneck or 'none (no stage busy)'}")
    lines.extend(f"- {finding.line()}" for finding in report.findings)
    if not report.findings:
        lines.append("no findings")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
