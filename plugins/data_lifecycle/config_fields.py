"""Reading YAML configuration into typed values, with errors that name file, place and field.

Shared by the retention policy and the erasure subject map: both are validated when the DAG files
are parsed, so a mistake shows up as an import error that says exactly what to fix.

The YAML is read strictly: a key repeated in one mapping is an error (PyYAML keeps the last one, so a
second ``retention_days`` silently wins), and numbers must be plain decimals (YAML 1.1 reads ``030``
as 24, and also takes ``0x1e``, ``1_000``, ``1:30`` and ``.inf``). Every number read through
``ConfigFields`` has an upper bound, so a typo of a few digits is refused instead of overflowing a
date at run time.
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

# Upper bounds shared by every number of the configuration files.
MAX_DAYS = 36_500  # a hundred years: any retention longer than that is a typo
MAX_MONTHS = 1_200
MAX_SECONDS = 86_400
MAX_MINUTES = 7 * 24 * 60
MAX_MILLISECONDS = MAX_SECONDS * 1_000
MAX_BATCH_ROWS = 1_000_000
# Load-aware pauses: the largest budget factor (beyond it the pauses would never start) and lag.
MAX_LOAD_FACTOR = 100.0
MAX_REPLICA_LAG_SECONDS = 3_600.0
MAX_COUNT = 10**12  # rows, objects, dead tuples

# libyaml's parser where PyYAML has it: composing in Python is most of a DAG file's parse time.
# The nodes are the same (same resolver, same tags, line marks), so the checks below are unchanged.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_PLAIN_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)\Z")
_PLAIN_FLOAT = re.compile(r"^[-+]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_PLAIN_BOOL = frozenset({"true", "false", "True", "False", "TRUE", "FALSE"})


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

    def positive_int(self, key: str, default: Any = MISSING, *, maximum: int, minimum: int = 1) -> Any:
        """A whole number in ``[minimum, maximum]`` (every number has an upper bound)."""
        value = self.get(key, int, default)
        if value is not None and value is not default:
            if value < minimum:
                self.fail(key, f"must be at least {minimum}, got {value}")
            if value > maximum:
                self.fail(key, f"must be at most {maximum:,}, got {value:,}")
        return value

    def days(self, key: str, default: Any = MISSING, *, minimum: int = 1) -> Any:
        """A number of days, at most ``MAX_DAYS``."""
        return self.positive_int(key, default, minimum=minimum, maximum=MAX_DAYS)

    def number(
        self, key: str, default: Any = MISSING, *, maximum: float, minimum: float = 0.0, open_min: bool = True
    ) -> Any:
        """A number in ``(minimum, maximum]`` (``[minimum, maximum]`` with ``open_min=False``)."""
        value = self.get(key, (int, float), default)
        if value is not None and value is not default:
            above_min = value > minimum if open_min else value >= minimum
            if not (above_min and value <= maximum):  # also refuses NaN
                interval = f"{'(' if open_min else '['}{minimum:g}, {maximum:g}]"
                self.fail(key, f"must be in {interval}, got {value}")
        return value

    def positive_number(self, key: str, default: Any = MISSING, *, maximum: float) -> Any:
        return self.number(key, default, maximum=maximum)

    def fraction(self, key: str, default: Any = MISSING) -> Any:
        """A share in ``(0, 1]``."""
        return self.number(key, default, maximum=1.0)

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
    with open(path, encoding="utf-8") as fh:
        doc = strict_yaml_load(fh.read(), path, document)
    return parse(doc, path)


def strict_yaml_load(text: str, source: str, document: str = "policy") -> Any:
    """``yaml.safe_load`` that refuses repeated keys and numbers that are not plain decimals."""
    try:
        node = yaml.compose(text, Loader=_COMPOSER)
    except yaml.YAMLError as exc:
        raise LifecycleConfigError(f"Invalid {document} {source}: not valid YAML: {exc}") from exc
    if node is None:
        return None
    _check_node(node, "top level", source, document, set())
    try:
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise LifecycleConfigError(f"Invalid {document} {source}: not valid YAML: {exc}") from exc


def _check_node(node: yaml.Node, where: str, source: str, document: str, seen: set[int]) -> None:
    """Walk the composed document: repeated keys and non-decimal numbers, named by their place."""
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            if key in lines:
                raise LifecycleConfigError(
                    f"Invalid {document} {source}: {where}, field '{key}': appears twice in one mapping "
                    f"(lines {lines[key]} and {line}); YAML would silently keep the last one"
                )
            lines[key] = line
            _check_scalar(value_node, f"{where}, field '{key}'", source, document)
            _check_node(value_node, _child(where, key), source, document, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_scalar(item, f"{where}[{index}]", source, document)
            _check_node(item, f"{where}[{index}]{_label(item)}", source, document, seen)


def _child(where: str, key: str) -> str:
    if where == "top level":
        return key
    return f"{where} {key}" if where.endswith((")", "]")) else f"{where}.{key}"


def _label(item: yaml.Node) -> str:
    """`` (rule 'sessions')``: list items are named the way the typed readers name them."""
    if isinstance(item, yaml.MappingNode):
        for key_node, value_node in item.value:
            key = getattr(key_node, "value", None)
            if key in ("id", "table", "bucket") and isinstance(value_node, yaml.ScalarNode):
                return f" ({'rule' if key == 'id' else key} '{value_node.value}')"
    return ""


def _check_scalar(node: yaml.Node, where: str, source: str, document: str) -> None:
    if not isinstance(node, yaml.ScalarNode):
        return
    text = str(node.value)
    problem = None
    if node.tag == _INT_TAG and not _PLAIN_INT.match(text):
        problem = (
            f"is not a plain decimal whole number (YAML 1.1 reads it as {_yaml11(node)!r}); write digits only"
        )
    elif node.tag == _FLOAT_TAG and not _PLAIN_FLOAT.match(text):
        problem = f"is not a plain decimal number (YAML 1.1 reads it as {_yaml11(node)!r})"
    elif node.tag == _BOOL_TAG and text not in _PLAIN_BOOL:
        problem = "is not true or false (YAML 1.1 reads yes/no/on/off as booleans); write true or false"
    if problem:
        raise LifecycleConfigError(
            f"Invalid {document} {source}: {where} (line {node.start_mark.line + 1}): {text!r} {problem}"
        )


def _yaml11(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node)
    except (yaml.YAMLError, ValueError):
        return "an error"
    finally:
        loader.dispose()
