"""The ``encryption`` plugin: AES-256-GCM on the sensitive fields of every event before it is stored.

Enable with ``[security.encryption] enabled = true`` and a key: ``TELEMETRY_ENCRYPTION_KEY`` (64 hex
characters; ``telemetry keys generate`` makes one), ``key = {"$env" = "NAME"}``, or a ``passphrase``
with ``key_derivation = "scrypt"`` (or ``"pbkdf2"``) and a random salt kept in ``<data_dir>/encryption.salt``.
Enabling encryption without a key refuses to start.

The prompt, streamed text, label, error message and stack, and every string value in metadata (at any
depth) are encrypted with AES-256-GCM, an authenticated cipher: a changed byte makes decryption fail
loudly instead of yielding garbage.  (The TypeScript package uses AES-256-CTR, which has no integrity
check.)  Ids, type, category, action, timestamps, numeric values, status, metadata keys and numbers stay
in the clear, so filters, sessions, token counts and analytics keep working.  Each value is stored as::

    enc:v1:<key id>:<event id>:<base64(nonce | ciphertext | tag)>

where the key id is the first 8 hex digits of the key's SHA-256, and the event id and field name are
bound in as associated data, so a value moved to another row or field does not decrypt.  Session
summaries (which copy values from their events) decrypt through the event id each value names.  Reads through
the service decrypt with the current key or any of ``old_keys``.  Text search cannot see encrypted text.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vibekit_telemetry import ConfigError, Session, TelemetryError, TelemetryEvent, hookimpl

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["DecryptionError", "EncryptionPlugin", "Keyring"]

log = logging.getLogger("vibekit_telemetry.encryption")

PREFIX = "enc:v1:"
KEY_ENV = "TELEMETRY_ENCRYPTION_KEY"
TEXT_FIELDS = ("prompt", "stream_data", "label", "error_message", "error_stack")


class DecryptionError(TelemetryError):
    """A stored value could not be decrypted: wrong or missing key, or the row was changed."""


def key_id(key: bytes) -> str:
    """The public name of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def parse_key(text: str, where: str) -> bytes:
    """A 256-bit key from 64 hex characters."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: an encryption key is 64 hex characters (telemetry keys generate)") from None
    if len(key) != 32:
        raise ConfigError(f"{where}: an encryption key is 64 hex characters (32 bytes), got {len(key)} bytes")
    return key


class Keyring:
    """The current key (for writing) and every key that may read."""

    def __init__(self, current: bytes, old: list[bytes] | tuple[bytes, ...] = ()) -> None:
        self.current_id = key_id(current)
        self._ciphers = {key_id(k): AESGCM(k) for k in (current, *old)}
        self._current = self._ciphers[self.current_id]

    def encrypt(self, plaintext: str, event_id: str, field: str) -> str:
        """``enc:v1:<key id>:<event id>:<base64(nonce | ciphertext | tag)>``, bound to the event and field."""
        nonce = os.urandom(12)
        sealed = self._current.encrypt(nonce, plaintext.encode("utf-8"), f"{event_id}:{field}".encode())
        return f"{PREFIX}{self.current_id}:{event_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, value: str, field: str, where: str, *, event_id: str | None = None) -> str:
        """The plaintext of ``value`` stored in ``field``; with ``event_id``, it must belong to that event."""
        try:
            kid, rest = value[len(PREFIX):].split(":", 1)
            owner, payload = rest.rsplit(":", 1)
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            raise DecryptionError(f"{where}: the stored value is not a well-formed encrypted value") from None
        if event_id is not None and owner != event_id:
            raise DecryptionError(f"{where}: the value was encrypted for event {owner}: the row was changed")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(f"{where}: encrypted with key {kid}, which is neither the current key "
                                  f"({self.current_id}) nor one of old_keys")
        try:
            return cipher.decrypt(raw[:12], raw[12:], f"{owner}:{field}".encode()).decode("utf-8")
        except InvalidTag:
            raise DecryptionError(f"{where}: the value does not authenticate with key {kid}: "
                                  "the row was changed") from None


class EncryptionPlugin:
    """Encrypt sensitive fields on the way to storage, decrypt them on the way back."""

    name = "encryption"

    @attrs.frozen
    class Config:
        """Options of ``[security.encryption]``."""

        key: str | None = None
        passphrase: str | None = None
        key_derivation: Literal["scrypt", "pbkdf2"] = "scrypt"
        old_keys: tuple[str, ...] = ()
        salt_path: str | None = None
        algorithm: Literal["aes-256-gcm"] = "aes-256-gcm"
        encrypt_metadata: bool = True

    def __init__(self, config: EncryptionPlugin.Config | None = None) -> None:
        self.config = config or EncryptionPlugin.Config()
        self.keyring: Keyring | None = None
        # the configuration wins (a key, then a passphrase, derived at startup); the environment is the default
        if self.config.key is not None:
            self.keyring = self._keyring(self.config.key, "security.encryption.key")
        elif self.config.passphrase is None and os.environ.get(KEY_ENV):
            self.keyring = self._keyring(os.environ[KEY_ENV], KEY_ENV)
        elif self.config.passphrase is None:
            raise ConfigError(f"encryption is enabled but there is no key: set {KEY_ENV} (64 hex characters, "
                              "`telemetry keys generate` makes one), security.encryption.key, or a passphrase")
        self.encrypted = 0
        self.decrypted = 0

    def _keyring(self, key_text: str, where: str) -> Keyring:
        old = [parse_key(k, "security.encryption.old_keys") for k in self.config.old_keys]
        return Keyring(parse_key(key_text, where), old)

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Derive the key from the passphrase (the salt is created once, next to the database)."""
        if self.keyring is not None:
            return
        assert self.config.passphrase is not None
        salt_file = Path(self.config.salt_path) if self.config.salt_path else service.data_dir / "encryption.salt"
        if salt_file.exists():
            salt = bytes.fromhex(salt_file.read_text().strip())
        else:
            salt = secrets.token_bytes(16)
            salt_file.parent.mkdir(parents=True, exist_ok=True)
            salt_file.write_text(salt.hex() + "\n")
        password = self.config.passphrase.encode("utf-8")
        if self.config.key_derivation == "scrypt":
            key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(password)
        else:
            key = PBKDF2HMAC(algorithm=SHA256(), length=32, salt=salt, iterations=600_000).derive(password)
        old = [parse_key(k, "security.encryption.old_keys") for k in self.config.old_keys]
        self.keyring = Keyring(key, old)

    # -- writing -------------------------------------------------------------------------------

    @hookimpl
    def before_store(self, events: list[TelemetryEvent]) -> list[TelemetryEvent]:
        """The batch with every sensitive value encrypted."""
        keyring = self.keyring
        assert keyring is not None
        out = []
        for event in events:
            fields = dict(event.__dict__)
            eid = fields["id"]
            for name in TEXT_FIELDS:
                value = fields[name]
                if value:
                    fields[name] = keyring.encrypt(value, eid, name)
            if self.config.encrypt_metadata and fields["metadata"]:
                fields["metadata"] = self._seal(fields["metadata"], eid, keyring)
            out.append(TelemetryEvent.restore(fields))
        self.encrypted += len(events)
        return out

    def _seal(self, value: Any, eid: str, keyring: Keyring, path: str = "metadata") -> Any:
        if isinstance(value, str):
            return keyring.encrypt(value, eid, path) if value else value
        if isinstance(value, Mapping):
            return {k: self._seal(v, eid, keyring, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._seal(v, eid, keyring, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # -- reading -------------------------------------------------------------------------------

    @hookimpl
    def after_read(self, events: list[TelemetryEvent]) -> list[TelemetryEvent]:
        """Events with their values decrypted; a value that does not decrypt is an error naming the row and key."""
        keyring = self.keyring
        assert keyring is not None
        out = []
        for event in events:
            fields = dict(event.__dict__)
            eid = fields["id"]
            for name in TEXT_FIELDS:
                value = fields[name]
                if isinstance(value, str) and value.startswith(PREFIX):
                    fields[name] = keyring.decrypt(value, name, f"event {eid} field {name}", event_id=eid)
            if fields["metadata"]:
                fields["metadata"] = self._open(fields["metadata"], eid, keyring)
            out.append(TelemetryEvent.restore(fields))
        self.decrypted += len(events)
        return out

    def _open(self, value: Any, eid: str | None, keyring: Keyring, path: str = "metadata") -> Any:
        if isinstance(value, str) and value.startswith(PREFIX):
            where = f"event {eid} field {path}" if eid is not None else f"session field {path}"
            return keyring.decrypt(value, path, where, event_id=eid)
        if isinstance(value, Mapping):
            return {k: self._open(v, eid, keyring, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._open(v, eid, keyring, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    @hookimpl
    def after_read_sessions(self, sessions: list[Session]) -> list[Session]:
        """Sessions with their prompt, last error and metadata decrypted.

        A session summary holds values copied from its events; each value names the event it was
        encrypted for, and is authenticated against that event and field.
        """
        keyring = self.keyring
        assert keyring is not None
        out = []
        for session in sessions:
            changes: dict[str, Any] = {}
            if session.prompt and session.prompt.startswith(PREFIX):
                changes["prompt"] = keyring.decrypt(session.prompt, "prompt", f"session {session.id} prompt")
            if session.last_error and session.last_error.startswith(PREFIX):
                changes["last_error"] = keyring.decrypt(session.last_error, "error_message",
                                                        f"session {session.id} last_error")
            if session.metadata:
                changes["metadata"] = self._open(dict(session.metadata), None, keyring)
            out.append(attrs.evolve(session, **changes) if changes else session)
        return out

    # -- rotation ------------------------------------------------------------------------------

    def _stale(self, event: TelemetryEvent) -> bool:
        """Whether a stored event holds a sensitive value not encrypted with the current key."""
        prefix = f"{PREFIX}{self.keyring.current_id}:"  # type: ignore[union-attr]
        fields = event.__dict__
        for name in TEXT_FIELDS:
            value = fields[name]
            if value and not value.startswith(prefix):
                return True
        return self.config.encrypt_metadata and _any_string(fields["metadata"], lambda v: not v.startswith(prefix))

    def rotate(self, service: TelemetryService, *, batch: int = 500, max_batches: int | None = None) -> dict[str, Any]:
        """Re-encrypt every stored event (and its session) that is not under the current key, resumably.

        Rows under an old key (which must be in ``old_keys``) and rows stored before encryption was on are
        rewritten with the current key through the storage plugins' ``rewrite`` hook.  Progress is kept in
        ``<data_dir>/encryption.rotation``, so an interrupted rotation continues where it stopped.
        """
        from vibekit_telemetry import QueryFilter, encode_cursor

        keyring = self.keyring
        assert keyring is not None
        if not service.host.impls("rewrite"):
            raise TelemetryError("no storage plugin can rewrite stored rows (the rewrite hook); nothing was changed")
        marker = service.data_dir / "encryption.rotation"
        cursor = marker.read_text().strip() or None if marker.exists() else None
        service.flush()
        flt = QueryFilter(order="asc", limit=batch, cursor=cursor)
        scanned = rewritten = batches = 0
        while True:
            _, events = service.host.first("query", filter=flt)
            events = events or []
            scanned += len(events)
            stale = [e for e in events if self._stale(e)]
            if stale:
                # decrypt with whichever key made them (old rows may be plaintext); rewrite encrypts anew
                rewritten += service.rewrite(self.after_read(stale))
            if len(events) < batch:
                break
            cursor = encode_cursor(events[-1])
            marker.write_text(cursor + "\n")
            flt = attrs.evolve(flt, cursor=cursor)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                return {"scanned": scanned, "rewritten": rewritten, "finished": False, "key_id": keyring.current_id}
        marker.unlink(missing_ok=True)
        service.host.each("cache_invalidate", _raise, hooks=None)
        service.audit("rotate", "encryption keys", {"key_id": keyring.current_id, "scanned": scanned,
                                                     "rewritten": rewritten})
        return {"scanned": scanned, "rewritten": rewritten, "finished": True, "key_id": keyring.current_id}

    @hookimpl
    def health(self) -> dict[str, Any]:
        """The current key id and counts (never a key)."""
        return {"healthy": self.keyring is not None, "issues": [] if self.keyring else ["no key"],
                "algorithm": "AES-256-GCM", "key_id": self.keyring.current_id if self.keyring else None,
                "encrypted": self.encrypted, "decrypted": self.decrypted}

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry keys generate`` and ``telemetry keys rotate``."""
        import click

        @cli.group(name="keys")
        def keys() -> None:
            """Encryption keys for the encryption plugin."""

        @keys.command()
        @click.option("--batch", default=500, show_default=True, help="Events re-encrypted per transaction.")
        @click.pass_context
        def rotate(ctx: click.Context, batch: int) -> None:
            """Re-encrypt stored rows under the current key (list the old key in old_keys first); resumable."""
            from vibekit_telemetry import TelemetryService

            state = ctx.find_root().obj
            with TelemetryService(getattr(state, "config_path", None)) as service:
                plugin = service.host.meta.get("encryption", {}).get("object")
                if plugin is None:
                    raise click.ClickException("encryption is not enabled in this configuration")
                try:
                    result = plugin.rotate(service, batch=batch)
                except TelemetryError as exc:
                    raise click.ClickException(str(exc)) from None
            click.echo(f"scanned {result['scanned']:,} events, re-encrypted {result['rewritten']:,} "
                       f"under key {result['key_id']}")

        @keys.command()
        def generate() -> None:
            """Print a new random 256-bit key (64 hex characters) and its key id."""
            key = secrets.token_bytes(32)
            click.echo(key.hex())
            click.echo(f"key id: {key_id(key)}  (export {KEY_ENV}=<the key above>)", err=True)


def _any_string(value: Any, test: Any) -> bool:
    if isinstance(value, str):
        return bool(value) and test(value)
    if isinstance(value, Mapping):
        return any(_any_string(v, test) for v in value.values())
    if isinstance(value, list):
        return any(_any_string(v, test) for v in value)
    return False


def _raise(plugin: str, exc: BaseException) -> None:
    raise exc
