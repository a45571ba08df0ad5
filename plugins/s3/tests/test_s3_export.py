"""Exports to a real S3-compatible HTTP server (moto's server on 127.0.0.1), through boto3."""

from __future__ import annotations

import gzip
import io
import time

import boto3
import orjson
import pytest
from moto.server import ThreadedMotoServer

from vibekit_telemetry import TelemetryService, hookimpl, now_ms
from vibekit_telemetry_s3 import S3ExportPlugin


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(monkeypatch, s3_endpoint):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"telemetry-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, s3_endpoint


def _seed(service, n=300, text="chunk"):
    sid = service.track_start("claude", "chat", "hello")
    for i in range(n):
        service.track_stream(sid, f"{text} {i}")
    service.track_end(sid)


def test_export_to_an_s3_url_streams_a_compressed_object(aws, tmp_path):
    client, bucket, _ = aws
    with TelemetryService(data_dir=str(tmp_path)) as service:  # the s3 plugin loads on demand, no configuration
        _seed(service)
        count = service.export(output=f"s3://{bucket}/exports/events.jsonl.gz")
    assert count == 302
    body = client.get_object(Bucket=bucket, Key="exports/events.jsonl.gz")["Body"].read()
    lines = gzip.decompress(body).splitlines()
    assert len(lines) == 302 and orjson.loads(lines[0])["event_type"] == "start"


def test_large_exports_use_multipart_and_read_back(aws, tmp_path):
    client, bucket, endpoint = aws
    plugin = S3ExportPlugin(bucket=bucket, endpoint_url=endpoint, part_size=5 * 2**20)
    with TelemetryService(data_dir=str(tmp_path / "a"), plugins=[plugin]) as service:
        _seed(service, n=3000, text="x" * 4000)  # about 12 MB of JSON: three parts
        count = service.export(output=f"s3://{bucket}/big/events.jsonl")
        upload = client.list_objects_v2(Bucket=bucket, Prefix="big/")["Contents"][0]
        assert count == 3002 and upload["Size"] > 10 * 2**20
        head = client.head_object(Bucket=bucket, Key="big/events.jsonl")
        assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    data = client.get_object(Bucket=bucket, Key="big/events.jsonl")["Body"].read()
    with TelemetryService(data_dir=str(tmp_path / "b")) as target:
        assert target.import_events(io.BytesIO(data), "jsonl").imported == 3002


class _FailingExporter:
    """Writes every event, then fails: an export that breaks after parts were uploaded."""

    name = "failing"

    @hookimpl
    def export_formats(self):
        return ["failing"]

    @hookimpl
    def export(self, format, events, output, options):
        if format != "failing":
            return None
        written = 0
        for event in events:
            output.write(orjson.dumps(event.to_dict()) + b"\n")
            written += 1
        if written:
            raise OSError("the disk of the exporter's cache is full")
        return written


def test_a_failed_export_leaves_no_object(aws, tmp_path):
    client, bucket, endpoint = aws
    plugin = S3ExportPlugin(bucket=bucket, endpoint_url=endpoint, part_size=5 * 2**20)
    with TelemetryService(data_dir=str(tmp_path), plugins=[plugin, _FailingExporter()]) as service:
        _seed(service, n=2000, text="y" * 4000)
        with pytest.raises(OSError, match="disk"):  # after about 8 MB: a multipart upload was under way
            service.export("failing", output=f"s3://{bucket}/broken/events.jsonl")
        with pytest.raises(ValueError, match="unknown export key"):  # refused before any upload starts
            service.export("jsonl", output=f"s3://{bucket}/broken/other.jsonl", bogus=1)
    assert client.list_objects_v2(Bucket=bucket, Prefix="broken/").get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_on_demand_and_scheduled_exports_use_date_partitioned_keys(aws, tmp_path):
    client, bucket, endpoint = aws
    plugin = S3ExportPlugin(bucket=bucket, endpoint_url=endpoint, prefix="tele/prod", schedule="1s")
    with TelemetryService(data_dir=str(tmp_path), plugins=[plugin]) as service:
        _seed(service, n=10)
        url, count = plugin.export_now(since=now_ms() - 60_000)
        assert count == 12 and "/year=" in url and url.endswith(".jsonl.gz")
        deadline = time.monotonic() + 10
        while len(plugin.exported) < 3:  # the on-demand one and at least two scheduled windows
            assert time.monotonic() < deadline, plugin.exported
            time.sleep(0.1)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="tele/prod/")["Contents"]]
    assert len(keys) >= 3 and all(k.startswith("tele/prod/year=") and "/month=" in k and "/day=" in k for k in keys)


def test_a_bad_url_and_a_missing_bucket_are_clear(aws, tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service:
        with pytest.raises(ValueError, match="s3://bucket/key"):
            service.export("jsonl", output="s3://only-bucket")
        with pytest.raises(Exception, match="NoSuchBucket|does not exist"):
            service.export("jsonl", output="s3://no-such-bucket-here/x.jsonl")


def test_the_seed_constructor_keywords_work(aws, tmp_path):
    client, bucket, endpoint = aws
    plugin = S3ExportPlugin({"bucket": bucket, "region": "us-east-1", "endpointUrl": endpoint, "compression": "none"})
    assert plugin.config.endpoint_url == endpoint and plugin.config.compression is None
    with TelemetryService(data_dir=str(tmp_path), plugins=[plugin]) as service:
        _seed(service, n=3)
        url, count = plugin.export_now(since=now_ms() - 60_000)
    assert count == 5 and url.endswith(".jsonl") and plugin.client.meta.region_name == "us-east-1"
    body = client.get_object(Bucket=bucket, Key=url.split(f"s3://{bucket}/", 1)[1])["Body"].read()
    assert len(body.splitlines()) == 5
    from vibekit_telemetry import ConfigError

    with pytest.raises(ConfigError, match="regoin: unknown key"):
        S3ExportPlugin(bucket=bucket, regoin="us-east-1")


def test_a_scheduled_parquet_export_is_compressed_by_its_codec_and_named_so(aws, tmp_path):
    import pyarrow.parquet as pq

    client, bucket, endpoint = aws
    plugin = S3ExportPlugin(bucket=bucket, endpoint_url=endpoint, format="parquet", compression="zstd")
    with TelemetryService(data_dir=str(tmp_path), plugins=[plugin]) as service:
        _seed(service, n=3)
        url, count = plugin.export_now(since=now_ms() - 60_000)
    assert count == 5 and url.endswith(".parquet")
    body = client.get_object(Bucket=bucket, Key=url.split(f"s3://{bucket}/", 1)[1])["Body"].read()
    assert pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(0).compression == "ZSTD"
