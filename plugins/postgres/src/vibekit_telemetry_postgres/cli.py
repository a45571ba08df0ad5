"""``telemetry migrate --from .vibekit/telemetry.db --to postgresql://...``: a local store into PostgreSQL.

Exit status: 0 when every event is moved and the sessions agree, 2 for a usage or configuration error (no
``--to``, a connection string or schema name that cannot be right, a ``--from`` that is not a telemetry
database, another run of the same migration in progress), 1 when the target is unavailable or refuses (the
run can be repeated: it resumes) or the sessions cannot be made equal to the source's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vibekit_telemetry import ConfigError, PluginError, StorageError, StorageUnavailableError

ANALYTICS_NOTE = ("analytics rollups: not copied; the analytics plugin recounts them from the migrated events "
                  "(on its first start against the PostgreSQL store, or `telemetry analytics rebuild`)")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _check_dsn(dsn: str) -> None:
    """A usage error for a connection string libpq cannot parse (without echoing it: it may hold a password)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from . import redact_dsn

    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise click.BadParameter(f"{redact_dsn(dsn)!r} is not a PostgreSQL connection string (expected "
                                 "postgresql://user@host/dbname or host=... dbname=...)", param_hint="--to") from None


def register(cli: click.Group) -> None:
    """Add ``migrate`` to the ``telemetry`` group."""
    from . import DSN_ENV

    @cli.command(name="migrate")
    @click.option("--from", "source_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="The SQLite telemetry database to move, e.g. .vibekit/telemetry.db.")
    @click.option("--to", "dsn", envvar=DSN_ENV, default=None, show_envvar=True,
                  help="The PostgreSQL connection string (postgresql://user@host/dbname); its password is never "
                       "printed.")
    @click.option("--schema", default="public", show_default=True, help="The target schema (created if missing).")
    @click.option("--batch", "batch_size", default=5000, show_default=True, type=click.IntRange(min=1),
                  help="Events per transaction.")
    @click.option("--restart", is_flag=True,
                  help="Ignore the recorded progress and read the source from its first event again (events "
                       "already stored are skipped).")
    @click.option("--audit-trail", "trail_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                  default=None,
                  help="The audit trail to move with the store (default: audit.db beside --from, where the audit "
                       "plugin keeps it).")
    @click.option("--no-audit-trail", "skip_trail", is_flag=True,
                  help="Leave the audit trail where it is (it is then neither verified nor moved).")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def migrate(source_path: Path, dsn: str | None, schema: str, batch_size: int, restart: bool,
                trail_path: Path | None, skip_trail: bool, quiet: bool) -> None:
        """Move a local SQLite store's events and sessions into a PostgreSQL store, resumably.

        Progress is recorded in the target (table vibekit_migrate_progress) after every batch: run the same
        command again after an interruption and it goes on where it stopped; run it after a complete run and
        it moves only events added to the source since.  The analytics rollups are not copied (the analytics
        plugin recounts them from the events).  The audit trail beside the store (or --audit-trail) is
        verified and its entries appended to the trail in the target schema, chained after the entries
        already there, with a "migrate" entry recording the source's head hash; a run again moves only the
        entries added since.
        """
        if not dsn:
            raise click.UsageError(f"--to: give the PostgreSQL connection string (or set {DSN_ENV})")
        if skip_trail and trail_path is not None:
            raise click.UsageError("--audit-trail and --no-audit-trail: give one of them")
        _check_dsn(dsn)
        run(source_path, dsn, schema, batch_size, restart=restart, quiet=quiet, trail_path=trail_path,
            skip_trail=skip_trail)


def run(source_path: Path, dsn: str, schema: str, batch_size: int, *, restart: bool, quiet: bool,
        trail_path: Path | None = None, skip_trail: bool = False) -> None:
    """The migration itself, printing what it moved and what it did not; exits with the status above."""
    import psycopg

    from . import PostgresStorage
    from .migrate import Mark, Progress, Source, differing_sessions, open_source, take_sessions

    try:
        PostgresStorage.Config(dsn=dsn, schema=schema)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("schema: "), param_hint="--schema") from None
    try:
        lite = open_source(source_path)
    except (StorageError, PluginError) as exc:
        _fail(f"--from {source_path}: {exc}" if str(source_path) not in str(exc) else str(exc), 2)
    source = Source(source_path)
    target = progress = None
    try:
        try:
            # one connection: the events keep the source's order in ``seq`` (a batch split over several
            # would order events of different sessions in one millisecond as the server took the parts)
            target = PostgresStorage.open(dsn, schema=schema, writers=1)
            progress = Progress(target, str(source.path))
        except StorageUnavailableError as exc:
            _fail(f"the target is unavailable: {exc}", 1)
        except StorageError as exc:
            _fail(f"the target refused: {exc}", 1)
        except psycopg.Error as exc:  # from the progress connection
            _fail(f"the target refused: {target._explain(exc) if target else exc}", 1)
        if not progress.locked:
            _fail(f"another `telemetry migrate` of {source.path} into {target.where} is running; wait for it "
                  "to finish", 2)
        click.echo(f"migrating {source.path} into {target.where}")
        mark = Mark() if restart else progress.load()
        if restart:
            progress.forget()
        elif mark.seq is not None and not source.holds(mark):
            click.echo(f"the recorded progress ({mark.events:,} events) does not match this file (its last event "
                       "moved is gone): reading it from the start; events already stored are skipped")
            mark = Mark()
        remaining = source.count_after(mark)
        total = mark.events + remaining
        moved = _move_events(source, target, progress, mark, remaining, batch_size, quiet)
        if remaining == 0 and mark.events:
            click.echo(f"events: nothing to do, all {mark.events:,} were migrated by an earlier run")
        elif mark.events:
            click.echo(f"events: {moved:,} moved, resuming after {mark.events:,} moved by an earlier run "
                       f"({total:,} in all)")
        else:
            click.echo(f"events: {moved:,} moved")
        progress.finish()
        try:
            compared, differ = differing_sessions(lite, target)
            if differ:
                take_sessions(target, differ)
                compared, still = differing_sessions(lite, target)
                if still:
                    _fail(f"sessions: {len(still):,} of {compared:,} still differ from the source's after setting "
                          f"them, e.g. {', '.join(s.id for s in still[:5])}", 1)
        except StorageError as exc:
            _fail(f"the target failed while comparing the sessions ({exc}); run the same command again", 1)
        if differ:
            click.echo(f"sessions: {compared:,}, equal to the source's; {len(differ):,} of them set to the source's "
                       "rows, as the migrated events alone give other ones (the source's retention or deletes "
                       f"removed events they still count), e.g. {', '.join(s.id for s in differ[:5])}")
        else:
            click.echo(f"sessions: {compared:,}, equal to the source's")
        click.echo(ANALYTICS_NOTE)
        if skip_trail:
            click.echo("audit trail: left where it is (--no-audit-trail)")
        else:
            _move_trail(trail_path, source.path, target)
    except psycopg.Error as exc:  # from the progress connection (the store explains its own)
        _fail(f"the target failed: {target._explain(exc) if target else exc}; run the same command again to "
              "resume", 1)
    finally:
        if progress is not None:
            progress.close()
        if target is not None:
            target.close()
        source.close()
        lite.close()


def _move_trail(trail_path: Path | None, source: Path, target) -> None:
    """Move the audit trail (``--audit-trail``, or ``audit.db`` beside the store) into the target's schema."""
    import psycopg

    from vibekit_telemetry import TelemetryError

    path = trail_path or source.parent / "audit.db"
    if not path.is_file():  # an --audit-trail that does not exist is refused before anything is moved
        click.echo(f"audit trail: none beside the source ({path})")
        return
    try:
        from vibekit_telemetry_audit.postgres import move_trail
    except ImportError:
        _fail(f"audit trail: {path} NOT moved: the audit plugin is not installed (pip install "
              "vibekit-telemetry-audit), then run the same command again (what is moved already stays); "
              "--no-audit-trail leaves it where it is", 1)
    try:
        with target.connection() as conn:
            moved, earlier = move_trail(path, conn)
    except TelemetryError as exc:
        _fail(f"audit trail: {exc}", 1)
    except psycopg.Error as exc:
        _fail(f"audit trail: the target failed ({target._explain(exc)}); run the same command again", 1)
    if moved:
        click.echo(f"audit trail: {moved:,} entries of {path} moved into {target.where}, chained after the entries "
                   "already there (a 'migrate' entry records the file's head hash); `telemetry audit verify` "
                   "checks the chain")
    elif earlier:
        click.echo(f"audit trail: nothing to do, the {earlier:,} entries of {path} were moved by an earlier run")
    else:
        click.echo(f"audit trail: {path} has no entries")


def _move_events(source, target, progress, mark, remaining: int, batch_size: int, quiet: bool) -> int:
    """Store the events after ``mark`` batch by batch, recording progress after each; return how many."""
    import psycopg

    moved = 0
    with click.progressbar(length=remaining, label="events", file=sys.stderr, show_pos=True,
                           hidden=quiet or remaining == 0) as bar:
        try:
            for rows, reached in source.batches(mark, batch_size):
                target.store_rows(rows)
                progress.save(reached)
                moved += len(rows)
                bar.update(len(rows))
        except (StorageError, psycopg.Error) as exc:
            click.echo("", err=True)
            if isinstance(exc, psycopg.Error):
                exc = target._explain(exc)
            kind = "became unavailable" if isinstance(exc, StorageUnavailableError) else "refused a batch"
            _fail(f"the target {kind} after {moved:,} events moved in this run ({exc}); run the same command "
                  "again to resume", 1)
    return moved
