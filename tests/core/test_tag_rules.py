"""Tag rule validation: every kind of mistake is refused at start-up with a message naming the
rule, through the loader and through ``ltvsync config check`` (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltvsync.cli import app
from ltvsync.config.loader import load_settings
from ltvsync.config.settings import TagCondition, TagRule, TagSettings
from ltvsync.core.errors import ConfigError
from ltvsync.core.tag_rules import METRICS, default_rules, rules_from_settings, validate_tag_settings


def cond(metric: str, op: str = ">=", **kw: float | int) -> TagCondition:
    return TagCondition.model_validate({"metric": metric, "op": op, **kw})


def check(*rules: TagRule) -> str:
    with pytest.raises(ConfigError) as info:
        validate_tag_settings(TagSettings(rules=list(rules)))
    return str(info.value)


def test_valid_rules_pass() -> None:
    ok = TagRule(
        name="vip",
        all=[cond("ltv_predicted", percentile=90), cond("p_alive", ">", value=0.5)],
        any=[
            cond("orders", value=3, window_days=365),
            TagRule(name="big", all=[cond("aov", value=200)]),
            cond("logins_trend", "<=", value=0.5, window_days=14),
        ],
    )
    validate_tag_settings(
        TagSettings(
            rules=[ok, TagRule(name="band", all=[cond("orders", value=2), cond("orders", "<=", value=2)])]
        )
    )


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (TagRule(name="vip", all=[cond("ltvv", value=1)]), "tags.rules[1] 'vip': unknown metric 'ltvv'"),
        (TagRule(name="vip", all=[cond("orders")]), "needs exactly one of 'value' or 'percentile'"),
        (TagRule(name="vip", all=[cond("orders", value=1, percentile=50)]), "exactly one of"),
        (TagRule(name="vip", all=[cond("aov", value=1, window_days=30)]), "metric 'aov' has no window"),
        (TagRule(name="vip", all=[cond("tickets", value=1, window_days=0)]), "window_days 0 on tickets"),
        (TagRule(name="vip", all=[cond("orders", percentile=101)]), "percentile 101 on orders"),
        (TagRule(name="vip"), "no conditions"),
        (
            TagRule(name="vip", all=[cond("orders", ">=", value=5), cond("orders", "<", value=2)]),
            "contradictory conditions, no customer can match: orders >= 5 and orders < 2",
        ),
        (
            TagRule(name="vip", all=[cond("orders", ">", value=2), cond("orders", "<=", value=2)]),
            "contradictory",
        ),
        (
            TagRule(name="vip", all=[cond("orders", "==", value=1), cond("orders", "==", value=2)]),
            "contradictory",
        ),
        (
            TagRule(
                name="vip",
                any=[
                    TagRule(
                        name="inner", all=[cond("p_alive", "<", value=0.1), cond("p_alive", ">", value=0.9)]
                    )
                ],
            ),
            "'vip': in nested rule 'inner': contradictory",
        ),
        (
            TagRule(name="vip", any=[TagRule(name="inner", all=[cond("nope", value=1)])]),
            "unknown metric 'nope'",
        ),
        (TagRule(name="a;b", all=[cond("orders", value=1)]), "no ';'"),
    ],
)
def test_bad_rules_are_refused_naming_the_rule(rule: TagRule, message: str) -> None:
    fine = TagRule(name="fine", all=[cond("orders", value=1)])
    got = check(fine, rule)
    assert message in got
    assert f"tags.rules[1] {rule.name!r}" in got


def test_windows_on_different_metrics_or_windows_are_not_contradictions() -> None:
    rule = TagRule(
        name="ok",
        all=[
            cond("orders", ">=", value=5),
            cond("orders", "<", value=2, window_days=30),
            cond("logins_window", ">=", value=5, window_days=7),
            cond("logins_window", "<", value=2, window_days=30),
        ],
    )
    validate_tag_settings(TagSettings(rules=[rule]))


def test_duplicate_names() -> None:
    a = TagRule(name="vip", all=[cond("orders", value=1)])
    assert "tags.rules[1] 'vip': duplicate tag name" in check(a, a)


def test_every_default_rule_reads_known_metrics_and_is_overridable() -> None:
    rules = default_rules(TagSettings())
    assert [r.name for r in rules] == [
        "high-value",
        "one-time-buyer",
        "referrer",
        "at-risk",
        "early-churn-risk",
        "churned",
        "new",
        "engaged",
    ]
    assert all(c.metric in METRICS for r in rules for c in r.conditions())
    assert rules_from_settings(TagSettings(use_defaults=False)) == []
    extra = TagRule(name="mine", all=[cond("orders", value=1)])
    assert [r.name for r in rules_from_settings(TagSettings(rules=[extra]))][-1] == "mine"


BAD_TOML = """
[[tags.rules]]
name = "ok"
all = [{ metric = "orders", op = ">=", value = 1 }]

[[tags.rules]]
name = "vip"
all = [{ metric = "ltvv", op = ">=", percentile = 90 }]
"""


def test_loader_and_config_check_exit_2_naming_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LTVSYNC_"):
            monkeypatch.delenv(name)
    path = tmp_path / "ltvsync.toml"
    path.write_text(BAD_TOML, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tags.rules\[1\] 'vip': unknown metric 'ltvv'"):
        load_settings(path, {})
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert "tags.rules[1] 'vip': unknown metric 'ltvv'" in result.output
    contradictory = BAD_TOML.replace(
        '"ltvv", op = ">=", percentile = 90',
        '"orders", op = "<", value = 0 }, { metric = "orders", op = ">", value = 3',
    )
    path.write_text(contradictory, encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert "'vip': contradictory conditions" in result.output
