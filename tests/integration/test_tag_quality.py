"""Tag quality: do ``churned`` / ``at-risk`` pick out the customers the sandbox world knows are dead?

One full pull + compute cycle (tags included) over loopback against a sandbox world of
``N_CUSTOMERS`` customers, with "now" set to the world's ``as_of``.  Store customers are matched to
the generator's truth by normalized email (``truth.email``); customers that cannot be matched
(e.g. Salesforce contacts injected without an email) are left out and counted.  "Dead" is
``not truth.alive`` at ``as_of`` (BG/NBD: the customer dropped out after a repeat purchase).

Measured: precision and recall of "churned or at-risk" as a predictor of dead, and the rate at which
dead vs alive customers carry those tags.  Asserted: dead customers are tagged far more often than
alive ones (rate ratio >= ``MIN_RATE_RATIO``).  The figures print with ``-s`` and are attached via
``record_property``; ``bench/RESULTS.md`` (``## Tag quality``) records a run.

Runs on SQLite only: the tag rules are numpy over the same features on both dialects, and the
Postgres half of the pipeline is exercised by the other integration tests; a second 3,000-customer
cycle would double this test's time for no new information about tag quality.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import select

from ltvsync.assemble import build_cycle
from ltvsync.core import models as m
from ltvsync.core.pipeline import CycleOptions, run_cycle
from ltvsync.core.store import Store
from ltvsync.sandbox.http import Knobs
from ltvsync.sandbox.runner import Sandbox
from ltvsync.sandbox.world import World, generate_world
from tests.integration.helpers import FAST_RETRY, WORLD_AS_OF, sandbox_settings

N_CUSTOMERS = 3_000
SEED = 29
# "Far more often": a tag that ignored death would give a ratio near 1; 3 is a clear signal.
MIN_RATE_RATIO = 3.0
CHURN_TAGS = frozenset({"churned", "at-risk"})


@dataclass(frozen=True)
class Outcome:
    dead: np.ndarray  # bool per matched customer
    tagged: np.ndarray  # bool: churned or at-risk
    churned: np.ndarray
    at_risk: np.ndarray
    unmatched: int
    model: str

    @property
    def precision(self) -> float:
        return float(np.mean(self.dead[self.tagged])) if self.tagged.any() else float("nan")

    @property
    def recall(self) -> float:
        return float(np.mean(self.tagged[self.dead]))

    @property
    def alive_rate(self) -> float:
        return float(np.mean(self.tagged[~self.dead]))


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(N_CUSTOMERS, seed=SEED, as_of=WORLD_AS_OF)


@pytest.fixture(scope="module")
def outcome(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    url = f"sqlite:///{tmp_path_factory.mktemp('tags') / 'ltvsync.db'}"
    store = Store.open(url)
    try:
        with Sandbox(world=world, knobs=Knobs(time_scale=0.001, seed=3)) as sb:
            sb.knobs.rate_limits = False  # this test is about tags, not about backing off
            cycle = build_cycle(sandbox_settings(sb, url), store, retry=FAST_RETRY)
            report = run_cycle(
                cycle, trigger="test", options=CycleOptions(stages=("pull", "compute"), as_of=world.as_of)
            )
        assert report.status == "ok", report.as_dict()["errors"]
        yield match(world, store, str(report.compute.get("model")))
    finally:
        store.close()


def match(world: World, store: Store, model: str) -> Outcome:
    customer, metrics = m.TABLES["customer"], m.TABLES["customer_metrics"]
    query = select(customer.c.email, metrics.c.tags).join(metrics, metrics.c.customer_id == customer.c.id)
    with store.engine.connect() as conn:
        rows = conn.execute(query.where(customer.c.merged_into.is_(None))).all()
    number = {email: i for i, email in enumerate(world.truth.email)}
    index, tags, unmatched = [], [], 0
    for email, tag_text in rows:
        i = number.get(email)
        if i is None:
            unmatched += 1
            continue
        index.append(i)
        tags.append(set((tag_text or "").split(";")) - {""})
    dead = ~np.asarray(world.truth.alive, dtype=bool)[np.asarray(index, dtype=np.int64)]
    churned = np.array(["churned" in t for t in tags])
    at_risk = np.array(["at-risk" in t for t in tags])
    return Outcome(dead, churned | at_risk, churned, at_risk, unmatched, model)


def test_every_customer_is_matched_to_truth(outcome: Outcome, world: World) -> None:
    # Almost every store customer maps to a generated one (the rest: contacts without an email).
    assert outcome.dead.size >= 0.95 * N_CUSTOMERS
    assert outcome.unmatched <= 0.05 * N_CUSTOMERS
    # Both classes are present, so the rates below are defined.
    assert 0 < int(outcome.dead.sum()) < outcome.dead.size


def test_dead_customers_get_churn_tags_far_more_often_than_alive_ones(
    outcome: Outcome, record_property: Callable[[str, object], None]
) -> None:
    o = outcome
    ratio = o.recall / o.alive_rate if o.alive_rate > 0 else float("inf")
    figures = {
        "matched": int(o.dead.size),
        "unmatched": o.unmatched,
        "dead": int(o.dead.sum()),
        "tagged": int(o.tagged.sum()),
        "churned": int(o.churned.sum()),
        "at_risk": int(o.at_risk.sum()),
        "precision": round(o.precision, 4),
        "recall": round(o.recall, 4),
        "dead_tag_rate": round(o.recall, 4),
        "alive_tag_rate": round(o.alive_rate, 4),
        "rate_ratio": round(ratio, 2),
        "churned_precision": round(float(np.mean(o.dead[o.churned])), 4) if o.churned.any() else None,
        "churned_recall": round(float(np.mean(o.churned[o.dead])), 4),
        "at_risk_precision": round(float(np.mean(o.dead[o.at_risk])), 4) if o.at_risk.any() else None,
        "at_risk_recall": round(float(np.mean(o.at_risk[o.dead])), 4),
        "base_rate_dead": round(float(np.mean(o.dead)), 4),
        "model": o.model,
    }
    print("\ntag quality:", figures)
    for key, value in figures.items():
        record_property(key, value)
    assert o.model == "bgnbd+gamma-gamma", "P(alive) must come from the fitted model for this measurement"
    assert ratio >= MIN_RATE_RATIO, figures
    # Better than guessing: a tagged customer is more likely dead than a random one.
    assert o.precision > float(np.mean(o.dead)), figures
