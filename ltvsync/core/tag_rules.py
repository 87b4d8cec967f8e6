"""Tag rules as data: the metric catalogue, validation with messages naming the rule, and the
default rule set.

Rules come from ``[[tags.rules]]`` in the configuration (``TagRule`` / ``TagCondition``) and are
turned into frozen values here; nothing is ever evaluated as Python.  A rule holds when every
entry of ``all`` holds and, if ``any`` is non-empty, at least one entry of ``any`` does; an entry
is a condition ``metric op value|percentile [window_days]`` or a nested rule.

Default rules (on when ``tags.use_defaults``; a configured rule with the same name replaces one):

- ``high-value``: ``ltv_predicted`` in the top decile (>= 90th percentile), or
  ``frequency >= 4``/year and ``referrals_sent >= 1``.
- ``one-time-buyer``: ``orders == 1`` and ``days_since_start > tags.one_time_buyer_after_days``.
- ``referrer``: ``referrals_sent >= 1``.
- ``at-risk``: ``ltv_simple`` above the median and (``p_alive < 0.5`` or a login habit that
  halved: 4+ logins in the 30 days before the last 30, and ``logins_trend <= 0.5``).
- ``early-churn-risk``: ``days_since_start < 30`` and no engaged event in the last 7 days.
- ``churned``: ``p_alive < 0.15`` or ``days_since_activity > tags.churned_after_days``.
- ``new``: ``days_since_start < 30``.
- ``engaged``: at least 4 logins in the last 30 days.

No vendor documentation is involved; metric definitions are in ``METRICS`` and ``tag_features``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from ltvsync.config.settings import TagCondition, TagRule, TagSettings
from ltvsync.core.errors import ConfigError

Op = Literal["<", "<=", ">", ">=", "==", "!="]
OPS: frozenset[str] = frozenset(get_args(Op))
DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 3660
MAX_NESTING = 8
TAG_NAME_MAX = 64

# Metric name -> whether it takes ``window_days`` ("optional": lifetime when absent;
# "default": DEFAULT_WINDOW_DAYS when absent; "none": a window is an error).
METRICS: dict[str, str] = {
    "orders": "optional",
    "revenue": "optional",
    "aov": "none",
    "frequency": "none",
    "tenure_days": "none",
    "recency_days": "none",
    "days_since_start": "none",
    "ltv_simple": "none",
    "ltv_predicted": "none",
    "p_alive": "none",
    "expected_purchases": "none",
    "ltv_percentile": "none",
    "days_since_activity": "none",
    "referrals_sent": "optional",
    "logins_window": "default",
    "logins_prev_window": "default",
    "logins_trend": "default",
    "email_opens": "default",
    "tickets": "default",
    "unsatisfied_tickets": "default",
    "engaged_events": "default",
}

HIGH_VALUE_PERCENTILE = 90.0
HIGH_FREQUENCY_PER_YEAR = 4.0
AT_RISK_P_ALIVE = 0.5
AT_RISK_LOGIN_TREND = 0.5
AT_RISK_MIN_PREVIOUS_LOGINS = 4.0
CHURNED_P_ALIVE = 0.15
NEW_CUSTOMER_DAYS = 30.0
EARLY_ENGAGEMENT_WINDOW_DAYS = 7
ENGAGED_LOGINS = 4.0


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float | None = None
    percentile: float | None = None
    window_days: int | None = None

    @property
    def key(self) -> str:
        """The feature this condition reads: the metric, with its window when it has one."""
        return feature_key(self.metric, self.window_days)

    def describe(self) -> str:
        target = f"p{self.percentile:g}" if self.percentile is not None else f"{self.value:g}"
        return f"{self.key} {self.op} {target}"


@dataclass(frozen=True)
class Rule:
    name: str
    description: str = ""
    all: tuple[Condition | Rule, ...] = ()
    any: tuple[Condition | Rule, ...] = ()

    def conditions(self) -> list[Condition]:
        """Every condition in this rule and its nested rules."""
        found: list[Condition] = []
        for node in (*self.all, *self.any):
            found.extend([node] if isinstance(node, Condition) else node.conditions())
        return found

    def describe(self) -> str:
        parts = []
        if self.all:
            parts.append(" and ".join(_describe(n) for n in self.all))
        if self.any:
            parts.append("(" + " or ".join(_describe(n) for n in self.any) + ")")
        return " and ".join(parts)


def _describe(node: Condition | Rule) -> str:
    return node.describe() if isinstance(node, Condition) else f"[{node.describe()}]"


def feature_key(metric: str, window_days: int | None) -> str:
    """``logins_window@30``; windowless metrics are their own name."""
    mode = METRICS.get(metric, "none")
    if mode == "default":
        return f"{metric}@{window_days or DEFAULT_WINDOW_DAYS}"
    if mode == "optional" and window_days:
        return f"{metric}@{window_days}"
    return metric


def default_rules(tags: TagSettings) -> list[Rule]:
    """The built-in rule set, thresholds from ``tags`` and the constants above."""

    def c(
        metric: str,
        op: str,
        value: float | None = None,
        *,
        percentile: float | None = None,
        window_days: int | None = None,
    ) -> Condition:
        return Condition(metric, op, value, percentile, window_days)

    return [
        Rule(
            "high-value",
            "Top decile of predicted LTV, or a frequent buyer who referred someone",
            any=(
                c("ltv_predicted", ">=", percentile=HIGH_VALUE_PERCENTILE),
                Rule(
                    "frequent referrer",
                    all=(c("frequency", ">=", HIGH_FREQUENCY_PER_YEAR), c("referrals_sent", ">=", 1)),
                ),
            ),
        ),
        Rule(
            "one-time-buyer",
            f"Exactly one purchase, started over {tags.one_time_buyer_after_days} days ago",
            all=(c("orders", "==", 1), c("days_since_start", ">", tags.one_time_buyer_after_days)),
        ),
        Rule("referrer", "Referred at least one person", all=(c("referrals_sent", ">=", 1),)),
        Rule(
            "at-risk",
            "Historically valuable (simple LTV above the median) but fading: low P(alive) or logins halved",
            all=(c("ltv_simple", ">", percentile=50),),
            any=(
                c("p_alive", "<", AT_RISK_P_ALIVE),
                # "Halved" only means something for a habit: 1 login after 2 is noise.
                Rule(
                    "logins-halved",
                    "A login habit (4+ in the previous 30 days) that halved in the last 30",
                    all=(
                        c(
                            "logins_prev_window",
                            ">=",
                            AT_RISK_MIN_PREVIOUS_LOGINS,
                            window_days=DEFAULT_WINDOW_DAYS,
                        ),
                        c("logins_trend", "<=", AT_RISK_LOGIN_TREND, window_days=DEFAULT_WINDOW_DAYS),
                    ),
                ),
            ),
        ),
        Rule(
            "early-churn-risk",
            "Started less than 30 days ago with no engagement in the last 7 days",
            all=(
                c("days_since_start", "<", NEW_CUSTOMER_DAYS),
                c("engaged_events", "==", 0, window_days=EARLY_ENGAGEMENT_WINDOW_DAYS),
            ),
        ),
        Rule(
            "churned",
            f"P(alive) below {CHURNED_P_ALIVE} or no activity for over {tags.churned_after_days} days",
            any=(
                c("p_alive", "<", CHURNED_P_ALIVE),
                c("days_since_activity", ">", tags.churned_after_days),
            ),
        ),
        Rule("new", "Started less than 30 days ago", all=(c("days_since_start", "<", NEW_CUSTOMER_DAYS),)),
        Rule(
            "engaged",
            "At least 4 logins in the last 30 days",
            all=(c("logins_window", ">=", ENGAGED_LOGINS, window_days=DEFAULT_WINDOW_DAYS),),
        ),
    ]


def rules_from_settings(tags: TagSettings) -> list[Rule]:
    """The effective rule set: defaults (if on) with same-named configured rules replacing them,
    then the other configured rules.  Raises ``ConfigError`` naming the first bad rule."""
    validate_tag_settings(tags)
    configured = [_convert(rule) for rule in tags.rules]
    if not tags.use_defaults:
        return configured
    by_name = {rule.name: rule for rule in configured}
    merged = [by_name.pop(rule.name, rule) for rule in default_rules(tags)]
    return merged + [rule for rule in configured if rule.name in by_name]


def _convert(rule: TagRule) -> Rule:
    def node(item: TagCondition | TagRule) -> Condition | Rule:
        if isinstance(item, TagRule):
            return _convert(item)
        return Condition(item.metric, item.op, item.value, item.percentile, item.window_days)

    return Rule(
        rule.name, rule.description, tuple(node(i) for i in rule.all), tuple(node(i) for i in rule.any)
    )


def validate_tag_settings(tags: TagSettings) -> None:
    """Reject unknown metrics, bad operators, value/percentile mistakes, windows on windowless
    metrics, rules with no conditions, contradictions and duplicate names.

    The message names the rule: ``tags.rules[2] 'vip': unknown metric 'ltvv'``.
    """
    seen: set[str] = set()
    for index, rule in enumerate(tags.rules):
        where = f"tags.rules[{index}] {rule.name!r}"
        name = rule.name.strip()
        if not name or len(name) > TAG_NAME_MAX or name != rule.name or ";" in name:
            raise ConfigError(
                f"{where}: a tag name must be 1-{TAG_NAME_MAX} characters, with no ';' "
                "and no surrounding spaces"
            )
        if name in seen:
            raise ConfigError(f"{where}: duplicate tag name (each rule needs its own name)")
        seen.add(name)
        problem = _problem(rule, 0)
        if problem:
            raise ConfigError(f"{where}: {problem}")


def _problem(rule: TagRule, depth: int) -> str | None:
    label = "" if depth == 0 else f"in nested rule {rule.name!r}: "
    if depth > MAX_NESTING:
        return f"{label}rules nest deeper than {MAX_NESTING} levels"
    if not rule.all and not rule.any:
        return f"{label}no conditions: give 'all' and/or 'any'"
    for item in (*rule.all, *rule.any):
        found = _problem(item, depth + 1) if isinstance(item, TagRule) else _condition_problem(item)
        if found:
            return found if isinstance(item, TagRule) else label + found
    contradiction = _contradiction([c for c in rule.all if isinstance(c, TagCondition)])
    return label + contradiction if contradiction else None


def _condition_problem(cond: TagCondition) -> str | None:
    if cond.metric not in METRICS:
        known = ", ".join(sorted(METRICS))
        return f"unknown metric {cond.metric!r} (known: {known})"
    if cond.op not in OPS:
        return f"bad operator {cond.op!r} for {cond.metric} (use one of {' '.join(sorted(OPS))})"
    if (cond.value is None) == (cond.percentile is None):
        return f"condition on {cond.metric} needs exactly one of 'value' or 'percentile'"
    if cond.value is not None and not math.isfinite(cond.value):
        return f"condition on {cond.metric} has a non-finite value"
    if cond.percentile is not None and not 0.0 <= cond.percentile <= 100.0:
        return f"percentile {cond.percentile:g} on {cond.metric} is outside 0-100"
    if cond.window_days is not None:
        if METRICS[cond.metric] == "none":
            return f"metric {cond.metric!r} has no window; remove window_days"
        if not 1 <= cond.window_days <= MAX_WINDOW_DAYS:
            return f"window_days {cond.window_days} on {cond.metric} is outside 1-{MAX_WINDOW_DAYS}"
    return None


def _contradiction(conditions: list[TagCondition]) -> str | None:
    """Fixed-value bounds on one feature within an ``all`` that no number satisfies."""
    bounds: dict[str, tuple[float, bool, float, bool]] = {}  # key -> (low, low_incl, high, high_incl)
    texts: dict[str, list[str]] = {}
    for cond in conditions:
        if cond.value is None or cond.op == "!=":
            continue
        key = feature_key(cond.metric, cond.window_days)
        low, low_in, high, high_in = bounds.get(key, (-math.inf, False, math.inf, False))
        v = cond.value
        if cond.op in (">", ">=", "==") and (v > low or (v == low and cond.op == ">")):
            low, low_in = v, cond.op != ">"
        if cond.op in ("<", "<=", "==") and (v < high or (v == high and cond.op == "<")):
            high, high_in = v, cond.op != "<"
        bounds[key] = (low, low_in, high, high_in)
        texts.setdefault(key, []).append(f"{cond.metric} {cond.op} {v:g}")
        if low > high or (low == high and not (low_in and high_in)):
            return f"contradictory conditions, no customer can match: {' and '.join(texts[key])}"
    return None
