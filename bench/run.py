"""Every performance figure of docs/performance.md, each beside its same-run baseline and goal.

Run from the repository root (DATABASE_URL as for the other benches, or the embedded server):

    .venv/bin/python bench/run.py [--runs 3] [--only rush,single,...] [--workers 2]

Each figure's script runs ``--runs`` times in a subprocess; the script's last line is its
summary (``name: key=value ...``). This prints, per figure, the median of every value over
the runs, the baseline measured in the same run where there is one, the ratio, and the
goal with PASS or FALL SHORT. The machine is shared and noisy, which is why every goal that
can be is a ratio to a baseline taken in the same run, and why medians are reported.

Figures (the script, and what it is run with):

- rush:     booking_rush.py, 2000 attempts on 400 pool slots by 64 clients, one worker;
            baseline: the bare FastAPI + asyncpg app (bare_server.py), same run, same clients
- rush2:    the same with --workers 2 for service and bare app; also 1 -> 2 worker scaling
- single:   booking_rush.py, one client, one booking at a time (300 attempts on 300 slots)
- push:     push.py, 10,000 slots in one request over HTTP; baseline COPY / upsert of the rows
- delivery: delivery.py, events/s to local receivers, commit -> delivery p99, resume after an outage
- search:   availability.py's quiet phase: GET /v1/pool/slots?limit=20 against GET /v1/me
- feed:     availability.py: the city x 7 days feed during a rush against GET /v1/me in a rush
- reports:  reports.py, the whole-province compliance report
- release:  release.py, 200,000 slots returned at public_at with their events
- pgbouncer: pgbouncer.py, two replicas through PgBouncer (transaction pooling), oversold
- waitlist: waitlist.py, 1,000 residents waiting on a fully booked department-day, 50
            cancellations: offers made, accepted, declined and lapsed, double assignments,
            cancel -> ``waitlist.offered`` at the receiver p50 / p99 (beside delivery's goal)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Figure:
    name: str
    script: str
    options: tuple[str, ...]
    lines: Callable[[dict[str, float]], list[str]]
    timeout: float = 1800


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FALL SHORT"


def rush_lines(label: str) -> Callable[[dict[str, float]], list[str]]:
    def lines(v: dict[str, float]) -> list[str]:
        return [
            f"{label} attempts/s: {v['attempts/s']:.1f} | bare app {v['baseline_http']:.1f} | "
            f"ratio {v['ratio']:.2f} | goal >= 0.6 x bare: {verdict(v['ratio'] >= 0.6)}",
            f"{label} p99: {v['p99_ms']:.0f} ms | bare app {v['baseline_p99_ms']:.0f} ms | "
            f"ratio {v['p99_ratio']:.2f} | goal <= 1.5 x bare: {verdict(v['p99_ratio'] <= 1.5)}",
            f"{label} oversold: {v['oversold']:.0f} | goal 0 in every run: {verdict(v['oversold_max'] == 0)}",
        ]

    return lines


def single_lines(v: dict[str, float]) -> list[str]:
    return [
        f"one client, one booking at a time p50: {v['p50_ms']:.1f} ms | bare app {v['baseline_p50_ms']:.1f} ms | "
        f"ratio {v['p50_ratio']:.2f} | goal <= 2 x bare: {verdict(v['p50_ratio'] <= 2)}"
    ]


def push_lines(v: dict[str, float]) -> list[str]:
    return [
        f"HIS push, 10,000 slots per request: {v['slots_per_s']:,.0f} slots/s | COPY {v['copy_rows_per_s']:,.0f} "
        f"rows/s, upsert {v['upsert_rows_per_s']:,.0f} rows/s | ratio to upsert {v['ratio_to_upsert']:.2f} | "
        f"goal >= 50,000 slots/s: {verdict(v['slots_per_s'] >= 50_000)}"
    ]


def delivery_lines(v: dict[str, float]) -> list[str]:
    return [
        f"webhook delivery: {v['events_per_s']:,.0f} events/s | - | - | goal >= 1,000: "
        f"{verdict(v['events_per_s'] >= 1000)}",
        f"commit -> delivery p99: {v['delay_p99_ms']:.0f} ms | - | - | goal < 1,000 ms: "
        f"{verdict(v['delay_p99_ms'] < 1000)}",
        f"resume after a receiver outage: {v['resume_s']:.1f} s after its return | - | - | goal within "
        f"seconds (<= 5 s): {verdict(v['resume_s'] <= 5)}",
    ]


def availability_lines(v: dict[str, float]) -> list[str]:
    return [
        f"slot search GET /v1/pool/slots?limit=20 p99 ({v['hospitals']:.0f} hospitals, {v['slots']:,.0f} slots): "
        f"{v['search_p99_ms']:.1f} ms | /v1/me {v['quiet_floor_p99_ms']:.1f} ms | ratio {v['search_ratio']:.2f} | "
        f"goal <= 2 x floor: {verdict(v['search_ratio'] <= 2)}",
        f"availability feed p99 during a rush: {v['feed_p99_ms']:.1f} ms | /v1/me in a rush {v['floor_p99_ms']:.1f} "
        f"ms | ratio {v['feed_ratio']:.2f} | goal <= 1.5 x floor: {verdict(v['feed_ratio'] <= 1.5)}",
    ]


def reports_lines(v: dict[str, float]) -> list[str]:
    return [
        f"whole-province compliance report p99 ({v['slots']:,.0f} slots): {v['p99_ms']:.1f} ms | /v1/me "
        f"{v['floor_p99_ms']:.1f} ms | ratio {v['p99_ms'] / v['floor_p99_ms']:.2f} | goal < 100 ms: "
        f"{verdict(v['p99_ms'] < 100)}"
    ]


def release_lines(v: dict[str, float]) -> list[str]:
    return [
        f"release at public_at, {v['slots']:,.0f} slots incl. events: {v['seconds']:.2f} s | one UPDATE "
        f"{v['baseline_update_s']:.2f} s | ratio {v['ratio']:.2f} | goal < 3 s: {verdict(v['seconds'] < 3)}"
    ]


def pgbouncer_lines(v: dict[str, float]) -> list[str]:
    return [
        f"two replicas through PgBouncer (transaction pooling): {v['attempts/s']:.1f} attempts/s, p99 "
        f"{v['p99_ms']:.0f} ms, {v['client_connections']:.0f} client -> {v['server_connections_max']:.0f} server "
        f"connections | - | - | goal 0 oversold: {verdict(v['oversold_max'] == 0)}"
    ]


def waitlist_lines(v: dict[str, float]) -> list[str]:
    # The issue sets no goal for the offer's latency: it is shown beside the delivery figure's
    # goal (commit -> delivery p99 < 1 s), which it includes (the offer commits with the cancel).
    return [
        f"waiting list, {v['waiting']:,.0f} waiting, {v['cancellations']:.0f} cancellations: "
        f"{v['offers_made']:.0f} offers made, {v['accepted']:.0f} accepted, {v['declined']:.0f} declined, "
        f"{v['lapsed']:.0f} lapsed | - | - | goal 0 double assignments in every run: "
        f"{verdict(v['double_assignments_max'] == 0)}",
        f"cancel -> waitlist.offered at the receiver p50 {v['offer_p50_ms']:.0f} ms, p99 "
        f"{v['offer_p99_ms']:.0f} ms | - | - | reference: commit -> delivery p99 < 1,000 ms: "
        f"{verdict(v['offer_p99_ms'] < 1000)}",
    ]


RUSH = ("--clients", "2000", "--slots", "400", "--concurrency", "64")
FIGURES = {
    "rush": Figure("rush", "booking_rush.py", RUSH, rush_lines("booking rush (1 worker)")),
    "rush2": Figure(
        "rush2", "booking_rush.py", (*RUSH, "--workers", "2"), rush_lines("booking rush (2 workers)")
    ),
    "single": Figure(
        "single",
        "booking_rush.py",
        ("--clients", "300", "--slots", "300", "--concurrency", "1"),
        single_lines,
    ),
    "push": Figure("push", "push.py", (), push_lines),
    "delivery": Figure("delivery", "delivery.py", (), delivery_lines),
    "availability": Figure(
        "availability",
        "availability.py",
        (
            "--floor",
            "--cities",
            "10",
            "--hospitals-per-city",
            "50",
            "--slots-per-session",
            "4",
            "--days",
            "25",
        ),
        availability_lines,
    ),
    "reports": Figure("reports", "reports.py", (), reports_lines),
    "release": Figure("release", "release.py", (), release_lines),
    "pgbouncer": Figure("pgbouncer", "pgbouncer.py", (), pgbouncer_lines),
    "waitlist": Figure("waitlist", "waitlist.py", (), waitlist_lines),
}


def summary(output: str) -> dict[str, float]:
    """The values of a script's summary, its last ``name: key=value ...`` line (non-numeric dropped)."""
    found = [line for line in output.splitlines() if re.match(r"^[\w-]+: \S+=\S", line)]
    if not found:
        return {}
    last = found[-1]
    _, _, pairs = last.partition(": ")
    values: dict[str, float] = {}
    for pair in pairs.split():
        key, _, value = pair.partition("=")
        try:
            values[key] = float(value.replace(",", ""))
        except ValueError:
            continue
    if "integrity=FAIL" in last:
        values["integrity_failed"] = 1
    return values


def measure(figure: Figure, runs: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    results = []
    for n in range(1, runs + 1):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(BENCH / figure.script), *figure.options],
            capture_output=True,
            text=True,
            timeout=figure.timeout,
        )
        if done.returncode != 0:
            print(f"  {figure.name} run {n}: exit status {done.returncode}", file=sys.stderr)
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
        values = summary(done.stdout)
        print(
            f"  {figure.name} run {n} ({time.monotonic() - started:.0f} s): {values}",
            file=sys.stderr,
            flush=True,
        )
        results.append(values)
    medians = {key: statistics.median(r[key] for r in results if key in r) for key in results[0]}
    if "oversold" in medians:
        medians["oversold_max"] = max(r.get("oversold", 0) for r in results)
    if "double_assignments" in medians:
        medians["double_assignments_max"] = max(r.get("double_assignments", float("inf")) for r in results)
    return medians, results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per figure; medians are reported (default 3)"
    )
    parser.add_argument("--only", help=f"comma-separated figures (default all): {', '.join(FIGURES)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figures: {unknown}")
    measured: dict[str, dict[str, float]] = {}
    lines: list[str] = []
    for name in names:
        medians, _ = measure(FIGURES[name], args.runs)
        measured[name] = medians
        try:
            lines += FIGURES[name].lines(medians)
        except KeyError as missing:
            lines.append(f"{name}: no figure ({missing} missing from its summary line)")
        if medians.get("integrity_failed"):
            lines.append(f"{name}: an integrity check FAILED in at least one run")
    if "rush" in measured and "rush2" in measured:
        one, two = measured["rush"]["attempts/s"], measured["rush2"]["attempts/s"]
        bare_one, bare_two = measured["rush"]["baseline_http"], measured["rush2"]["baseline_http"]
        lines.append(
            f"1 -> 2 workers: slotpool x{two / one:.2f} ({one:.0f} -> {two:.0f} attempts/s) | bare app "
            f"x{bare_two / bare_one:.2f} | - | on this machine's 2 cores, shared with the clients and PostgreSQL"
        )
    print(f"\nmedians of {args.runs} run(s) each:")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
