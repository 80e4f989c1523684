"""SMTP AUTH (PLAIN, LOGIN) for the intake, from `[relay].auth_file`; offered only over TLS.

The auth file has one user per line, ``#`` starts a comment::

    alice:pbkdf2-sha256$600000$<salt, base64>$<derived key, base64>

Make a line with ``python -c "from relay.intake.auth import hash_password as h; print('alice:' +
h('secret'))"``. PBKDF2-HMAC-SHA256 comes with `hashlib`, so no crypt or bcrypt library is needed;
the iteration count is stored per line, so it can be raised later without breaking old lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.smtp import AuthResult, LoginPassword

from relay.errors import ConfigError

_log = structlog.get_logger("relay.intake.auth")

SCHEME = "pbkdf2-sha256"
DEFAULT_ITERATIONS = 600_000


@dataclass(frozen=True, slots=True)
class PasswordHash:
    iterations: int
    salt: bytes
    key: bytes

    def matches(self, password: bytes) -> bool:
        derived = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        return hmac.compare_digest(derived, self.key)


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The auth-file form of `password`: ``pbkdf2-sha256$ITER$SALT$KEY``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{SCHEME}${iterations}${b64(salt).decode()}${b64(key).decode()}"


def parse_hash(text: str) -> PasswordHash:
    """Parse ``pbkdf2-sha256$ITER$SALT$KEY``; ValueError saying what is wrong."""
    parts = text.strip().split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"expected '{SCHEME}$iterations$salt$key'")
    if not parts[1].isdigit() or not 1 <= int(parts[1]) <= 10_000_000:
        raise ValueError("iterations must be a whole number from 1 to 10000000")
    try:
        salt = base64.b64decode(parts[2], validate=True)
        key = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        raise ValueError("salt and key must be base64") from None
    if not salt or len(key) != 32:
        raise ValueError("empty salt or a key that is not 32 bytes")
    return PasswordHash(int(parts[1]), salt, key)


def parse_auth_file(text: str, source: str = "[relay].auth_file") -> dict[str, PasswordHash]:
    """Users and their password hashes; `ConfigError` naming the line on a bad one."""
    users: dict[str, PasswordHash] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"{source}: line {number}: expected 'user:{SCHEME}$...'")
        try:
            users[user] = parse_hash(hashed)
        except ValueError as exc:
            raise ConfigError(f"{source}: line {number}: {exc}") from None
    return users


def load_auth_file(path: str | Path) -> dict[str, PasswordHash]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[relay].auth_file: cannot read {str(path)!r}: {exc}") from None
    return parse_auth_file(text)


class PasswordAuthenticator:
    """An aiosmtpd ``authenticator``: checks PLAIN/LOGIN credentials against the auth file."""

    def __init__(self, users: Mapping[str, PasswordHash]) -> None:
        self.users = dict(users)
        # An unknown user costs what a known one costs (no timing oracle for user names): the
        # highest iteration count in the file, or the default when there is no user.
        iterations = max((u.iterations for u in self.users.values()), default=DEFAULT_ITERATIONS)
        self.dummy = PasswordHash(iterations, secrets.token_bytes(16), secrets.token_bytes(32))

    def check(self, login: bytes, password: bytes) -> bool:
        try:
            user = login.decode("utf-8")
        except UnicodeDecodeError:
            return False
        entry = self.users.get(user)
        if entry is None:
            self.dummy.matches(password)
            return False
        return entry.matches(password)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = self.check(auth_data.login, auth_data.password)
        # A failure is logged at warning by the server, which also counts and throttles it.
        (_log.info if ok else _log.warning)(
            "intake.auth",
            mechanism=mechanism,
            user=auth_data.login.decode("utf-8", "replace")[:64],
            success=ok,
            client=str(session.peer[0]) if session.peer else "",
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
