"""Keyed hashes and sealed tokens of a subject id, so the ledger never holds the id in clear.

One secret (the ``erasure_hmac`` connection's password, or the ``erasure_hmac_key`` Variable) gives:

- ``subject_hash``: HMAC-SHA256 of the subject id, the ledger's stable handle on a person;
- ``seal``/``unseal``: a Fernet token of the id under a key derived from the secret with HKDF,
  which lets a replay after a backup restore find the id again. Deleting or rotating the secret
  makes every token unreadable (crypto-shredding the ledger's link to people).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError

HMAC_KEY_VARIABLE = "erasure_hmac_key"
MIN_KEY_LENGTH = 32
HASH_PREFIX_LENGTH = 12
_FERNET_INFO = b"data-lifecycle/erasure-ledger/subject-token/v1"


@dataclass(frozen=True)
class SubjectKeys:
    """Hashing and sealing of subject ids with one secret.

    :param secret: the HMAC key (at least 32 characters).
    :param namespace: binds hashes to the subject kind, e.g. ``app.users``.
    """

    secret: bytes = field(repr=False)
    namespace: str = "app.users"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_LENGTH:
            raise LifecycleConfigError(
                f"The erasure HMAC key must be at least {MIN_KEY_LENGTH} characters long; refusing a weak key"
            )

    def subject_hash(self, user_id: int) -> str:
        return self.label_hash(f"{self.namespace}:{int(user_id)}")

    def label_hash(self, label: str) -> str:
        return hmac.new(self.secret, label.encode(), hashlib.sha256).hexdigest()

    def seal(self, user_id: int) -> str:
        return self._fernet().encrypt(str(int(user_id)).encode()).decode()

    def unseal(self, token: str, expected_hash: str) -> int:
        """The id inside ``token``; refuses a token whose id does not hash to ``expected_hash``."""
        from cryptography.fernet import InvalidToken

        try:
            user_id = int(self._fernet().decrypt(token.encode()).decode())
        except (InvalidToken, ValueError) as exc:
            raise LifecycleConfigError(
                f"Ledger token of subject {expected_hash[:HASH_PREFIX_LENGTH]} cannot be read with the "
                "current key (rotated or wrong key?)"
            ) from exc
        if not hmac.compare_digest(self.subject_hash(user_id), expected_hash):
            raise LifecycleConfigError(
                f"Ledger token of subject {expected_hash[:HASH_PREFIX_LENGTH]} does not match its hash"
            )
        return user_id

    def _fernet(self) -> Any:
        from cryptography.fernet import Fernet
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_FERNET_INFO).derive(self.secret)
        return Fernet(base64.urlsafe_b64encode(derived))


def load_subject_keys(conn_id: str, namespace: str) -> SubjectKeys:
    """Read the secret from the connection's password, else from the ``erasure_hmac_key`` Variable."""
    from airflow.sdk import BaseHook, Variable

    secret: str | None = None
    try:
        secret = BaseHook.get_connection(conn_id).password
    except Exception:  # a missing connection surfaces differently by context
        secret = None
    if not secret:
        secret = Variable.get(HMAC_KEY_VARIABLE, default=None)
    if not secret:
        raise LifecycleConfigError(
            f"No erasure HMAC key: set the password of connection '{conn_id}' "
            f"or the Variable '{HMAC_KEY_VARIABLE}' (from the secrets backend)"
        )
    return SubjectKeys(secret=secret.encode(), namespace=namespace)
