"""No credentials in the repository: every file git knows about (tracked, or new and not ignored) is
scanned for key patterns. Slack and AWS secrets belong in Airflow connections, from the secrets
backend; local values point at loopback and hold no secret.

The scanner is itself tested on planted keys. They are assembled at run time so that this file
does not match its own patterns.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 2 * 1024 * 1024

_BEGIN = "-" * 5 + "BEGIN"
PATTERNS: dict[str, re.Pattern[str]] = {
    "aws-access-key-id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    "aws-secret-access-key": re.compile(
        r"(?i)aws_?secret_?access_?key\s*[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
    ),
    "private-key": re.compile(
        _BEGIN + r" (?:(?:RSA|EC|DSA|OPENSSH|PGP|ENCRYPTED) )?PRIVATE KEY(?: BLOCK)?-----"
    ),
    "slack-token": re.compile(r"\bxox[abposr]-[0-9A-Za-z][0-9A-Za-z-]{8,}"),
    "slack-webhook-url": re.compile(
        r"hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{6,}/[AB][A-Z0-9]{6,}/[A-Za-z0-9]{16,}"
    ),
    "password-in-url": re.compile(
        r"\b[a-z][a-z0-9+.-]*://(?P<user>[^\s:/@'\"<>]+):(?P<password>[^\s@/'\"<>]+)@(?P<host>[^\s/:'\"<>]+)"
    ),
}
# Values that are obviously not secrets: documentation examples and local placeholders.
PLACEHOLDER_PASSWORDS = frozenset({"testing", "password", "pass", "secret", "changeme", "xxx", "***", "x"})
LOCAL_HOSTS = re.compile(r"^(?:127\.0\.0\.1|localhost|[\w.-]*example(?:\.\w+)?|\[::1\])$")
TEMPLATED = re.compile(r"^(?:\$\{?\w+\}?|\{\{?.*\}?\}|<[^>]*>|%\(\w+\)s|\*+)$")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} ({self.excerpt})"


def _masked(value: str) -> str:
    return value[:6] + "..." if len(value) > 6 else "..."


def find_secrets(text: str, path: str = "<text>") -> list[Finding]:
    """Every secret-looking string in ``text``, with its line; documentation examples excepted."""
    findings = []
    for kind, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            value = match.group(0)
            if "EXAMPLE" in value:
                continue
            if kind == "password-in-url":
                password, host = match.group("password"), match.group("host")
                if (
                    password.lower() in PLACEHOLDER_PASSWORDS
                    or TEMPLATED.match(password)
                    or LOCAL_HOSTS.match(host)
                ):
                    continue
            line = text.count("\n", 0, match.start()) + 1
            findings.append(Finding(path, line, kind, _masked(value)))
    return findings


def repository_files() -> list[Path]:
    """Tracked files and new files that are not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def scan(paths: list[Path]) -> list[Finding]:
    findings = []
    for path in paths:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        findings += find_secrets(
            data.decode("utf-8", "replace"),
            str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        )
    return findings


def test_repository_holds_no_secrets() -> None:
    files = repository_files()
    assert len(files) > 50, "git listed too few files: is this the project's checkout?"
    findings = scan(files)
    assert not findings, "possible secrets in the repository:\n" + "\n".join(map(str, findings))


def _planted() -> list[tuple[str, str]]:
    """Realistic-looking (invented) credentials, assembled here."""
    upper = "QWERTYUIOPASDFGH"
    return [
        ("aws-access-key-id", "aws_access_key_id = " + "AKIA" + upper),
        ("aws-access-key-id", '{"AccessKeyId": "' + "ASIA" + upper[::-1] + '"}'),
        ("aws-secret-access-key", "aws_secret_access_key=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "zq9Lm3Np7R"),
        ("private-key", _BEGIN + " RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n"),
        ("private-key", _BEGIN + " OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"),
        ("slack-token", "token: " + "xoxb" + "-2718281828-3141592653-Zq9Lm3Np7RtY"),
        ("slack-token", "SLACK=" + "xoxp" + "-1234567890-0987654321-abcdefabcdef"),
        (
            "slack-webhook-url",
            "https://hooks." + "slack.com/services/" + "T0A1B2C3D/B4E5F6G7H/" + "q1W2e3R4t5Y6u7I8o9P0aSdF",
        ),
        ("password-in-url", "postgresql://cleanup:" + "Zq9-Lm3Np7RtY" + "@db.prod.internal:5432/app"),
        ("password-in-url", "sql_alchemy_conn = mysql://airflow:" + "s3cr3tP4ss" + "@10.1.2.3/airflow"),
    ]


@pytest.mark.parametrize(
    ("kind", "text"), _planted(), ids=[f"{k}-{i}" for i, (k, _) in enumerate(_planted())]
)
def test_scanner_catches_a_planted_secret(kind: str, text: str) -> None:
    found = find_secrets("first line\n" + text + "\nlast line")
    assert [f.kind for f in found] == [kind]
    assert found[0].line == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", id="aws-documentation-example"),
        pytest.param("http://testing:testing@127.0.0.1:5055", id="moto-on-loopback"),
        pytest.param("postgresql+psycopg://lifecycle@127.0.0.1:55433/airflow_meta", id="no-password"),
        pytest.param("postgresql://user:password@localhost/db", id="placeholder-password"),
        pytest.param("postgresql://app:${DB_PASSWORD}@db.internal/app", id="templated-password"),
        pytest.param("https://user:<password>@host.internal/path", id="angle-placeholder"),
        pytest.param('"password": "T000/B000/local"', id="local-slack-webhook-path"),
        pytest.param("https://hooks.slack.com/services/T000/B000/XXXX", id="slack-doc-placeholder"),
        pytest.param("xoxb-", id="bare-token-prefix"),
    ],
)
def test_scanner_ignores_placeholders(text: str) -> None:
    assert find_secrets(text) == []


def test_scanner_reports_a_planted_file(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text("WEBHOOK = 'ok'\nKEY = '" + "AKIA" + "Z" * 16 + "'\n")
    (tmp_path / "image.bin").write_bytes(b"\0\1" + ("AKIA" + "Z" * 16).encode())
    findings = scan(sorted(tmp_path.iterdir()))
    assert [(Path(f.path).name, f.line, f.kind) for f in findings] == [
        ("settings.py", 2, "aws-access-key-id")
    ]
    assert "Z" * 16 not in str(findings[0]), "a report must not repeat the secret"
