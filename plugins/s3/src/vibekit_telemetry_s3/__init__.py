"""The ``s3`` plugin: exports to Amazon S3 or any S3-compatible store, with boto3.

* ``telemetry export --output s3://bucket/prefix/events.jsonl.gz`` (and
  ``telemetry.export(output="s3://...")``) stream into a multipart upload: parts
  of ``part_size`` bytes leave as they fill, so memory stays bounded; a failed
  export aborts the upload and leaves no object.
* ``S3ExportPlugin(bucket=..., region=..., prefix=..., endpoint_url=...)`` as a
  plugin object (or ``plugins = [{name = "s3", options = {...}}]``) adds
  ``export_now()`` (on demand) and, with ``schedule = "1h"``, a background export
  of each elapsed window to a date-partitioned key:
  ``<prefix>/year=YYYY/month=MM/day=DD/events-<start>-<end>.<format>[.gz]``.

Credentials come from boto3's usual chain (environment, profile, instance role);
``endpoint_url`` (or ``AWS_ENDPOINT_URL_S3``) points at another S3-compatible service.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import attrs

from vibekit_telemetry import ConfigError, hookimpl, now_ms, span_ms
from vibekit_telemetry.config import plugin_options

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

__all__ = ["S3ExportPlugin", "S3Upload"]

log = logging.getLogger("vibekit_telemetry.s3")

_MIN_PART = 5 * 2**20  # S3's smallest part (except the last)
_SUFFIX = {"gzip": ".gz", "zstd": ".zst", None: ""}


class S3Upload:
    """A writable binary file that becomes one S3 object: a single PUT when small, a multipart upload otherwise."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int = 8 * 2**20) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = max(part_size, _MIN_PART)
        self.buffer = bytearray()
        self.position = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.closed = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        """Parts leave when full; nothing to do here."""

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        self.buffer += data
        self.position += size
        while len(self.buffer) >= self.part_size:
            self._send_part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return size

    def _send_part(self, body: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        response = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                           PartNumber=number, Body=body)
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def close(self) -> None:
        """Finish the object (raises if S3 refused it)."""
        if self.closed:
            return
        self.closed = True
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send_part(bytes(self.buffer))
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        """Give up: nothing is stored (the parts sent so far are discarded)."""
        self.closed = True
        if self.upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception as exc:  # the export's own error matters more
                log.warning("aborting the upload of s3://%s/%s failed: %s", self.bucket, self.key, exc)


class S3ExportPlugin:
    """Writes exports to S3: the ``s3://`` destination, on-demand and scheduled exports."""

    name = "s3"

    @attrs.frozen
    class Config:
        """Options of the ``s3`` plugin."""

        bucket: str | None = None
        region: str | None = None
        prefix: str = ""
        endpoint_url: str | None = None
        format: str = "jsonl"
        compression: str | None = "gzip"
        #: export each elapsed window of this length in the background (``"1h"``, ``"1d"``); off when unset
        schedule: str | None = None
        part_size: int = 8 * 2**20

    def __init__(self, config: Config | Mapping[str, Any] | None = None, /, **options: Any) -> None:
        """``S3ExportPlugin(bucket="telemetry-exports", region="us-east-1")``, or a ``Config``.

        Options (keywords, or one dict as the seed passes them) are the ``Config`` fields in snake_case or
        camelCase (``endpointUrl``, ``partSize``), checked like a configuration file (an unknown or
        mistyped one is a :class:`ConfigError`).
        """
        config = plugin_options(S3ExportPlugin.Config, config, options, where="S3ExportPlugin(...)")
        config = config or self.Config()
        if config.compression == "none":
            config = attrs.evolve(config, compression=None)
        if config.compression not in _SUFFIX:
            raise ConfigError(f"compression must be gzip, zstd or none, got {config.compression!r}")
        if config.schedule is not None:
            span_ms(config.schedule)
            if not config.bucket:
                raise ConfigError("a scheduled S3 export needs a bucket")
        self.config = config
        self.service: TelemetryService | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exported: list[str] = []

    @property
    def client(self) -> Any:
        """The boto3 S3 client (made on first use)."""
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.config.region, endpoint_url=self.config.endpoint_url)
        return self._client

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Remember the service; start the schedule when there is one."""
        self.service = service
        if self.config.schedule:
            self._thread = threading.Thread(target=self._run_schedule, name="vibekit-s3-schedule", daemon=True)
            self._thread.start()

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Stop the schedule."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @hookimpl
    def export_destination(self, url: str, options: dict[str, Any]) -> S3Upload | None:
        """``s3://bucket/key``: a multipart upload to that object."""
        if not url.startswith("s3://"):
            return None
        parsed = urlparse(url)
        key = parsed.path.lstrip("/")
        if not parsed.netloc or not key:
            raise ValueError(f"an S3 URL is s3://bucket/key, got {url!r}")
        return S3Upload(self.client, parsed.netloc, key, self.config.part_size)

    def key_for(self, start: int, end: int) -> str:
        """The date-partitioned key of the export of ``[start, end)``."""
        day = dt.datetime.fromtimestamp(start / 1000, dt.timezone.utc)
        stamp = lambda ms: dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")  # noqa: E731
        prefix = self.config.prefix.strip("/")
        parts = [p for p in (prefix, f"year={day:%Y}", f"month={day:%m}", f"day={day:%d}") if p]
        # a format that compresses itself (Parquet: compression is its codec) is not wrapped, so its name has no .gz
        native = self.service is not None and "compression" in (self.service.export_options(self.config.format) or ())
        suffix = "" if native else _SUFFIX[self.config.compression]
        name = f"events-{stamp(start)}-{stamp(end)}.{self.config.format}{suffix}"
        return "/".join([*parts, name])

    def export_now(self, since: Any = None, until: Any = None, **filter: Any) -> tuple[str, int]:
        """Export ``[since, until)`` (default: the last hour) now; returns the ``s3://`` URL and the count."""
        if self.service is None or not self.config.bucket:
            raise ConfigError("export_now needs the plugin registered with a service and a bucket")
        from vibekit_telemetry import to_ms

        end = now_ms() + 1 if until is None else to_ms(until)  # [since, until): "now" includes this millisecond
        start = end - 3_600_000 if since is None else to_ms(since)
        url = f"s3://{self.config.bucket}/{self.key_for(start, end)}"
        count = self.service.export(self.config.format, {**filter, "since": start, "until": end - 1}, output=url,
                                    compression=self.config.compression)
        self.exported.append(url)
        return url, int(count)

    def _run_schedule(self) -> None:
        assert self.config.schedule is not None
        window = span_ms(self.config.schedule)
        start = now_ms() // window * window
        while not self._stop.wait(max(0.05, (start + window - now_ms()) / 1000)):
            if now_ms() < start + window:
                continue
            try:
                self.export_now(since=start, until=start + window)
            except Exception as exc:  # keep the schedule alive; the next window tries again
                log.error("scheduled S3 export of %s failed: %s", self.key_for(start, start + window), exc)
                continue
            start += window

    @hookimpl
    def health(self) -> dict[str, Any]:
        """The bucket, the schedule and the last export."""
        return {"healthy": True, "issues": [], "bucket": self.config.bucket, "schedule": self.config.schedule,
                "last_export": self.exported[-1] if self.exported else None}
