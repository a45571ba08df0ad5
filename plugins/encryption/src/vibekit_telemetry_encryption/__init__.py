"""The ``encryption`` plugin: AES-256-GCM on the sensitive fields of every event before it is stored.

Enable with ``[security.encryption] enabled = true`` and a key: ``TELEMETRY_ENCRYPTION_KEY`` (64 hex
characters; ``telemetry keys generate`` makes one), ``key = {"$env" = "NAME"}``, or a ``passphrase``
with ``key_derivation = "scrypt"`` (or ``"pbkdf2"``) and a random salt kept in ``<data_dir>/encryption.salt``.
Enabling encryption without a key refuses to start.

The prompt, streamed text, label, error type, message and stack, and every string value in metadata (at any
depth) are encrypted with AES-256-GCM, an authenticated cipher: a changed byte makes decryption fail
loudly instead of yielding garbage.  (The TypeScript package uses AES-256-CTR, which has no integrity
check.)  Ids, type, category, action, agent, mode, timestamps, numeric values, status, metadata keys and
numbers stay in the clear, so filters, sessions, token counts and analytics keep working.  Each value is
stored as::

    enc:v2:<key id>:<event id>:<base64(nonce | ciphertext | tag)>

where the key id is the first 8 hex digits of the key's SHA-256, and the event id, the event's session id
and the field name are bound in as associated data, so a value moved to another row, session or field does
not decrypt.  Session summaries copy their events' values as they are; each value names the event it was
encrypted for, and a session decrypts it against that event id and its own session id, so a summary value
copied onto another session fails.  Values written before session binding (``enc:v1:``, bound to the event
and field only) still read; ``telemetry keys rotate`` upgrades them.

Reading is strict: a field that should be encrypted and is not (stored in clear, or with an unknown or
changed prefix) raises :class:`DecryptionError`, unless ``allow_plaintext = true`` lets rows stored before
encryption was turned on be read (and re-encrypted by ``telemetry keys rotate``).  Reads through the service
decrypt with the current key or any of ``old_keys``.  Text search cannot see encrypted text.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
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

from vibekit_telemetry import SESSION_LABELS, ConfigError, Session, TelemetryError, TelemetryEvent, hookimpl

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["DecryptionError", "EncryptionPlugin", "Keyring", "looks_encrypted"]

log = logging.getLogger("vibekit_telemetry.encryption")

#: What this version writes: values bound to their event, its session and the field.
PREFIX = "enc:v2:"
#: What versions before session binding wrote (bound to the event and field only); read, and upgraded by rotation.
LEGACY_PREFIX = "enc:v1:"
KEY_ENV = "TELEMETRY_ENCRYPTION_KEY"
TEXT_FIELDS = ("prompt", "stream_data", "label", "error_type", "error_message", "error_stack")
#: Top-level metadata keys kept in clear: the labels a session summary lifts into columns to filter by
#: (``get_sessions(kind=..., model=..., conversation_id=..., user_id=...)``), like agent and mode.
CLEAR_LABELS = frozenset(SESSION_LABELS)
#: The event fields a session's ``last_error`` may have been copied from (the message, or the type without one).
LAST_ERROR_FIELDS = ("error_message", "error_type")
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_UNKNOWN_VERSION = re.compile(r"enc:v\d+:")
#: What a clear error type may look like: v1 rows stored it in clear, and a clear label is no worse than a
#: changed category or status (which are clear by design); free text in clear is never accepted.
_LABEL = re.compile(r"\S{1,128}")


class DecryptionError(TelemetryError):
    """A stored value could not be decrypted, or should be encrypted and is not: a wrong or missing key, a row
    that was changed, or (without ``allow_plaintext``) a row stored before encryption was turned on."""


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
        self.legacy_read = 0

    def encrypt(self, plaintext: str, event_id: str, field: str, session_id: str | None = None) -> str:
        """``enc:v2:<key id>:<event id>:<base64(nonce | ciphertext | tag)>``, bound to the event, session and field."""
        nonce = os.urandom(12)
        sealed = self._current.encrypt(nonce, plaintext.encode("utf-8"), _bound_to(event_id, session_id, field))
        return f"{PREFIX}{self.current_id}:{event_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, value: str, field: str | tuple[str, ...], where: str, *, session_id: str | None,
                event_id: str | None = None) -> str:
        """The plaintext of ``value``, stored in ``field`` of a row of session ``session_id``.

        With ``event_id`` (an event's own row) the value must have been encrypted for that event; without
        it (a session summary) the value names its event and is authenticated against it.  ``field`` may
        be several names when a summary value can come from more than one event field.
        """
        if value.startswith(PREFIX):
            legacy = False
        elif value.startswith(LEGACY_PREFIX):
            legacy = True
        else:
            version = _UNKNOWN_VERSION.match(value)
            raise DecryptionError(
                f"{where}: the value is in a format this plugin does not read "
                f"({version.group(0) if version else value[:8]!r}...; it reads {PREFIX} and {LEGACY_PREFIX}): "
                "the row was changed, or a newer version of the plugin wrote it")
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
        for name in (field,) if isinstance(field, str) else field:
            associated = f"{owner}:{name}".encode() if legacy else _bound_to(owner, session_id, name)
            try:
                plaintext = cipher.decrypt(raw[:12], raw[12:], associated).decode("utf-8")
            except InvalidTag:
                continue
            if legacy:
                self.legacy_read += 1
            return plaintext
        if legacy:
            moved = "another field"
        elif event_id is None:
            moved = "another session or field"
        else:
            moved = "another field, or the event moved to another session"
        raise DecryptionError(f"{where}: the value does not authenticate with key {kid}: the row was changed "
                              f"(a byte of the value, or a value copied from {moved})")


def _sealed(value: Any) -> bool:
    """Whether a stored value is (or was made to look like) an encrypted one."""
    return isinstance(value, str) and (value.startswith("enc:v") or looks_encrypted(value))


def _bound_to(event_id: str, session_id: str | None, field: str) -> bytes:
    """The associated data of a v2 value: the event, its session and the field."""
    sid = session_id or ""
    # lengths first, so ids that contain ':' cannot make two different (event, session) pairs collide
    return f"v2:{len(event_id)}:{event_id}:{len(sid)}:{sid}:{field}".encode()


def looks_encrypted(value: str) -> bool:
    """Whether ``value`` has the shape of an encrypted value, whatever its prefix (``...:<key id>:<id>:<base64>``).

    Under ``allow_plaintext`` this keeps a value whose ``enc:`` prefix was changed from being read as
    plaintext (which would hand back the ciphertext).  Linear in the length, no backtracking.
    """
    head, sep, payload = value.rpartition(":")
    # 12 bytes of nonce and 16 of tag: at least 40 base64 characters
    if not sep or len(payload) < 40 or _BASE64.fullmatch(payload) is None:
        return False
    parts = head.split(":")
    return any(_KEY_ID.fullmatch(part) for part in parts[:-1])


ALGORITHM = "aes-256-gcm"


def _check_algorithm(_instance: Any, _attribute: Any, value: str) -> None:
    """Only AES-256-GCM; the seed's ``aes-256-ctr`` is refused with the reason and what to write."""
    if value == ALGORITHM:
        return
    if value in ("aes-256-ctr", "aes-ctr", "ctr", "aes-256-cbc", "aes-cbc", "cbc"):
        raise ConfigError(
            f"algorithm: {value!r} is not offered: it is unauthenticated (a changed or swapped byte decrypts to "
            f"wrong text without any error, and a value can be moved between rows unnoticed). This plugin encrypts "
            f"with AES-256-GCM, which detects both: write algorithm = {ALGORITHM!r}, or leave it out")
    raise ConfigError(f"algorithm: expected {ALGORITHM!r} (AES-256-GCM, authenticated), got {value!r}")


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
        algorithm: str = attrs.field(default="aes-256-gcm", converter=str.lower, validator=_check_algorithm)
        encrypt_metadata: bool = True
        #: Read values stored in clear (rows stored before encryption was turned on) instead of refusing them;
        #: ``telemetry keys rotate`` then encrypts them.  A clear value is not authenticated: turn this off again
        #: once rotation has finished.
        allow_plaintext: bool = False

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
        self.plaintext_read = 0

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
        """The batch with every sensitive value encrypted, bound to its event, session and field."""
        keyring = self.keyring
        assert keyring is not None
        out = []
        for event in events:
            fields = dict(event.__dict__)
            eid, sid = fields["id"], fields["session_id"]
            for name in TEXT_FIELDS:
                value = fields[name]
                if value:
                    fields[name] = keyring.encrypt(value, eid, name, sid)
            if self.config.encrypt_metadata and fields["metadata"]:
                fields["metadata"] = self._seal(fields["metadata"], eid, sid, keyring)
            out.append(TelemetryEvent.restore(fields))
        self.encrypted += len(events)
        return out

    def _seal(self, value: Any, eid: str, sid: str | None, keyring: Keyring, path: str = "metadata") -> Any:
        if isinstance(value, str):
            return keyring.encrypt(value, eid, path, sid) if value else value
        if isinstance(value, Mapping):
            return {k: v if path == "metadata" and k in CLEAR_LABELS else self._seal(v, eid, sid, keyring, f"{path}.{k}")
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._seal(v, eid, sid, keyring, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # -- reading -------------------------------------------------------------------------------

    def _reveal(self, value: Any, field: str | tuple[str, ...], where: str, keyring: Keyring, *,
                session_id: str | None, event_id: str | None = None, label: bool = False) -> Any:
        """The plaintext of a stored value that should be encrypted; anything else is an error.

        A value in clear is returned only under ``allow_plaintext`` (or, with ``label``, when it is a short
        label such as an error type stored before error types were encrypted).  A value with the shape of an
        encrypted value but another prefix is always an error: read as plaintext it would be the ciphertext.
        """
        if isinstance(value, str):
            if value.startswith("enc:v"):
                return keyring.decrypt(value, field, where, session_id=session_id, event_id=event_id)
            if looks_encrypted(value):
                raise DecryptionError(f"{where}: the value looks like an encrypted value whose {PREFIX!r} prefix "
                                      "was changed: the row was changed")
            if label and _LABEL.fullmatch(value):
                return value
        if self.config.allow_plaintext:
            self.plaintext_read += 1
            return value
        raise DecryptionError(
            f"{where}: the value is stored in clear, but with encryption on it must be encrypted: the row was "
            "changed, or it was stored before encryption was turned on (then set "
            "security.encryption.allow_plaintext = true and run `telemetry keys rotate`)")

    @hookimpl
    def after_read(self, events: list[TelemetryEvent]) -> list[TelemetryEvent]:
        """Events with their values decrypted; a value that does not decrypt, or that should be encrypted and
        is not, is an error naming the event, the field and what is wrong."""
        keyring = self.keyring
        assert keyring is not None
        out = []
        for event in events:
            fields = dict(event.__dict__)
            eid, sid = fields["id"], fields["session_id"]
            for name in TEXT_FIELDS:
                value = fields[name]
                if value:
                    # v1 stored error types in clear; an event is written at once, so one that holds a v2 value
                    # and a clear error type was edited
                    label = (name == "error_type" and isinstance(value, str) and not value.startswith("enc:")
                             and not _has_current_format(event))
                    fields[name] = self._reveal(value, name, f"event {eid} field {name}", keyring,
                                                session_id=sid, event_id=eid, label=label)
            if fields["metadata"]:
                fields["metadata"] = self._open(fields["metadata"], f"event {eid}", keyring, sid, eid)
            out.append(TelemetryEvent.restore(fields))
        self.decrypted += len(events)
        return out

    def _open(self, value: Any, owner: str, keyring: Keyring, sid: str | None, eid: str | None,
              path: str = "metadata") -> Any:
        if isinstance(value, str):
            if not value:
                return value
            if self.config.encrypt_metadata:
                return self._reveal(value, path, f"{owner} field {path}", keyring, session_id=sid, event_id=eid)
            # metadata is kept clear by choice: only values encrypted while it was not are decrypted
            if value.startswith((PREFIX, LEGACY_PREFIX)):
                return keyring.decrypt(value, path, f"{owner} field {path}", session_id=sid, event_id=eid)
            return value
        if isinstance(value, Mapping):
            return {k: v if path == "metadata" and k in CLEAR_LABELS and not _sealed(v)
                    else self._open(v, owner, keyring, sid, eid, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._open(v, owner, keyring, sid, eid, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    @hookimpl
    def after_read_sessions(self, sessions: list[Session]) -> list[Session]:
        """Sessions with their prompt, last error and metadata decrypted.

        A session summary holds values copied from its events as they were stored (the storage builds it
        from encrypted events).  Each value names the event it was encrypted for and is authenticated
        against that event, this session's id and the field, so a value copied from another session's
        summary (or from an event of another session) is an error.  Agent and mode are clear labels.
        """
        keyring = self.keyring
        assert keyring is not None
        out = []
        for session in sessions:
            sid = session.id
            changes: dict[str, Any] = {}
            if session.prompt:
                changes["prompt"] = self._reveal(session.prompt, "prompt", f"session {sid} field prompt", keyring,
                                                 session_id=sid)
            if session.last_error:
                # the last error event's message, or its type when it had none (v1 rows kept the type in clear)
                changes["last_error"] = self._reveal(session.last_error, LAST_ERROR_FIELDS,
                                                     f"session {sid} field last_error", keyring, session_id=sid,
                                                     label=True)
            if session.metadata:
                changes["metadata"] = self._open(dict(session.metadata), f"session {sid}", keyring, sid, None)
            out.append(attrs.evolve(session, **changes) if changes else session)
        return out

    # -- rotation ------------------------------------------------------------------------------

    def _stale(self, event: TelemetryEvent) -> bool:
        """Whether a stored event holds a sensitive value not encrypted with the current key in the current
        format (an old key, the v1 format without session binding, or clear)."""
        prefix = f"{PREFIX}{self.keyring.current_id}:"  # type: ignore[union-attr]
        fields = event.__dict__
        for name in TEXT_FIELDS:
            value = fields[name]
            if value and not (isinstance(value, str) and value.startswith(prefix)):
                return True
        sealed = {k: v for k, v in fields["metadata"].items() if k not in CLEAR_LABELS or _sealed(v)}
        return self.config.encrypt_metadata and _any_string(sealed, lambda v: not v.startswith(prefix))

    def rotate(self, service: TelemetryService, *, batch: int = 500, max_batches: int | None = None) -> dict[str, Any]:
        """Re-encrypt every stored event (and its session) that is not under the current key, resumably.

        Rows under an old key (which must be in ``old_keys``), rows in the v1 format (not bound to their
        session) and, with ``allow_plaintext``, rows stored before encryption was on are rewritten with the
        current key in the current format through the storage plugins' ``rewrite`` hook, which also rebuilds
        their sessions' summaries.  Without ``allow_plaintext`` a value in clear stops the rotation with a
        :class:`DecryptionError` naming it, so a value someone put in clear is never sealed as if it were
        genuine.  With ``allow_plaintext``, a finished rotation also runs the storage plugins' ``optimize``
        (merging the full-text index, which still holds the words of the clear rows it indexed).  Progress
        is kept in ``<data_dir>/encryption.rotation``, so an interrupted rotation continues where it stopped.
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
                # decrypt with whichever key and format made them (old rows may be clear, if allowed); rewrite
                # encrypts anew
                rewritten += service.rewrite(self.after_read(stale))
            if len(events) < batch:
                break
            cursor = encode_cursor(events[-1])
            # the database may live outside data_dir, which then need not exist yet
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(cursor + "\n")
            flt = attrs.evolve(flt, cursor=cursor)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                return {"scanned": scanned, "rewritten": rewritten, "finished": False, "key_id": keyring.current_id}
        marker.unlink(missing_ok=True)
        if self.config.allow_plaintext:
            # a full-text index keeps the words of the clear rows it indexed (SQLite's FTS5 holds them in its
            # delete markers until a merge): compact the storage so they leave the file
            service.optimize()
        service.host.each("cache_invalidate", _raise, hooks=None)
        service.audit("rotate", "encryption keys", {"key_id": keyring.current_id, "scanned": scanned,
                                                     "rewritten": rewritten})
        return {"scanned": scanned, "rewritten": rewritten, "finished": True, "key_id": keyring.current_id}

    @hookimpl
    def health(self) -> dict[str, Any]:
        """The current key id and counts (never a key).

        ``legacy_read`` counts v1 values read (not bound to their session) and ``plaintext_read`` clear values
        read under ``allow_plaintext``: either above zero means ``telemetry keys rotate`` has work to do.
        """
        return {"healthy": self.keyring is not None, "issues": [] if self.keyring else ["no key"],
                "algorithm": "AES-256-GCM", "key_id": self.keyring.current_id if self.keyring else None,
                "encrypted": self.encrypted, "decrypted": self.decrypted,
                "legacy_read": self.keyring.legacy_read if self.keyring else 0,
                "plaintext_read": self.plaintext_read, "allow_plaintext": self.config.allow_plaintext}

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
            """Re-encrypt stored rows under the current key and format (list the old key in old_keys first;
            set allow_plaintext to encrypt rows stored before encryption was on); resumable."""
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


def _has_current_format(event: TelemetryEvent) -> bool:
    """Whether a stored event holds any value in the current (v2) format."""
    fields = event.__dict__
    return (any(isinstance(fields[n], str) and fields[n].startswith(PREFIX) for n in TEXT_FIELDS)
            or _any_string(fields["metadata"], lambda v: v.startswith(PREFIX)))


def _raise(plugin: str, exc: BaseException) -> None:
    raise exc
