"""vender 0 Alibaba OSS, 1 Tencent COS, 2 Qiniu Kodo, 100 any S3-compatible store (MinIO, AWS, R2).

All four speak the S3 API, so one async uploader (aiobotocore) serves them; what differs is the
endpoint each vendor is reached at, resolved by ``resolve_endpoint``:

- a bare host (``oss-cn-hangzhou.aliyuncs.com``, ``cos.ap-guangzhou.myqcloud.com``,
  ``s3-cn-east-1.qiniucs.com``, ``s3.eu-west-1.amazonaws.com``) is reached over https with
  virtual-hosted addressing (``{bucket}.{host}``) and the region named in the host;
- a URL (``http://127.0.0.1:9000``) is used as given, path-style (``{url}/{bucket}/{key}``)
  unless its host is a known cloud domain: the form for self-hosted stores and tests.

Uploads are verified: every PUT carries ``Content-MD5`` (the store refuses a body that does not
match) and the returned ETag is compared with the file's MD5 where the ETag is one. Files above
``MULTIPART_THRESHOLD`` go up in parts, each verified the same way. One client per (endpoint,
credentials) and event loop is kept with a bounded connection pool, and a per-process semaphore
bounds concurrent uploads; retries over time are the spool's job (``SpoolUploader``).

Every botocore error is translated here into a ``StorageError`` whose message names the problem
(credentials rejected, no such bucket, endpoint unreachable) and never the secret.

``probe(allow_private=False)`` first applies the endpoint policy (:mod:`.policy`): an endpoint on
a loopback, private or link-local address answers 2101 before any connection is made, and the
probe connects through a resolver that holds to the same rule.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import weakref
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from cloudrec.errors import StorageError
from cloudrec.fetch import PrivateAddress
from cloudrec.storage.policy import check_endpoint_host, guarded_connector_args, refused

VENDER_NAMES = {0: "Alibaba OSS", 1: "Tencent COS", 2: "Qiniu Kodo", 100: "S3-compatible store"}
MULTIPART_THRESHOLD = 8 * 1024 * 1024  # files above this go up as a multipart upload
PART_SIZE = 8 * 1024 * 1024
MAX_CONNECTIONS = 8  # per client (endpoint + credentials)
MAX_CONCURRENT_UPLOADS = 8  # per process (event loop), across every task and store
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 8.0
DEFAULT_REGION = "us-east-1"  # what MinIO, Ceph and most S3-compatible stores accept
PROBE_NAME = ".cloudrec-probe"

_CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidAccessKey",
                     "InvalidSecretKey", "InvalidToken", "ExpiredToken", "AuthFailure",
                     "AuthorizationHeaderMalformed"}
_NO_BUCKET_CODES = {"NoSuchBucket"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_HEX_MD5 = re.compile(r"[0-9a-f]{32}")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")

# Known cloud hosts → (region pattern, region in the signature). Virtual-hosted addressing.
_CLOUD_HOSTS: list[tuple[re.Pattern[str], str]] = [
    # Alibaba OSS: oss-cn-hangzhou.aliyuncs.com, s3.oss-cn-hangzhou.aliyuncs.com, ...-internal
    (re.compile(r"(?:s3\.)?oss-(?!accelerate)([a-z0-9-]+?)(?:-internal)?"
                r"\.aliyuncs(?:-internal)?\.com"), r"\1"),
    # Tencent COS: cos.ap-guangzhou.myqcloud.com, cos-internal.ap-guangzhou.myqcloud.com
    (re.compile(r"cos(?:-internal)?\.([a-z0-9-]+)\.myqcloud\.com"), r"\1"),
    # Qiniu Kodo: s3-cn-east-1.qiniucs.com, s3.cn-east-1.qiniucs.com
    (re.compile(r"s3[.-]([a-z0-9-]+)\.qiniucs\.com"), r"\1"),
    # AWS: s3.eu-west-1.amazonaws.com, s3-eu-west-1.amazonaws.com, s3.dualstack.…
    (re.compile(r"s3[.-](?:dualstack\.)?([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"), r"\1"),
    (re.compile(r"s3\.amazonaws\.com"), DEFAULT_REGION),
    # Cloudflare R2: <account>.r2.cloudflarestorage.com (region "auto")
    (re.compile(r"[a-z0-9]+(?:\.[a-z]+)?\.r2\.cloudflarestorage\.com"), "auto"),
]
_CLOUD_DOMAINS = (".aliyuncs.com", ".aliyuncs-internal.com", ".myqcloud.com", ".qiniucs.com",
                  ".amazonaws.com", ".amazonaws.com.cn")


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how a bucket is reached."""

    url: str  # e.g. https://oss-cn-hangzhou.aliyuncs.com
    region: str
    addressing_style: str  # "virtual" or "path"

    def connect_to(self, bucket: str) -> tuple[str, int]:
        """The host and port a request for ``bucket`` connects to."""
        parts = urlsplit(self.url)
        host = (parts.hostname or "").strip("[]")
        if self.addressing_style == "virtual":
            host = f"{bucket}.{host}"
        return host, parts.port or (443 if parts.scheme == "https" else 80)


def resolve_endpoint(vender: int, endpoint: str, bucket: str) -> S3Endpoint:
    """``storagecfg.endpoint`` → URL, region and addressing style (see the module docstring)."""
    raw = endpoint.strip()
    has_scheme = bool(re.match(r"(?i)https?://", raw))
    parts = urlsplit(raw if has_scheme else f"https://{raw}")
    host = parts.netloc.rsplit("@", 1)[-1]
    if not host or not _HOST.fullmatch(host) or (not has_scheme and parts.path.strip("/")):
        raise StorageError(
            f"storagecfg.endpoint {endpoint!r} is neither a host name (like "
            "oss-cn-hangzhou.aliyuncs.com) nor an http(s)://host:port URL"
        )
    hostname = (parts.hostname or "").lower()
    rest = hostname[len(bucket) + 1:]
    if hostname.startswith(f"{bucket}.") and any(p.fullmatch(rest) for p, _ in _CLOUD_HOSTS):
        hostname, host = rest, host[len(bucket) + 1:]  # "{bucket}.oss-cn-….aliyuncs.com"
    region = DEFAULT_REGION
    for pattern, repl in _CLOUD_HOSTS:
        match = pattern.fullmatch(hostname)
        if match:
            region = match.expand(repl)
            break
    cloud = hostname.endswith(_CLOUD_DOMAINS)
    if has_scheme:
        style = "virtual" if cloud else "path"
    else:
        style = "virtual" if cloud or vender in (0, 1, 2) else "path"
    url = f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"
    return S3Endpoint(url=url, region=region, addressing_style=style)


# -- clients: one per (loop, endpoint, credentials), closed by close_clients() -------------------

_session: AioSession | None = None


@dataclass
class _LoopClients:
    clients: dict[tuple[str, ...], Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    uploads: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_UPLOADS))


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


def _loop_clients() -> _LoopClients:
    loop = asyncio.get_running_loop()
    state = _per_loop.get(loop)
    if state is None:
        state = _per_loop[loop] = _LoopClients()
    return state


async def close_clients() -> None:
    """Close every S3 client of the running loop (the service calls this at shutdown)."""
    state = _per_loop.pop(asyncio.get_running_loop(), None)
    if state is None:
        return
    for client in state.clients.values():
        with suppress(Exception):
            await client.close()


def _md5_of_range(path: Path, offset: int, size: int) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    return data, hashlib.md5(data).digest()


# -- the store -----------------------------------------------------------------------------------


class S3Store:
    def __init__(self, vender: int, endpoint: str, bucket: str, accesskey: str, secretkey: str,
                 *, prefix: str = "") -> None:
        self.vender = vender
        self.endpoint = resolve_endpoint(vender, endpoint, bucket)
        self.bucket = bucket
        self._accesskey = accesskey
        self._secretkey = secretkey
        self._key = (self.endpoint.url, self.endpoint.region, self.endpoint.addressing_style,
                     accesskey, hashlib.sha256(secretkey.encode()).hexdigest())
        self.probe_key = f"{prefix}{PROBE_NAME}"
        self.description = (f"{VENDER_NAMES.get(vender, 'S3')} bucket {bucket!r} at "
                            f"{self.endpoint.url}")

    def __repr__(self) -> str:  # no credentials in reprs (logs, tracebacks)
        return f"S3Store({self.description})"

    async def _client(self, *, guarded: bool = False) -> Any:
        """The shared client of this store; ``guarded``: one whose connections obey the
        endpoint policy (the probe's)."""
        state = _loop_clients()
        key = (*self._key, "guarded") if guarded else self._key
        client = state.clients.get(key)
        if client is not None:
            return client
        async with state.lock:
            client = state.clients.get(key)
            if client is None:
                global _session
                _session = _session or get_session()
                config = AioConfig(
                    region_name=self.endpoint.region,
                    signature_version="s3v4",
                    s3={"addressing_style": self.endpoint.addressing_style},
                    connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S,
                    # one quick retry (a stale keep-alive connection); the spool retries over time
                    retries={"mode": "standard", "total_max_attempts": 2},
                    max_pool_connections=MAX_CONNECTIONS,
                    # no aws-chunked trailing checksums: OSS, COS and Kodo refuse them; we send
                    # Content-MD5 ourselves instead
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    warm_up_loader_caches=True,
                    user_agent_extra="cloudrec",
                    connector_args=guarded_connector_args() if guarded else None,
                )
                client = await _session.create_client(
                    "s3", endpoint_url=self.endpoint.url, aws_access_key_id=self._accesskey,
                    aws_secret_access_key=self._secretkey, config=config,
                ).__aenter__()
                state.clients[key] = client
        return client

    # -- ObjectStore ------------------------------------------------------------------------------

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        size = path.stat().st_size
        async with _loop_clients().uploads:
            try:
                client = await self._client()
                if size <= MULTIPART_THRESHOLD:
                    await self._put_single(client, key, path, size, content_type)
                else:
                    await self._put_multipart(client, key, path, size, content_type)
            except StorageError:
                raise
            except Exception as exc:  # botocore, aiohttp, timeouts: the spool retries them all
                raise self._error(exc, "upload") from exc

    async def probe(self, *, allow_private: bool = False) -> None:
        """A zero-byte write (and delete) of ``{prefix}.cloudrec-probe``: proves the credentials,
        the bucket and the permission to write where the recording will go. Unless
        ``allow_private``, the endpoint policy applies first (module docstring)."""
        empty_md5 = base64.b64encode(hashlib.md5(b"").digest()).decode()
        host, port = self.endpoint.connect_to(self.bucket)
        if not allow_private:
            await check_endpoint_host(host, port)
        try:
            client = await self._client(guarded=not allow_private)
            await asyncio.wait_for(
                client.put_object(Bucket=self.bucket, Key=self.probe_key, Body=b"",
                                  ContentMD5=empty_md5),
                PROBE_TIMEOUT_S,
            )
        except TimeoutError as exc:
            raise StorageError(f"cannot reach storage endpoint {self.endpoint.url}: no answer "
                               f"within {PROBE_TIMEOUT_S:.0f} s") from exc
        except StorageError:
            raise
        except Exception as exc:
            private = _cause(exc, PrivateAddress)
            if private is not None:  # the name changed its answer after the check
                raise refused(host, f"is a private or local address ({private.address})") from exc
            raise self._error(exc, "probe") from exc
        with suppress(Exception):  # write-only keys may not delete
            await asyncio.wait_for(
                client.delete_object(Bucket=self.bucket, Key=self.probe_key), PROBE_TIMEOUT_S)

    async def get_bytes(self, key: str) -> bytes | None:
        """A stored object's bytes (small ones: a playlist), or None when there is none."""
        try:
            client = await self._client()
            response = await client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return bytes(await body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(exc, "download") from exc
        except Exception as exc:
            raise self._error(exc, "download") from exc

    # -- uploads ----------------------------------------------------------------------------------

    async def _put_single(self, client: Any, key: str, path: Path, size: int,
                          content_type: str) -> None:
        data, digest = await asyncio.to_thread(_md5_of_range, path, 0, size)
        response = await client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
            ContentMD5=base64.b64encode(digest).decode(),
        )
        self._verify(response, digest.hex(), key)

    async def _put_multipart(self, client: Any, key: str, path: Path, size: int,
                             content_type: str) -> None:
        created = await client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type)
        upload_id = created["UploadId"]
        try:
            parts, digests = [], []
            for number, offset in enumerate(range(0, size, PART_SIZE), start=1):
                data, digest = await asyncio.to_thread(_md5_of_range, path, offset, PART_SIZE)
                response = await client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=data, ContentMD5=base64.b64encode(digest).decode(),
                )
                self._verify(response, digest.hex(), f"{key} part {number}")
                parts.append({"ETag": response["ETag"], "PartNumber": number})
                digests.append(digest)
            response = await client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception:
            with suppress(Exception):
                await client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload_id)
            raise
        # the S3 convention for a multipart ETag: md5(concatenated part digests)-partcount
        expected = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        etag = str(response.get("ETag", "")).strip('"').lower()
        multipart_md5 = re.fullmatch(r"[0-9a-f]{32}-\d+", etag)
        if multipart_md5 and etag != expected and not _encrypted(response):
            raise StorageError(f"stored {key} does not match the file (ETag {etag}, "
                               f"expected {expected})")

    def _verify(self, response: dict[str, Any], md5_hex: str, what: str) -> None:
        """Compare the ETag with the MD5 we sent, where the ETag is an MD5: not under KMS or
        SSE-C, nor a vendor's own hash (the store has checked our Content-MD5 either way)."""
        etag = str(response.get("ETag", "")).strip('"').lower()
        if _HEX_MD5.fullmatch(etag) and etag != md5_hex and not _encrypted(response):
            raise StorageError(f"stored {what} does not match the file (ETag {etag}, "
                               f"MD5 {md5_hex})")

    # -- errors -----------------------------------------------------------------------------------

    def _error(self, exc: Exception, action: str) -> StorageError:
        """A botocore error → a StorageError naming the problem, without the secret."""
        where = f"{VENDER_NAMES.get(self.vender, 'S3')} ({self.endpoint.url})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _CREDENTIAL_CODES:
                hint = (" (is the endpoint's region right?)"
                        if code == "AuthorizationHeaderMalformed" else "")
                message = (f"storage credentials rejected ({code}) by {where}: check accesskey "
                           f"and secretkey{hint}")
            elif code in _NO_BUCKET_CODES:
                message = f"bucket {self.bucket!r} does not exist at {where}"
            elif status == 404 and code in ("404", "NotFound", ""):
                message = (f"bucket {self.bucket!r} does not exist at {where} (HTTP 404 without "
                           "an S3 error code: is the endpoint an S3 API?)")
            elif code in _DENIED_CODES or status == 403:
                message = (f"access denied ({code or status}) to bucket {self.bucket!r} at "
                           f"{where}: the accesskey may not write objects there")
            else:
                detail = str(error.get("Message") or "")[:200]
                message = f"{action}: {where} answered {status} {code}" + (
                    f": {detail}" if detail else "")
        elif _is_connection_error(exc):
            message = f"cannot reach storage endpoint {self.endpoint.url}: {_short(exc)}"
        else:
            message = f"{action}: {where} failed: {_short(exc)}"
        return StorageError(message.replace(self._secretkey, "***") if self._secretkey
                            else message)


def _encrypted(response: dict[str, Any]) -> bool:
    """KMS and SSE-C objects have ETags that are not the MD5 of their content."""
    return (str(response.get("ServerSideEncryption", "")).startswith("aws:kms")
            or bool(response.get("SSECustomerAlgorithm")))


def _cause(exc: BaseException, kind: type[PrivateAddress]) -> PrivateAddress | None:
    """The first ``kind`` in the chain of causes and contexts of ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _is_connection_error(exc: Exception) -> bool:
    return isinstance(exc, (BotoConnectionError, HTTPClientError, OSError))


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
