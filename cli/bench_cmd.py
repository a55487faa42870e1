"""`servegraph bench URL|NAME`: load a running route (a URL, or a servegraph application's
name), with one body for every request (`--payload`) or a mix of checked cases (`--cases`).
The load generator itself is `bench`, imported only when the verb runs (it brings httpx)."""

from __future__ import annotations

import argparse
import asyncio
import json

from .common import UsageError, connect


def cmd_bench(args: argparse.Namespace) -> int:
    if (args.payload is None) == (args.cases is None):
        raise UsageError("give one of --payload (one body for every request) or --cases")
    args.url = route_url(args)
    if args.cases is not None:
        return bench_cases(args)
    return bench_payload(args)


def route_url(args: argparse.Namespace) -> str:
    """The URL to load: `url` as given, or, given an application's name, its route on the
    cluster it runs on (`--address`, else RAY_ADDRESS), read from Serve (`sg.connect`)."""
    if "://" in args.url:
        return str(args.url)
    from ..serving import connect as connect_app

    connect(args.address)
    return connect_app(args.url).url


def bench_cases(args: argparse.Namespace) -> int:
    """Cycle through the `--cases` file and check every answer; exit 1 when a request got no
    response at all (a wrong answer is in the report, and in `--json`, not the exit code)."""
    from .bench import Case, load_cases

    try:
        with open(args.cases) as lines:
            cases = [Case.parse(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise UsageError(f"--cases {args.cases}: {exc}") from None
    if not cases:
        raise UsageError(f"--cases {args.cases}: no cases in it")
    checked = asyncio.run(load_cases(
        args.url, cases, requests=args.requests, concurrency=args.concurrency,
        timeout_s=args.timeout, progress_every=args.progress))
    print(checked.render(), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(checked.summary(), out, indent=2)
    return 0 if checked.lost == 0 else 1


def bench_payload(args: argparse.Namespace) -> int:
    """Send `--payload` every time; exit 1 unless every request got an HTTP response."""
    from .bench import load

    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None
    report = asyncio.run(load(args.url, payload, requests=args.requests,
                              concurrency=args.concurrency, timeout_s=args.timeout))
    print(report.render())
    return 0 if report.answered == args.requests else 1
