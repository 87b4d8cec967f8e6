"""Benchmark: our BG/NBD and Gamma-Gamma fits against the ``lifetimes`` library on the same data.

Simulates a population from known BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader &
Hardie 2013) parameters, with purchases on whole days summarized in weeks as ``rfm_summary``
produces them, fits it with ``ltvsync.core.ltv`` in this process and with lifetimes 0.11 in its
own virtualenv (bench/.venv-lifetimes; it needs pandas<3 and scipy<1.16), handing the data over
in a temporary .npz file. Also times ``rfm_summary`` on a large transaction log.

    python3 -m venv bench/.venv-lifetimes
    bench/.venv-lifetimes/bin/pip install lifetimes "pandas<3" "scipy<1.16" numpy
    .venv/bin/python bench/ltv.py [--customers 1000000] [--rfm-rows 10000000] [--no-append]

Prints the figures and appends them (date, machine, versions) to bench/RESULTS.md under
"## LTV model fits".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy

from ltvsync.core.ltv import fit_bgnbd, fit_gamma_gamma, rfm_summary
from ltvsync.core.rfm import group_rows

HERE = Path(__file__).resolve().parent
LIFETIMES_PYTHON = HERE / ".venv-lifetimes" / "bin" / "python"
RESULTS = HERE / "RESULTS.md"
SECTION = "## LTV model fits"
TRUE_BGNBD = {"r": 0.6, "alpha": 8.0, "a": 0.9, "b": 3.0}
TRUE_GG = {"p": 4.0, "q": 3.5, "gamma": 20.0}
SECTION_INTRO = (
    "Produced by `bench/ltv.py`: the same simulated summary fitted by `ltvsync.core.ltv` and by lifetimes\n"
    "0.11 (its own venv, subprocess, data via .npz). lifetimes gets the raw per-customer rows (its usual\n"
    "use, no weights); ours groups identical (x, t_x, T) rows itself. Both run with one BLAS thread.\n"
    "Wall-clock figures on a shared machine: the load average is printed with each run."
)
# The parameters must agree with lifetimes to this relative tolerance.
PARAM_RTOL = 1e-3

LIFETIMES_SCRIPT = r"""
import json, sys, time
import numpy as np
import lifetimes, pandas, scipy
from lifetimes import BetaGeoFitter, GammaGammaFitter

d = np.load(sys.argv[1])
x, t_x, T, m = d["x"], d["t_x"], d["T"], d["m"]
out = {"versions": {"lifetimes": lifetimes.__version__, "pandas": pandas.__version__,
                    "scipy": scipy.__version__, "numpy": np.__version__}}
repeats = int(sys.argv[2])
buyers = (x > 0) & (m > 0)
bg_times, gg_times = [], []
for _ in range(repeats):
    start = time.perf_counter()
    bg = BetaGeoFitter().fit(x, t_x, T)
    bg_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    gg = GammaGammaFitter().fit(x[buyers], m[buyers])
    gg_times.append(time.perf_counter() - start)
out["bgnbd_seconds"] = min(bg_times)
out["gg_seconds"] = min(gg_times)
out["bgnbd"] = {k: float(bg.params_[k]) for k in ("r", "alpha", "a", "b")}
out["gg"] = {"p": float(gg.params_["p"]), "q": float(gg.params_["q"]), "gamma": float(gg.params_["v"])}
print(json.dumps(out))
"""


def simulate(n: int, seed: int) -> dict[str, np.ndarray]:
    """BG/NBD purchasing and Gamma-Gamma spend; times on whole days, expressed in weeks."""
    rng = np.random.default_rng(seed)
    p = TRUE_BGNBD
    big_t_days = rng.integers(7, 366, n).astype(float)
    n_events = rng.poisson(rng.gamma(p["r"], 1.0 / p["alpha"], n) * big_t_days / 7.0)
    x = np.minimum(n_events, rng.geometric(rng.beta(p["a"], p["b"], n))).astype(float)
    last = np.where(x > 0, big_t_days * rng.beta(np.maximum(x, 1), n_events - x + 1), 0.0)
    t_x_days = np.clip(np.ceil(last), 0, big_t_days) * (x > 0)
    g = TRUE_GG
    nu = rng.gamma(g["q"], 1.0 / g["gamma"], n)
    xs = np.maximum(x, 1)
    m = np.where(x > 0, np.round(rng.gamma(g["p"] * xs, 1.0 / nu) / xs, 2), 0.0)
    return {"x": x, "t_x": t_x_days / 7.0, "T": big_t_days / 7.0, "m": m}


def time_ours(data: dict[str, np.ndarray], repeats: int) -> dict[str, object]:
    bg_times, gg_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        bg = fit_bgnbd(data["x"], data["t_x"], data["T"])
        bg_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        gg = fit_gamma_gamma(data["x"], data["m"])
        gg_times.append(time.perf_counter() - start)
    return {
        "bgnbd": {"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b},
        "gg": {"p": gg.p, "q": gg.q, "gamma": gg.gamma},
        "bgnbd_seconds": statistics.median(bg_times),
        "gg_seconds": statistics.median(gg_times),
        "bgnbd_converged": bg.converged,
        "gg_converged": gg.converged and not gg.degenerate,
        "bgnbd_ll": bg.log_likelihood,
    }


def time_lifetimes(data: dict[str, np.ndarray], repeats: int) -> dict[str, object] | None:
    if not LIFETIMES_PYTHON.exists():
        print(f"lifetimes venv missing ({LIFETIMES_PYTHON}); see the module docstring", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.npz"
        np.savez(path, **data)
        # One BLAS thread, as ours uses none: keeps the comparison about the algorithms.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [str(LIFETIMES_PYTHON), "-c", LIFETIMES_SCRIPT, str(path), str(repeats)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def time_rfm(rows: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, max(rows // 10, 1), rows)
    start_us = np.datetime64("2023-01-01T00:00:00", "us").astype(np.int64)
    stamps = (start_us + rng.integers(0, 365 * 86_400_000_000, rows)).astype("datetime64[us]")
    amounts = np.round(rng.gamma(2.0, 20.0, rows), 2)
    times = []
    # Best of two: the first run also pays for the machine handing out fresh memory pages.
    for _ in range(2):
        start = time.perf_counter()
        summary = rfm_summary(ids, stamps, amounts, datetime(2024, 1, 1, tzinfo=UTC))
        times.append(time.perf_counter() - start)
        assert len(summary) > 0
    return min(times)


def rel_diff(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in ours}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rfm-rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=2005)
    parser.add_argument("--repeats", type=int, default=3, help="our fits: report the median")
    parser.add_argument("--lifetimes-repeats", type=int, default=2, help="lifetimes: report the best")
    parser.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()

    data = simulate(args.customers, args.seed)
    n_triples = group_rows(data["x"], data["t_x"], data["T"])[1].size
    buyers = int(np.sum(data["x"] > 0))
    print(f"{args.customers:,} customers, {buyers:,} repeat buyers, {n_triples:,} unique triples")
    ours = time_ours(data, args.repeats)
    theirs = time_lifetimes(data, args.lifetimes_repeats)
    rfm_seconds = time_rfm(args.rfm_rows, args.seed) if args.rfm_rows > 0 else None

    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}, load average {os.getloadavg()[0]:.1f}",
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"
        + (
            ", lifetimes side: " + ", ".join(f"{k} {v}" for k, v in theirs["versions"].items())
            if theirs
            else ""
        ),
        "",
        f"Synthetic population: {args.customers:,} customers (seed {args.seed}), {n_triples:,} unique "
        f"(x, t_x, T) triples; truth BG/NBD {TRUE_BGNBD}, Gamma-Gamma {TRUE_GG}.",
        "",
        f"| fit | ours (s, median of {args.repeats}) | lifetimes (s, best of {args.lifetimes_repeats}) "
        "| speed-up | max rel. param diff |",
        "|---|---|---|---|---|",
    ]
    ok = bool(ours["bgnbd_converged"] and ours["gg_converged"])
    for name, key in (("BG/NBD", "bgnbd"), ("Gamma-Gamma", "gg")):
        our_s = float(ours[f"{key}_seconds"])  # type: ignore[arg-type]
        if theirs:
            their_s = float(theirs[f"{key}_seconds"])  # type: ignore[arg-type]
            diff = max(rel_diff(ours[key], theirs[key]).values())  # type: ignore[arg-type]
            ok = ok and diff <= PARAM_RTOL and their_s / our_s >= 10
            lines.append(f"| {name} | {our_s:.3f} | {their_s:.2f} | {their_s / our_s:.0f}x | {diff:.1e} |")
        else:
            lines.append(f"| {name} | {our_s:.3f} | n/a | n/a | n/a |")
    lines += ["", "Parameters (ours / lifetimes / truth):"]
    for key, truth in (("bgnbd", TRUE_BGNBD), ("gg", TRUE_GG)):
        for k, v in ours[key].items():  # type: ignore[attr-defined]
            other = f"{theirs[key][k]:.6f}" if theirs else "n/a"  # type: ignore[index]
            lines.append(f"- {k}: {v:.6f} / {other} / {truth[k]}")
    if rfm_seconds is not None:
        lines += [
            "",
            f"`rfm_summary` on {args.rfm_rows:,} transactions (datetime64, int ids): "
            f"{rfm_seconds:.2f} s (best of 2).",
        ]
    lines += [
        "",
        f"Verdict: {'PASS' if ok else 'FAIL'} (>= 10x faster, parameters within {PARAM_RTOL:g} relative).",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_append:
        append_section(report)
    return 0 if ok else 1


def append_section(report: str) -> None:
    """Add a run under our section, creating the section (or the file) if needed; others' text stays."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}\n"
        RESULTS.write_text(text + "\n" + report + "\n")
        return
    head, tail = text.split(SECTION, 1)
    # Insert at the end of our section: before the next "## " heading, if any.
    cut = tail.find("\n## ")
    body, rest = (tail, "") if cut < 0 else (tail[:cut], tail[cut:])
    RESULTS.write_text(head + SECTION + body.rstrip("\n") + "\n\n" + report + "\n" + rest)


if __name__ == "__main__":
    raise SystemExit(main())
