"""The ``compliance`` plugin: GDPR and CCPA duties over the stored telemetry.

``[compliance] enabled = true, regulations = ["gdpr", "ccpa"], retention_days = 90`` (or
``CompliancePlugin(regulations=["gdpr", "ccpa"], retention_days=90)`` in ``plugins=[...]``, with the
seed's ``retentionDays=90`` as well).  The seed's per-regulation form works too, in days as the seed
says: ``[compliance.gdpr] enabled = true, anonymize_after = 30, delete_after = 90`` (``anonymizeAfter``,
``deleteAfter``), and the same under ``ccpa``.  An enabled regulation joins ``regulations``; its
``delete_after`` and ``anonymize_after`` are enforced like ``retention_days`` and ``anonymize_after``,
the shortest of all given periods winning, since each regulation's limit must hold:

* **Retention**: events older than ``retention_days`` are deleted on a schedule (checked every
  ``check_interval``), through ``telemetry.clean`` so analytics and the audit trail follow.
* **Anonymisation**: events older than ``anonymize_after`` days lose their free text (prompt,
  streamed text, label, error message and stack) and the metadata keys that identify a user
  (``user_keys``), rewritten in place through the storage plugins' ``rewrite`` hook.
* **Erasure** (right to be forgotten): ``erase_user(user_id)`` / ``telemetry compliance erase --user-id U``
  deletes every event whose metadata names the user under one of ``user_keys``, and every other event of
  their sessions.
* **Access**: ``export_user(user_id, output)`` / ``telemetry compliance export --user-id U`` writes the
  user's events and sessions as JSON lines.
* **Minimisation**: ``exclude_fields`` (``prompt``, ``metadata.ip`` ...) are dropped before an event is
  queued; ``include_only`` keeps only the listed metadata keys.

Each of these actions is recorded in the audit trail when the audit plugin is on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import attrs
import orjson

from vibekit_telemetry import ConfigError, Session, TelemetryEvent, hookimpl, now_ms, span_ms
from vibekit_telemetry.config import plugin_options

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["CompliancePlugin"]

log = logging.getLogger("vibekit_telemetry.compliance")

TEXT_FIELDS = ("prompt", "stream_data", "label", "error_message", "error_stack")
_TOP_LEVEL = frozenset((*TEXT_FIELDS, "action", "agent", "mode", "parent_session_id"))


def _days(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{name}: expected a number of days (0 or more), got {value!r}")


@attrs.frozen
class RegulationPolicy:
    """The seed's ``compliance.gdpr`` / ``compliance.ccpa``: periods in days."""

    enabled: bool = True
    anonymize_after: float | None = None
    delete_after: float | None = None

    def __attrs_post_init__(self) -> None:
        _days("anonymize_after", self.anonymize_after)
        _days("delete_after", self.delete_after)


def _shortest(*days: float | None) -> float | None:
    given = [d for d in days if d is not None]
    return min(given) if given else None


class CompliancePlugin:
    """Retention, anonymisation, erasure, access and minimisation."""

    name = "compliance"

    @attrs.frozen
    class Config:
        """Options of ``[compliance]`` (or ``[security.compliance]``)."""

        regulations: tuple[Literal["gdpr", "ccpa"], ...] = ("gdpr",)
        retention_days: float | None = None
        anonymize_after: float | None = None
        user_keys: tuple[str, ...] = ("user_id", "user", "userId", "email", "customer_id", "account_id")
        exclude_fields: tuple[str, ...] = ()
        include_only: tuple[str, ...] | None = None
        check_interval: str = "1h"
        gdpr: RegulationPolicy | None = None
        ccpa: RegulationPolicy | None = None

        def __attrs_post_init__(self) -> None:
            _days("retention_days", self.retention_days)
            _days("anonymize_after", self.anonymize_after)
            for name in self.exclude_fields:
                if name not in _TOP_LEVEL and not name.startswith("metadata."):
                    raise ConfigError(f"exclude_fields: {name!r} is not a droppable field "
                                      f"({', '.join(sorted(_TOP_LEVEL))} or metadata.<key>)")
            if self.anonymize_after is not None and self.retention_days is not None \
                    and self.anonymize_after >= self.retention_days:
                raise ConfigError("anonymize_after must be shorter than retention_days")
            delete, anonymize = self.delete_after_days, self.anonymize_after_days
            if delete is not None and anonymize is not None and anonymize >= delete:
                raise ConfigError(f"anonymize_after ({anonymize:g} days) must be shorter than the retention "
                                  f"({delete:g} days, from retention_days or a regulation's delete_after)")

        def _policies(self) -> list[RegulationPolicy]:
            return [p for p in (self.gdpr, self.ccpa) if p is not None and p.enabled]

        @property
        def delete_after_days(self) -> float | None:
            """The retention that is enforced: the shortest of ``retention_days`` and each regulation's."""
            return _shortest(self.retention_days, *(p.delete_after for p in self._policies()))

        @property
        def anonymize_after_days(self) -> float | None:
            """The anonymisation age that is enforced: the shortest of all given."""
            return _shortest(self.anonymize_after, *(p.anonymize_after for p in self._policies()))

        @property
        def active_regulations(self) -> tuple[str, ...]:
            """``regulations`` plus every regulation section that is enabled."""
            named = [*self.regulations, *(n for n in ("gdpr", "ccpa") if (p := getattr(self, n)) and p.enabled)]
            return tuple(dict.fromkeys(named))

    def __init__(self, config: CompliancePlugin.Config | Mapping[str, Any] | None = None, /, **options: Any) -> None:
        """``CompliancePlugin(config)`` or options: ``CompliancePlugin(regulations=["gdpr", "ccpa"], retentionDays=90)``.

        Options (keywords, or one dict as the seed passes them) are the ``Config`` fields in snake_case or
        the seed's camelCase, checked like a configuration file (an unknown or mistyped one is a
        :class:`ConfigError`).
        """
        config = plugin_options(CompliancePlugin.Config, config, options, where="CompliancePlugin(...)")
        self.config = config or CompliancePlugin.Config()
        self.retention_days = self.config.delete_after_days
        self.anonymize_after = self.config.anonymize_after_days
        self.regulations = self.config.active_regulations
        self.service: TelemetryService | None = None
        self._metadata_drop = {f.split(".", 1)[1] for f in self.config.exclude_fields if f.startswith("metadata.")}
        self._field_drop = {f: None for f in self.config.exclude_fields if not f.startswith("metadata.")}
        self._keep = set(self.config.include_only) if self.config.include_only is not None else None
        self._last_check = float("-inf")  # monotonic: the first idle moment checks, however short the uptime
        self._check_every = span_ms(self.config.check_interval) / 1000
        self._busy = threading.Lock()
        self.stats = {"minimised": 0, "anonymised": 0, "erased": 0, "retention_runs": 0}

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Remember the service for the scheduled work."""
        self.service = service

    # -- minimisation --------------------------------------------------------------------------

    @hookimpl
    def before_track(self, event: TelemetryEvent) -> TelemetryEvent:
        """Drop the excluded fields and metadata keys before the event is queued."""
        if not (self._field_drop or self._metadata_drop or self._keep is not None):
            return event
        changes: dict[str, Any] = {k: None for k in self._field_drop if event.__dict__[k] is not None}
        metadata = event.metadata
        if metadata and (self._metadata_drop or self._keep is not None):
            kept = {k: v for k, v in metadata.items()
                    if k not in self._metadata_drop and (self._keep is None or k in self._keep)}
            if len(kept) != len(metadata):
                changes["metadata"] = kept
        if not changes:
            return event
        self.stats["minimised"] += 1
        return attrs.evolve(event, **changes)

    # -- scheduled retention and anonymisation ---------------------------------------------------

    @hookimpl
    def idle(self) -> None:
        """Every ``check_interval``: apply retention, then anonymise a chunk of old events."""
        if monotonic() - self._last_check < self._check_every or self.service is None:
            return
        self._last_check = monotonic()
        threading.Thread(target=self._scheduled, name="vibekit-telemetry-compliance", daemon=True).start()

    def _scheduled(self) -> None:
        try:
            self.run_schedule()
        except Exception:  # on a background thread: report, never crash the app
            log.exception("scheduled retention/anonymisation failed; it is tried again at the next check")

    def run_schedule(self) -> dict[str, int]:
        """Apply retention and anonymisation now (the schedule calls this; so can you)."""
        assert self.service is not None
        done = {"deleted": 0, "anonymised": 0}
        if not self._busy.acquire(blocking=False):
            return done
        try:
            if self.retention_days is not None:
                done["deleted"] = self.service.clean(self.retention_days)
                self.stats["retention_runs"] += 1
            if self.anonymize_after is not None:
                done["anonymised"] = self.anonymise(now_ms() - int(self.anonymize_after * 86_400_000))
        finally:
            self._busy.release()
        return done

    def anonymise(self, before: int) -> int:
        """Strip free text and user identifiers from every event older than ``before`` (epoch ms)."""
        assert self.service is not None
        changed = 0
        batch: list[TelemetryEvent] = []
        for event in self.service.iter_events(until=before - 1):
            stripped = self._stripped(event)
            if stripped is not None:
                batch.append(stripped)
            if len(batch) >= 500:
                changed += self.service.rewrite(batch)
                batch = []
        if batch:
            changed += self.service.rewrite(batch)
        if changed:
            self.stats["anonymised"] += changed
            self.service.audit("update", "events", {"request": "anonymisation", "before": before, "events": changed,
                                                        "regulations": list(self.regulations)})
        return changed

    def _stripped(self, event: TelemetryEvent) -> TelemetryEvent | None:
        fields = event.__dict__
        changes: dict[str, Any] = {name: None for name in TEXT_FIELDS if fields[name] is not None}
        metadata = fields["metadata"]
        if metadata and any(k in metadata for k in self.config.user_keys):
            changes["metadata"] = {k: v for k, v in metadata.items() if k not in self.config.user_keys}
        return attrs.evolve(event, **changes) if changes else None

    # -- the data subject's rights -----------------------------------------------------------------

    def _user_events(self, user_id: str) -> tuple[list[TelemetryEvent], set[str]]:
        """The user's events: those naming them, and every event of their sessions."""
        assert self.service is not None
        naming = [e for e in self.service.iter_events() if self._names(e, user_id)]
        sessions = {e.session_id for e in naming if e.session_id}
        ids = {e.id for e in naming}
        events = list(naming)
        if sessions:
            for event in self.service.iter_events(session_ids=sorted(sessions)):
                if event.id not in ids:
                    events.append(event)
                    ids.add(event.id)
        events.sort(key=lambda e: (e.timestamp, e.id))
        return events, sessions

    def _names(self, event: TelemetryEvent, user_id: str) -> bool:
        metadata = event.metadata
        return bool(metadata) and any(str(metadata.get(k)) == user_id for k in self.config.user_keys if k in metadata)

    def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete everything stored about ``user_id``; return how many events and sessions went."""
        assert self.service is not None
        events, sessions = self._user_events(user_id)
        deleted = self.service.delete([e.id for e in events]) if events else 0
        self.stats["erased"] += deleted
        self.service.audit("delete", f"user:{user_id}", {"request": "erasure", "events": deleted, "sessions": len(sessions),
                                                         "regulations": list(self.regulations)})
        return {"events": deleted, "sessions": len(sessions)}

    def export_user(self, user_id: str, output: BinaryIO) -> dict[str, int]:
        """Write the user's events and sessions to ``output`` as JSON lines (``{"type": ..., ...}``)."""
        assert self.service is not None
        events, sessions = self._user_events(user_id)
        for record in self._records(events, sessions):
            output.write(orjson.dumps(record) + b"\n")
        self.service.audit("access", f"user:{user_id}", {"events": len(events), "sessions": len(sessions)})
        return {"events": len(events), "sessions": len(sessions)}

    def _records(self, events: list[TelemetryEvent], sessions: set[str]) -> Iterator[dict[str, Any]]:
        assert self.service is not None
        for sid in sorted(sessions):
            session: Session | None = self.service.get_session(sid)
            if session is not None:
                yield {"type": "session", **session.to_dict()}
        for event in events:
            yield {"type": "event", **event.to_dict()}

    @hookimpl
    def health(self) -> dict[str, Any]:
        """What the plugin did, and its settings."""
        return {"healthy": True, "issues": [], "regulations": list(self.regulations),
                "retention_days": self.retention_days, "anonymize_after": self.anonymize_after,
                **self.stats}

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry compliance erase|export --user-id U``."""
        import click

        def service_for(ctx: click.Context) -> Any:
            from vibekit_telemetry import TelemetryService

            state = ctx.find_root().obj
            service = TelemetryService(getattr(state, "config_path", None), compliance={"enabled": True})
            ctx.call_on_close(service.shutdown)
            return service, service.host.meta["compliance"]["object"]

        @cli.group(name="compliance")
        def compliance() -> None:
            """GDPR/CCPA: erase or export everything about a user."""

        @compliance.command()
        @click.option("--user-id", required=True, help="The user id, as events carry it in their metadata.")
        @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
        @click.pass_context
        def erase(ctx: click.Context, user_id: str, yes: bool) -> None:
            """Delete every event that names the user, and the rest of their sessions."""
            if not yes:
                click.confirm(f"Delete everything stored about user {user_id!r}?", abort=True)
            _, plugin = service_for(ctx)
            result = plugin.erase_user(user_id)
            click.echo(f"erased {result['events']:,} events in {result['sessions']:,} sessions of user {user_id}")

        @compliance.command(name="export")
        @click.option("--user-id", required=True)
        @click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="A file (default: standard output).")
        @click.pass_context
        def export_command(ctx: click.Context, user_id: str, output: Path | None) -> None:
            """Write the user's events and sessions as JSON lines (right of access)."""
            _, plugin = service_for(ctx)
            if output is None:
                plugin.export_user(user_id, click.get_binary_stream("stdout"))
                return
            with output.open("wb") as fh:
                result = plugin.export_user(user_id, fh)
            click.echo(f"wrote {result['events']:,} events and {result['sessions']:,} sessions to {output}", err=True)
