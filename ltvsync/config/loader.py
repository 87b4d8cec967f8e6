"""Build the one ``Settings`` object from ``ltvsync.toml`` plus ``LTVSYNC_*`` environment overrides.

Order of precedence: environment (``LTVSYNC_<SECTION>__<KEY>``, nested with ``__``) over the TOML
file over the model defaults.  The file is ``--config PATH``, else ``$LTVSYNC_CONFIG``, else
``./ltvsync.toml``; only that last, implicit default may be absent (then everything is default).

Every failure is a ``ConfigError`` whose message says what to fix: the file, line and column of a
TOML syntax error; the dotted key, the type of the bad value and what was expected for a
validation error; the unknown key; the environment variable that would supply a missing secret.
Secret values are never echoed.

Relies on: TOML 1.0 (https://toml.io/en/v1.0.0) via ``tomllib``; pydantic v2 validation errors
(https://docs.pydantic.dev/latest/errors/validation_errors/).  The environment naming follows
pydantic-settings' ``env_prefix`` + ``env_nested_delimiter`` convention, but is parsed here rather
than by a ``BaseSettings`` source because (1) ``EnvSettingsSource`` reads only ``os.environ`` and
tests must pass a mapping, (2) it silently ignores a misspelt ``LTVSYNC_MIXPANL__API_SECRET``,
which we want named, and (3) knowing which variable supplied a value lets errors point at it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ltvsync.config.settings import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    SENSITIVE_STRING_KEYS,
    Settings,
    env_var_name,
    is_secret_annotation,
    mask_text,
    masked_dump,
)
from ltvsync.config.settings import missing_requirements as missing_requirements
from ltvsync.core.errors import ConfigError
from ltvsync.core.tag_rules import validate_tag_settings

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "LoadedSettings",
    "env_var_name",
    "load",
    "load_settings",
    "masked_dump",
    "missing_requirements",
    "resolve_config_path",
]

# Names the file to read; it is not a setting itself, so it is not parsed as an override.
CONFIG_ENV_VAR = "LTVSYNC_CONFIG"
DEFAULT_CONFIG_PATH = Path("ltvsync.toml")

# tomllib (3.11) only puts the position in the message text: "... (at line 3, column 7)".
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")

Origins = dict[tuple[str, ...], str]


@dataclass(frozen=True)
class LoadedSettings:
    """The settings plus where they came from, for ``config check`` and error messages."""

    settings: Settings
    path: Path | None  # the file read, or None when the implicit default file was absent
    file_data: Mapping[str, Any] = field(default_factory=dict)
    env_origins: Mapping[tuple[str, ...], str] = field(default_factory=dict)

    def source_of(self, key: tuple[str, ...]) -> str:
        """``LTVSYNC_...`` for an environment override, ``file`` or ``default``."""
        for depth in range(len(key), 0, -1):
            if key[:depth] in self.env_origins:
                return self.env_origins[key[:depth]]
        node: Any = self.file_data
        for part in key:
            if not isinstance(node, Mapping) or part not in node:
                return "default"
            node = node[part]
        return "file"


def resolve_config_path(path: str | Path | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The file to read and whether it was named explicitly (a missing explicit file is an error)."""
    if path is not None and str(path) != "":
        return Path(path), True
    from_env = env.get(CONFIG_ENV_VAR, "")
    if from_env:
        return Path(from_env), True
    return DEFAULT_CONFIG_PATH, False


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load, validate and check the configuration; raise ``ConfigError`` saying what to fix.

    ``env`` defaults to ``os.environ``; this module and the CLI are the only readers of it.
    """
    return load(path, env).settings


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> LoadedSettings:
    """Like ``load_settings`` but also reports which file was read and where each value came from."""
    environ: Mapping[str, str] = os.environ if env is None else env
    config_path, explicit = resolve_config_path(path, environ)
    file_data = read_toml(config_path, required=explicit)
    overrides, origins = env_overrides(environ)
    merged = _deep_merge(file_data, overrides)
    label = str(config_path)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = format_validation_errors(exc, origins, label)
        raise ConfigError(_bulleted(f"Invalid configuration ({label})", problems)) from None
    missing = missing_requirements(settings)
    if missing:
        raise ConfigError(_bulleted(f"Incomplete configuration ({label})", missing))
    try:
        # Tag rules are data: unknown metrics, contradictions and duplicate names fail at start-up.
        validate_tag_settings(settings.tags)
    except ConfigError as exc:
        raise ConfigError(_bulleted(f"Invalid tag rules ({label})", [str(exc)])) from None
    read_path = config_path if (explicit or config_path.exists()) else None
    return LoadedSettings(settings, read_path, file_data, origins)


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """Parse the TOML file; an absent optional file is an empty configuration."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not required:
            return {}
        raise ConfigError(
            f"Configuration file {path} does not exist (run `ltvsync init` to create one)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error_message(path, str(exc))) from None


def _toml_error_message(path: Path, message: str) -> str:
    match = _TOML_POSITION.search(message)
    if match is None:
        return f"{path}: invalid TOML: {message}"
    reason = message[: match.start()]
    return f"{path}: invalid TOML at line {match.group(1)}, column {match.group(2)}: {reason}"


def env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], Origins]:
    """Nested override data from ``LTVSYNC_<SECTION>__<KEY>`` variables, and which variable set what.

    Values are strings that pydantic coerces (``"5000"`` → 5000, ``"true"`` → True); a value that
    starts with ``{`` or ``[`` is JSON, for the dict and list settings.  Single-segment names such as
    ``LTVSYNC_CONFIG`` are process options, not settings, and are left alone.
    """
    data: dict[str, Any] = {}
    origins: Origins = {}
    problems: list[str] = []
    sections = Settings.model_fields
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV_VAR:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if len(parts) < 2:
            continue
        if any(part == "" for part in parts):
            problems.append(f"{name}: empty key segment (keys are separated by a double underscore)")
            continue
        if parts[0] not in sections:
            hint = _did_you_mean(parts[0], sections)
            problems.append(f"{name}: unknown section '{parts[0]}'{hint}")
            continue
        try:
            value = _parse_env_value(env[name])
        except ValueError as exc:
            # The value is not shown: it may be a secret.
            problems.append(f"{name}: value looks like JSON but does not parse ({exc})")
            continue
        _set_nested(data, parts, value)
        origins[tuple(parts)] = name
    if problems:
        raise ConfigError(_bulleted("Invalid environment overrides", problems))
    return data, origins


def _parse_env_value(raw: str) -> Any:
    if raw.lstrip().startswith(("{", "[")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{exc.msg} at column {exc.colno}") from None
    return raw


def _set_nested(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins key by key; tables merge recursively, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


# TOML's names for the Python types tomllib produces; environment values are always strings.
_TOML_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "float",
    "bool": "boolean",
    "list": "array",
    "dict": "table",
    "datetime": "datetime",
    "date": "date",
    "time": "time",
}
_MAX_SHOWN_VALUE = 60


def format_validation_errors(
    exc: ValidationError, origins: Mapping[tuple[str, ...], str], label: str
) -> list[str]:
    """One line per pydantic error: dotted key, origin, the bad value's type and what was expected."""
    lines: list[str] = []
    for error in _best_union_branches(exc.errors(include_url=False)):
        model, key, secret, _ = _walk(error["loc"])
        dotted = _dotted(key)
        where = _origin(key, origins, label)
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = sorted(model.model_fields) if model else []
            hint = _did_you_mean(str(key[-1]), dict.fromkeys(allowed)) if allowed else ""
            lines.append(f"{dotted}: unknown key{hint} ({where})")
        elif kind == "missing":
            lines.append(f"{dotted}: required key is missing ({where})")
        else:
            got = _describe_value(
                error.get("input"), show=not secret and str(key[-1]) not in SENSITIVE_STRING_KEYS
            )
            lines.append(f"{dotted}: got {got}; expected {_expected(error['msg'])} ({where})")
    return lines


def _best_union_branches(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Where a value matched no branch of a union (a tag rule item is a condition or a nested
    rule), report only the branch whose keys fit best: the one with the fewest errors directly
    at that level (missing or unknown keys, bad values), ignoring errors nested deeper down."""
    shallow: dict[tuple[tuple[int | str, ...], str], int] = {}
    for error in errors:
        _, key, _, taken = _walk(error["loc"])
        for where, branch in taken:
            at_level = len(key) == len(where) + 1
            shallow[(where, branch)] = shallow.get((where, branch), 0) + int(at_level)
    best: dict[tuple[int | str, ...], int] = {}
    for (where, _), count in shallow.items():
        best[where] = min(count, best.get(where, count))
    return [
        error
        for error in errors
        if all(shallow[choice] == best[choice[0]] for choice in _walk(error["loc"])[3])
    ]


def _walk(
    loc: tuple[int | str, ...],
) -> tuple[type[BaseModel] | None, tuple[int | str, ...], bool, list[tuple[tuple[int | str, ...], str]]]:
    """Follow ``loc`` through the models: the model owning the last key, the key path without
    union-branch names (``TagCondition``), whether the last key is a secret field, and the union
    branches taken (where, branch name)."""
    model: type[BaseModel] | None = Settings
    owner: type[BaseModel] | None = Settings
    key: list[int | str] = []
    secret = False
    branches: list[type[BaseModel]] = []
    taken: list[tuple[tuple[int | str, ...], str]] = []
    for part in loc:
        if isinstance(part, str) and any(part == branch.__name__ for branch in branches):
            model = next(branch for branch in branches if branch.__name__ == part)
            taken.append((tuple(key), part))
            branches = []
            continue
        key.append(part)
        if isinstance(part, int) or model is None:
            continue
        owner = model
        field = model.model_fields.get(part)
        if field is None:
            model, secret = None, False
            continue
        secret = is_secret_annotation(field.annotation)
        branches = _models_in(field.annotation)
        model = branches[0] if len(branches) == 1 else None
    return owner, tuple(key), secret, taken


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _dotted(key: tuple[int | str, ...]) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _origin(key: tuple[int | str, ...], origins: Mapping[tuple[str, ...], str], label: str) -> str:
    for depth in range(len(key), 0, -1):
        name = origins.get(tuple(str(part) for part in key[:depth]))
        if name is not None:
            return f"from {name}"
    return f"in {label}"


def _describe_value(value: Any, *, show: bool) -> str:
    type_name = _TOML_TYPE_NAMES.get(type(value).__name__, type(value).__name__)
    if not show or isinstance(value, dict | list):
        return type_name
    shown = mask_text(repr(value))
    if len(shown) > _MAX_SHOWN_VALUE:
        shown = shown[: _MAX_SHOWN_VALUE - 3] + "..."
    return f"{type_name} {shown}"


def _expected(message: str) -> str:
    for prefix in ("Input should be ", "Value error, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message[:1].lower() + message[1:]


def _did_you_mean(word: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _bulleted(title: str, problems: list[str]) -> str:
    noun = "problem" if len(problems) == 1 else "problems"
    return f"{title}: {len(problems)} {noun}\n" + "\n".join(f"  - {problem}" for problem in problems)
