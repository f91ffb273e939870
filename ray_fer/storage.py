"""One place that turns a URI (local path or ``s3://bucket/prefix``) into a filesystem.

Endpoint and credentials come from the standard AWS sources (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
instance profiles) so that nothing secret ever has to be passed on a command line or
written into a config. An explicit ``endpoint`` argument (the CLIs' ``--endpoint``) wins.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ray_fer.errors import UserError


class StorageError(UserError, RuntimeError):
    """A storage location cannot be reached or used; the message says what to do."""


@dataclass(frozen=True)
class Location:
    """A parsed storage URI: ``fs`` plus the path inside it (no scheme)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    #: The S3 endpoint in use (None for local paths and for AWS's default), for messages.
    endpoint: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> str:
        """Path inside ``fs`` of ``parts`` below this location."""
        return posixpath.join(self.path, *parts)

    def child_uri(self, *parts: str) -> str:
        """URI of ``parts`` below this location."""
        return self.uri.rstrip("/") + "/" + "/".join(parts)


def s3_endpoint(endpoint: str | None = None) -> str | None:
    """The S3 endpoint to use: the explicit one, else the standard AWS variables."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def set_endpoint(endpoint: str | None) -> None:
    """Export ``endpoint`` as ``AWS_ENDPOINT_URL_S3`` for this process and its Ray workers.

    Ray workers inherit the driver's environment on a local cluster; on a remote one the
    runtime env carries it (see :func:`ray_runtime_env`).
    """
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint


def ray_runtime_env() -> dict:
    """Environment variables Ray workers need to reach the same object store.

    Only the endpoint and region travel; credentials stay with each node's own AWS
    sources (instance profile, environment), so they are never serialized by Ray.
    """
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION")
           if k in os.environ}
    return {"env_vars": env} if env else {}


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for ``endpoint`` (or AWS's) with bounded retries."""
    ep = s3_endpoint(endpoint)
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=4),
        "connect_timeout": 5,
        "request_timeout": 30,
    }
    if ep:
        parsed = urlparse(ep)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
        # S3-compatible servers (SeaweedFS, MinIO) are addressed by path, not virtual host.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def boto3_client(endpoint: str | None = None):
    """A boto3 S3 client for the same endpoint and credentials as :func:`s3_filesystem`."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(endpoint),
        config=Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5,
                      read_timeout=30, s3={"addressing_style": "path"}),
    )


def resolve(uri: str | os.PathLike, endpoint: str | None = None) -> Location:
    """Parse ``uri`` into a :class:`Location`; local paths are made absolute."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        rest = text[len("s3://"):].strip("/")
        if not rest:
            raise StorageError(f"{text!r} names no bucket; use s3://BUCKET/PREFIX")
        return Location(uri="s3://" + rest, fs=s3_filesystem(endpoint), path=rest,
                        endpoint=s3_endpoint(endpoint))
    if "://" in text and not text.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {text!r}: use a local path or s3://")
    path = Path(text.removeprefix("file://")).expanduser().resolve()
    return Location(uri=str(path), fs=pafs.LocalFileSystem(), path=str(path))


#: What to check when S3 refuses or cannot be reached.
S3_ADVICE = ("Check --endpoint / AWS_ENDPOINT_URL_S3 and the AWS credentials "
             "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE).")


def storage_error(loc: Location, exc: OSError, doing: str = "use") -> StorageError:
    """The one-line StorageError for an OSError that ``loc``'s filesystem raised while
    ``doing`` something with it (S3: with what to check, e.g. after ACCESS_DENIED)."""
    reason = str(exc).split("\n", 1)[0].rstrip(".")
    if loc.is_s3:
        return StorageError(f"cannot {doing} {loc.uri} at endpoint "
                            f"{loc.endpoint or 'AWS default'}: {reason}. {S3_ADVICE}")
    return StorageError(f"cannot {doing} {loc.uri}: {reason}")


def writable_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """The local folder ``path``, created if missing and proven writable by creating and
    removing a file in it: a command checks its output folder before any work, and a
    StorageError names ``flag`` when it cannot write there."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ray_fer-probe-"):
            pass
    except OSError as exc:
        raise StorageError(f"{flag} {path}: cannot write there ({exc.strerror or exc}); "
                           "choose a folder you can write to") from None
    return folder


def check_reachable(loc: Location) -> None:
    """Fail early, with advice, when ``loc``'s bucket cannot be reached or used."""
    if not loc.is_s3:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(
            f"cannot reach S3 bucket {bucket!r} at endpoint {loc.endpoint or 'AWS default'}: "
            f"{exc}. {S3_ADVICE}"
        ) from exc
    if info.type == pafs.FileType.NotFound:
        raise StorageError(
            f"S3 bucket {bucket!r} does not exist at endpoint {loc.endpoint or 'AWS default'}; "
            "create it first"
        )
