"""Reading YAML configuration into typed values, with errors that name file, place and field.

Shared by the retention policy and the erasure subject map: both are validated when the DAG files
are parsed, so a mistake shows up as an import error that says exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from data_lifecycle.exceptions import LifecycleConfigError

# Plain, unquoted PostgreSQL identifiers only: no quotes, spaces, semicolons, look-alike letters or a
# trailing newline (hence \Z, not $).
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
QUALIFIED_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\.[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
# S3 bucket naming rules (3-63 chars, lowercase letters, digits, dots, hyphens).
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")

MISSING: Any = object()


class ConfigFields:
    """Reads one mapping of a YAML configuration file, naming file, place and field in every error.

    :param raw: the mapping read from YAML.
    :param where: the place in the file ("expired_sessions[0] (rule 'sessions')").
    :param source: the file.
    :param document: what the file is, for messages ("policy", "erasure subject map").
    """

    def __init__(self, raw: Any, where: str, source: str, document: str = "policy") -> None:
        self.where = where
        self.source = source
        self.document = document
        if not isinstance(raw, Mapping):
            self.fail(None, f"must be a mapping, got {type(raw).__name__}")
        self.raw = dict(raw)
        self.seen: set[str] = set()

    def fail(self, key: str | None, problem: str) -> None:
        at = f"{self.where}, field '{key}'" if key else self.where
        raise LifecycleConfigError(f"Invalid {self.document} {self.source}: {at}: {problem}")

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = MISSING) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            if default is MISSING:
                self.fail(key, "is required")
            return default
        value = self.raw[key]
        kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
        # bool is an int in Python; a YAML `yes` must not pass as a number of days.
        if isinstance(value, bool) and bool not in kinds_t:
            self.fail(key, f"must be {self._names(kinds_t)}, got {value!r}")
        if not isinstance(value, kinds_t):
            self.fail(key, f"must be {self._names(kinds_t)}, got {type(value).__name__} {value!r}")
        return value

    def positive_int(self, key: str, default: Any = MISSING, *, minimum: int = 1) -> Any:
        value = self.get(key, int, default)
        if value is not None and value is not default and value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
        return value

    def positive_number(self, key: str, default: Any = MISSING) -> Any:
        value = self.get(key, (int, float), default)
        if value is not None and value is not default and value <= 0:
            self.fail(key, f"must be positive, got {value}")
        return value

    def matching(self, key: str, pattern: re.Pattern[str], what: str, default: Any = MISSING) -> Any:
        value = self.get(key, str, default)
        if value is not default and value is not None and not pattern.match(value):
            self.fail(key, f"must be {what}, got {value!r}")
        return value

    def table(self, key: str) -> str:
        value = self.get(key, str)
        if not QUALIFIED_TABLE.match(value):
            self.fail(key, f"must be a plain 'schema.table' name, got {value!r}")
        return str(value)

    def identifier(self, key: str, default: Any = MISSING) -> Any:
        value = self.get(key, str, default)
        if value is not None and value is not default and not IDENTIFIER.match(value):
            self.fail(key, f"must be a plain column name, got {value!r}")
        return value

    def bucket(self, key: str) -> str:
        value = self.get(key, str)
        if not BUCKET_NAME.match(value):
            self.fail(key, f"is not a valid S3 bucket name: {value!r}")
        return str(value)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = MISSING) -> Any:
        value = self.get(key, str, default)
        if value not in choices and value is not default:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            self.fail(unknown[0], f"is not a known field (known: {', '.join(sorted(self.seen))})")

    @staticmethod
    def _names(kinds: tuple[type, ...]) -> str:
        names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
        names.update({list: "a list", dict: "a mapping"})
        return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_yaml_file(path: Path, parse: Callable[[Any, str], Any], document: str) -> Any:
    """``parse(yaml document, path)`` for a file, cached per path and modification time.

    DAG files load their configuration on every parse; the cache keeps that to one read of a
    small file per change, and an edited file is picked up at the next parse.
    """
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise LifecycleConfigError(f"{document.capitalize()} file {path} does not exist") from exc
    return _load_cached(str(path), mtime, parse, document)


@lru_cache(maxsize=16)
def _load_cached(path: str, _mtime: int, parse: Callable[[Any, str], Any], document: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise LifecycleConfigError(f"Invalid {document} {path}: not valid YAML: {exc}") from exc
    return parse(doc, path)
