"""How long ``ltvsync sandbox serve --customers N`` takes to start, and how much memory it holds.

Runs the real command in a subprocess, times the first (JSON) output line, then exercises each
emulator once at full size (full Mixpanel export, every engage page, every Zendesk ticket page) with
rate limits off, stops it with SIGTERM and reads the child's peak RSS with ``resource.getrusage``.
Also times world generation in-process.  Prints a Markdown table for bench/RESULTS.md.

Usage: .venv/bin/python bench/sandbox_start.py [--customers 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any


def timed_world(customers: int, seed: int) -> dict[str, float]:
    from ltvsync.sandbox.world import generate_world

    wall, cpu = time.perf_counter(), time.process_time()
    world = generate_world(customers, seed=seed, as_of=datetime(2026, 1, 1, tzinfo=UTC))
    return {
        "world_wall_s": time.perf_counter() - wall,
        "world_cpu_s": time.process_time() - cpu,
        "events": len(world.mixpanel_events),
        "opportunities": len(world.salesforce["Opportunity"]),
        "tickets": len(world.zendesk_tickets),
    }


def _get(url: str, auth: str) -> bytes:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=600) as response:
        data: bytes = response.read()
        return data


def exercise(info: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    mp = info["mixpanel"]
    start = time.perf_counter()
    body = _get(
        f"{mp['base_url']}/api/2.0/export?from_date=2000-01-01&to_date=2100-01-01", mp["api_secret"] + ":"
    )
    out["mixpanel_full_export_s"] = time.perf_counter() - start
    out["mixpanel_export_mb"] = len(body) / 1e6
    start = time.perf_counter()
    first = json.loads(_get(f"{mp['base_url']}/api/2.0/engage", mp["api_secret"] + ":"))
    pages = -(-first["total"] // first["page_size"])
    for page in range(1, pages):
        url = f"{mp['base_url']}/api/2.0/engage?session_id={first['session_id']}&page={page}"
        _get(url, mp["api_secret"] + ":")
    out["mixpanel_engage_all_pages_s"] = time.perf_counter() - start
    zd = info["zendesk"]
    auth = f"{zd['email']}/token:{zd['api_token']}"
    start = time.perf_counter()
    url = f"{zd['base_url']}/api/v2/incremental/tickets/cursor.json?start_time=0"
    while True:
        page = json.loads(_get(url, auth))
        if page["end_of_stream"]:
            break
        url = page["after_url"]
    out["zendesk_all_tickets_s"] = time.perf_counter() - start
    return out


def serve(customers: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "ltvsync.cli", "sandbox", "serve", "--customers", str(customers)]
        command += [
            "--seed",
            str(seed),
            "--json",
            "--no-rate-limits",
            "--config-out",
            os.path.join(tmp, "c.toml"),
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=tmp)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            first_line_s = time.perf_counter() - start
            info = json.loads(line)
            result: dict[str, Any] = {
                "first_json_line_s": first_line_s,
                "reported_startup_s": info["startup_seconds"],
                "rss_after_start_mb": info.get("peak_rss_mb"),
            }
            result.update(exercise(info))
            proc.send_signal(signal.SIGTERM)
            result["exit_code"] = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # ru_maxrss of waited-for children: KiB on Linux (includes the full-export burst above).
    result["peak_rss_after_exercise_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = {**serve(args.customers, args.seed), **timed_world(args.customers, args.seed)}
    print(json.dumps(figures, indent=2))
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"\n| measure ({args.customers:,} customers) | value |\n|---|---|")
    for key, value in figures.items():
        shown = (
            f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        print(f"| {key} | {shown} |")


if __name__ == "__main__":
    main()
