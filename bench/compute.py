"""Benchmark the whole compute stage at 1,000,000 customers and ~10,000,000 purchases, SQLite and Postgres.

For each store (a SQLite file; a fresh Postgres schema on the local server) this script runs two child
processes of itself, so each phase's peak memory is its own:

1. ``--phase load``: draws a BG/NBD-like population with numpy (transaction rate ~ Gamma(r, alpha)
   per week, drop-out after each repeat ~ Beta(a, b), spend ~ Gamma-Gamma; first purchases spread
   over two years), and loads customers, Salesforce identities (``customer_id`` set) and purchases
   (``customer_id`` and ``amount_base`` set) with ``Store.upsert_many``, 100,000 customers per
   transaction.  Loading time is reported separately from the compute stage.
2. ``--phase compute``: the pipeline's compute stage, each step in its own transaction as
   ``pipeline._compute`` runs it: ``resolve_identities``, ``compute_ltv(..., refit=True)``, then
   every compute hook (``tags_hook``, ``cohorts_hook``), then a second ``compute_ltv`` with the
   stored fit (the steady state between weekly refits).  Inside ``compute_ltv`` the metrics SQL,
   the model fit, CLV, row building and the ``customer_metrics`` upsert are timed by wrapping the
   functions ``ltvsync.core.compute`` calls (bench-only instrumentation, no change to the code).

Peak memory per step is the process's VmHWM, reset before each step through
``/proc/self/clear_refs`` (Linux >= 4.0); elsewhere the process-wide ``ru_maxrss`` is reported.
Prints the figures and replaces the ``## Compute stage`` section of ``bench/RESULTS.md``.

Usage: ``python bench/compute.py [--customers N] [--stores sqlite,postgres] [--no-write]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import scipy
import sqlalchemy
from sqlalchemy.engine import make_url

from ltvsync.config.settings import Settings
from ltvsync.core.store import Store, normalize_url

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
CHUNK = 100_000
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Compute stage"
# The extra run after the stage: re-scoring with the stored fit, as cycles between weekly refits do.
STEADY_STEP = "compute_ltv (stored fit)"
PG_URL = os.environ.get("LTVSYNC_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Population parameters (rates per week): ~10.2 purchases per customer over a two-year window.
R, ALPHA, A, B = 2.0, 6.0, 1.0, 12.0
P, Q, GAMMA = 6.0, 4.0, 25.0
WINDOW_DAYS = 730
SECONDS_PER_DAY = 86_400.0
WEEK = 7 * SECONDS_PER_DAY


# -- memory -------------------------------------------------------------------------------------


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_mb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the process started (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- synthetic population -----------------------------------------------------------------------


def draw_chunk(rng: np.random.Generator, first_id: int, n: int) -> dict[str, np.ndarray]:
    """BG/NBD purchase times and Gamma-Gamma amounts for customers ``first_id .. first_id+n-1``."""
    now = AS_OF.timestamp()
    first = now - rng.uniform(SECONDS_PER_DAY, WINDOW_DAYS * SECONDS_PER_DAY, n)
    signup = first - np.where(rng.random(n) < 0.85, 0.0, rng.exponential(2 * SECONDS_PER_DAY, n))
    big_t = (now - first) / WEEK
    lam = rng.gamma(R, 1.0 / ALPHA, n)
    drop = rng.beta(A, B, n)
    nu = rng.gamma(Q, 1.0 / GAMMA, n)
    # As in the sandbox world: N ~ Poisson(lambda T) potential purchases at uniform times, death right
    # after the K-th repeat (K ~ Geometric(p)); the observed repeats are the first min(N, K).
    big_n = rng.poisson(lam * big_t)
    x = np.minimum(big_n, rng.geometric(drop))
    owner = np.repeat(np.arange(n), big_n)
    u = rng.random(owner.size) * big_t[owner]
    order = np.lexsort((u, owner))
    owner, u = owner[order], u[order]
    rank = np.arange(owner.size) - (np.cumsum(big_n) - big_n)[owner]
    keep = rank < x[owner]
    owner, when = owner[keep], first[owner[keep]] + u[keep] * WEEK
    owner = np.concatenate([np.arange(n), owner])
    when = np.concatenate([first, when])
    amount = np.round(rng.gamma(P, 1.0 / nu[owner]), 2)
    return {
        "ids": np.arange(first_id, first_id + n),
        "signup": signup,
        "first": first,
        "owner": owner + first_id,
        "when": np.minimum(when, now - 1.0),
        "amount": amount,
    }


def _datetimes(epoch_seconds: np.ndarray) -> list[datetime]:
    micros = (epoch_seconds * 1e6).astype(np.int64).astype("datetime64[us]")
    return [d.replace(tzinfo=UTC) for d in micros.astype(object)]


def load(store: Store, n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    counts = {"customers": 0, "identities": 0, "purchases": 0}
    seconds = {"draw + rows": 0.0, "customer": 0.0, "identity": 0.0, "purchase": 0.0}
    for lo in range(1, n + 1, CHUNK):
        started = time.perf_counter()
        c = draw_chunk(rng, lo, min(CHUNK, n + 1 - lo))
        signup, first = _datetimes(c["signup"]), _datetimes(c["first"])
        ids = c["ids"].tolist()
        customers = [
            {
                "id": cid,
                "email": f"c{cid}@example.com",
                "name": None,
                "customer_since": s,
                "first_purchase_at": f,
                "created_at": s,
                "updated_at": f,
            }
            for cid, s, f in zip(ids, signup, first, strict=True)
        ]
        identities = [
            {
                "source": "salesforce",
                "source_id": f"003{cid:015d}",
                "customer_id": cid,
                "email": f"c{cid}@example.com",
                "name": None,
                "created_at": s,
                "updated_at": f,
            }
            for cid, s, f in zip(ids, signup, first, strict=True)
        ]
        when = _datetimes(c["when"])
        purchases = [
            {
                "source": "salesforce",
                "source_id": f"006{k:015d}",
                "customer_source_id": f"003{cid:015d}",
                "customer_email": None,
                "customer_id": cid,
                "amount": amount,
                "currency": "USD",
                "amount_base": amount,
                "purchased_at": at,
                "updated_at": at,
            }
            for k, cid, amount, at in zip(
                range(counts["purchases"], counts["purchases"] + len(when)),
                c["owner"].tolist(),
                [Decimal(f"{v:.2f}") for v in c["amount"].tolist()],
                when,
                strict=True,
            )
        ]
        seconds["draw + rows"] += time.perf_counter() - started
        with store.transaction() as conn:
            for table, rows, key in (
                ("customer", customers, ("id",)),
                ("identity", identities, ("source", "source_id")),
                ("purchase", purchases, ("source", "source_id")),
            ):
                started = time.perf_counter()
                store.upsert_many(conn, table, rows, key)
                seconds[table] += time.perf_counter() - started
        counts["customers"] += len(customers)
        counts["identities"] += len(identities)
        counts["purchases"] += len(purchases)
        print(
            f"  loaded {counts['customers']:,} customers, {counts['purchases']:,} purchases", file=sys.stderr
        )
    if store.dialect == "postgresql":
        started = time.perf_counter()
        with store.transaction() as conn:
            conn.exec_driver_sql("ANALYZE")
        seconds["analyze"] = time.perf_counter() - started
    return {"counts": counts, "seconds": seconds, "peak_mb": peak_mb()}


# -- the compute stage ----------------------------------------------------------------------------


class Timings:
    """Seconds and peak memory per named step; nested wrappers add into the current step's parts."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.parts: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        exact = reset_peak()
        self.parts = {}
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.steps.append(
            {"step": name, "seconds": seconds, "peak_mb": peak_mb(), "peak_exact": exact, "parts": self.parts}
        )
        print(f"  {name}: {seconds:.1f} s, peak {peak_mb():.0f} MB {self.parts}", file=sys.stderr)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[label] = self.parts.get(label, 0.0) + time.perf_counter() - started

        return timed


def compute(store: Store) -> dict[str, Any]:
    import ltvsync.core.compute as comp
    from ltvsync.assemble import compute_hooks
    from ltvsync.core.identity import resolve_identities
    from ltvsync.core.pipeline import SyncReport

    t = Timings()
    for name in ("purchase_facts", "population", "fit_models", "clv", "_rows", "load_model"):
        setattr(comp, name, t.wrap(name, getattr(comp, name)))
    upsert = store.upsert_many

    def upsert_timed(conn: Any, table: Any, rows: Any, key: Any) -> int:
        label = f"upsert {table if isinstance(table, str) else table.name}"
        return int(t.wrap(label, upsert)(conn, table, rows, key))

    store.upsert_many = upsert_timed  # type: ignore[method-assign]
    settings = Settings()
    reports: dict[str, Any] = {}
    with t.step("resolve_identities"), store.transaction() as conn:
        resolve_identities(store, conn)
    with t.step("compute_ltv (refit)"), store.transaction() as conn:
        reports["refit"] = comp.compute_ltv(store, conn, settings.ltv, AS_OF, refit=True).as_dict()

    for hook in compute_hooks():
        with t.step(hook.__name__), store.transaction() as conn:
            hook(store, conn, settings, AS_OF, SyncReport(run_id=0, trigger="bench"))
    with t.step(STEADY_STEP), store.transaction() as conn:
        reports["rescore"] = comp.compute_ltv(store, conn, settings.ltv, AS_OF).as_dict()
    return {"steps": t.steps, "reports": reports}


# -- orchestration ------------------------------------------------------------------------------


def child(phase: str, url: str, n: int, seed: int) -> None:
    store = Store.open(url)
    try:
        result = load(store, n, seed) if phase == "load" else compute(store)
    finally:
        store.close()
    print(json.dumps(result, default=str))


def run_child(phase: str, url: str, n: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--url",
        url,
        "--customers",
        str(n),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return result


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    base = normalize_url(PG_URL)
    libpq = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield (
                make_url(base)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def versions() -> dict[str, str]:
    pg = "unreachable"
    try:
        libpq = make_url(normalize_url(PG_URL)).set(drivername="postgresql")
        with psycopg.connect(libpq.render_as_string(hide_password=False)) as c:
            row = c.execute("SHOW server_version").fetchone()
            pg = str(row[0]) if row else "?"
    except psycopg.Error:
        pass
    cpu = "?"
    with suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "machine": f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "psycopg": psycopg.__version__,
        "postgres": pg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--no-write", action="store_true", help="Do not update bench/RESULTS.md.")
    parser.add_argument("--from-json", type=Path, help="Write RESULTS.md from a saved run's JSON output.")
    parser.add_argument("--phase", choices=("load", "compute"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args.phase, args.url, args.customers, args.seed)
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        write_results(args, saved["results"], saved["loads"])
        return
    results: dict[str, Any] = {}
    loads: list[float] = []
    for kind in args.stores.split(","):
        with database(kind) as url:
            print(f"{kind}: loading {args.customers:,} customers", file=sys.stderr)
            loaded = run_child("load", url, args.customers, args.seed)
            loads.append(os.getloadavg()[0])
            print(f"{kind}: compute stage", file=sys.stderr)
            computed = run_child("compute", url, args.customers, args.seed)
            loads.append(os.getloadavg()[0])
            results[kind] = {"load": loaded, "compute": computed}
    print(json.dumps({"results": results, "loads": loads}, indent=1, default=str))
    if not args.no_write:
        write_results(args, results, loads)


def _fmt_parts(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v >= 0.05)


def write_results(args: argparse.Namespace, results: dict[str, Any], loads: list[float]) -> None:
    v = versions()
    first = next(iter(results.values()))
    counts = first["load"]["counts"]
    lines = [
        SECTION,
        "",
        f"`python bench/compute.py --customers {args.customers}` (seed {args.seed}): {counts['customers']:,} "
        f"customers, {counts['identities']:,} identities and {counts['purchases']:,} purchases (BG/NBD-like: "
        f"r={R}, alpha={ALPHA}/week, a={A}, b={B}; Gamma-Gamma p={P}, q={Q}, gamma={GAMMA}; two-year window) "
        "loaded with `Store.upsert_many`, then the compute stage as the pipeline runs it, each step in its "
        "own transaction, in a fresh child process (peak RSS per step = VmHWM reset before the step). "
        "The last row is an extra run after the stage: the next cycle re-scoring with the stored fit "
        "(cycles between weekly refits).  Seconds, lower is better.",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {v['machine']}",
        f"- Python {v['python']}, numpy {v['numpy']}, scipy {v['scipy']}, SQLAlchemy {v['sqlalchemy']}, "
        f"SQLite {v['sqlite']}, psycopg {v['psycopg']}, PostgreSQL {v['postgres']} on loopback",
        f"- Load average (1 min) after each phase: {', '.join(f'{x:.1f}' for x in loads)} "
        "(the 2 cores were shared with other helpers' jobs, so wall times are pessimistic)",
        "",
        "| step | " + " | ".join(f"{k} s | {k} peak MB" for k in results) + " | where the time goes |",
        "|---|" + "---|---|" * len(results) + "---|",
    ]
    load_row = "| load: draw rows + `upsert_many` (not part of the stage) | " + " | ".join(
        f"{sum(r['load']['seconds'].values()):.0f} | {r['load']['peak_mb']:.0f}" for r in results.values()
    )
    lines.append(
        load_row
        + " | "
        + "; ".join(f"{k}: {_fmt_parts(r['load']['seconds'])}" for k, r in results.items())
        + " |"
    )
    names = [s["step"] for s in first["compute"]["steps"]]
    for i, name in enumerate(names):
        cells = []
        notes = []
        for kind, r in results.items():
            s = r["compute"]["steps"][i]
            cells.append(f"{s['seconds']:.1f} | {s['peak_mb']:.0f}")
            if _fmt_parts(s["parts"]):
                notes.append(f"{kind}: {_fmt_parts(s['parts'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + "; ".join(notes) + " |")
    # The cycle's compute stage: everything but the extra steady-state re-score run.
    stage = {k: [s for s in r["compute"]["steps"] if s["step"] != STEADY_STEP] for k, r in results.items()}
    totals = " | ".join(
        f"{sum(s['seconds'] for s in steps):.1f} | {max(s['peak_mb'] for s in steps):.0f}"
        for steps in stage.values()
    )
    lines += [f"| **compute stage total (refit cycle, without the last row)** | {totals} | |", ""]
    for kind, r in results.items():
        rep = r["compute"]["reports"]["refit"]
        params = ", ".join(f"{k}={val:.4g}" for k, val in rep["parameters"].items())
        lines.append(
            f"- {kind}: model {rep['model']}, {rep['purchasers']:,} purchasers, "
            f"fit {rep['fit_seconds']:.1f} s, parameters {params}"
        )
    lines.append("")
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
