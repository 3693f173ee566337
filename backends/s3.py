"""The S3 backend: httpx under trio, signed with botocore's SigV4, credentials from botocore's chain.

Create-if-absent is ``PUT`` with ``If-None-Match: *``: S3 lets exactly one
writer win (200); the others get 412 (Conflict); 409 means a concurrent
conditional write is in progress: retry. 5xx, throttling (429/503
SlowDown), connection errors and timeouts are retried with exponential
backoff and full jitter, bounded in attempts and time. A write that timed
out may have landed: before retrying a create, the key is read back and
compared with our bytes (which carry a unique commit id) — never assumed.
403/400 (bad credentials, signature, permissions) are Invalid at once: no
retry storm. A ranged read is a ``GET`` with ``Range: bytes=a-b``, retried the
same way: 206 answers the range (its ``Content-Range`` must start at ``a``),
416 means the object ends before ``a``, and a 200 (a server that ignores
``Range``) is sliced here.

Region: ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the profile's ``region``;
never the instance metadata service. Endpoint: ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` (path-style addressing, for moto/MinIO) or AWS's
regional endpoint (virtual-hosted addressing).
"""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote, urlencode

import httpx
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.session import Session

from backends.base import (Conflict, Invalid, NotFound, ObjectInfo, RequestCounters, Unavailable,
                           check_key, check_prefix, check_range)

__all__ = ["S3Backend", "parse_s3_url", "resolve_region"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_RETRY_STATUS = {409, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` → ``(bucket, prefix ending in '/' or '')``."""
    if not url.startswith("s3://"):
        raise Invalid(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise Invalid(f"no bucket in {url!r}: use s3://bucket or s3://bucket/prefix")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    return bucket, prefix


def resolve_region(environ: Mapping[str, str], session: Session) -> str:
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region:
        region = session.get_config_variable("region")  # the profile's region; never IMDS
    if not region:
        raise Invalid("an s3:// shared store needs a region: set AWS_REGION (or a region in "
                      "the AWS profile); it is never read from instance metadata")
    return str(region)


class S3Backend:
    name = "s3"

    def __init__(self, bucket: str, prefix: str, *, region: str, endpoint: str | None,
                 credentials: Any, timeout_s: float = 10.0, max_attempts: int = 6,
                 max_elapsed_s: float = 30.0, seed: int | None = None,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self._credentials = credentials
        if endpoint:
            self._base = f"{endpoint.rstrip('/')}/{bucket}"
        else:
            self._base = f"https://{bucket}.s3.{region}.amazonaws.com"
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), transport=transport)
        self._max_attempts = max_attempts
        self._max_elapsed_s = max_elapsed_s
        self._rng = random.Random(seed)
        self._sleep = sleep
        self.counters = RequestCounters()

    @classmethod
    async def from_url(cls, url: str, environ: Mapping[str, str], **kwargs: Any) -> S3Backend:
        bucket, prefix = parse_s3_url(url)
        session = Session()
        region = resolve_region(environ, session)
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        credentials = await trio.to_thread.run_sync(session.get_credentials)  # may ask a network provider
        if credentials is None:
            raise Invalid("no AWS credentials found (environment, shared credentials file, SSO, "
                          "assumed role, container or instance role)")
        return cls(bucket, prefix, region=region, endpoint=endpoint, credentials=credentials, **kwargs)

    # -- transport ----------------------------------------------------------

    def _url(self, key: str | None, params: dict[str, str] | None) -> str:
        url = self._base + ("/" + quote(self.prefix + key, safe="/~") if key is not None else "/")
        if params:
            url += "?" + urlencode(sorted(params.items()), quote_via=quote, safe="~")
        return url

    async def _send(self, method: str, url: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
        frozen = await trio.to_thread.run_sync(self._credentials.get_frozen_credentials)
        request = AWSRequest(method=method, url=url, data=data, headers=dict(headers))
        S3SigV4Auth(frozen, "s3", self.region).add_auth(request)
        return await self._client.request(method, url, content=data, headers=dict(request.headers.items()))

    async def _backoff(self, attempt: int) -> None:
        self.counters.add("retries")
        await self._sleep(self._rng.uniform(0, min(2.0, 0.05 * 2**attempt)))

    @staticmethod
    def _error(response: httpx.Response) -> str:
        try:
            root = ET.fromstring(response.content)
            code, message = root.findtext("Code"), root.findtext("Message")
            return f"{response.status_code} {code}: {message}"
        except ET.ParseError:
            return f"{response.status_code} {response.text[:200]}"

    async def _request(self, op: str, method: str, key: str | None, *, params: dict[str, str] | None = None,
                       data: bytes = b"", headers: dict[str, str] | None = None,
                       on_ambiguous: Callable[[], Awaitable[bool]] | None = None,
                       answers: tuple[int, ...] = (404, 412)) -> httpx.Response:
        """Send with retries. Returns the final response (2xx, or one of ``answers``); raises otherwise.

        ``on_ambiguous`` is called before a retry that follows a possibly-landed
        write; it returns True if the write is known to have landed.
        """
        url = self._url(key, params)
        deadline = trio.current_time() + self._max_elapsed_s
        reason = ""
        maybe_landed = False
        for attempt in range(self._max_attempts):
            if attempt:
                await self._backoff(attempt)
                if maybe_landed and on_ambiguous is not None and await on_ambiguous():
                    return httpx.Response(200)
            self.counters.add(op)
            try:
                response = await self._send(method, url, data, headers or {})
            except httpx.ConnectError as exc:
                reason, maybe_landed = f"cannot connect: {exc}", maybe_landed
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason, maybe_landed = f"{type(exc).__name__}: {exc}", True
            else:
                status = response.status_code
                if status < 300 or status in answers:
                    return response
                if status in _RETRY_STATUS:
                    reason = self._error(response)
                    maybe_landed = maybe_landed or status >= 500
                else:
                    self.counters.add("errors")
                    raise Invalid(f"S3 {method} s3://{self.bucket}/{self.prefix}{key or ''}: {self._error(response)}")
            if trio.current_time() > deadline:
                break
        self.counters.add("errors")
        raise Unavailable(f"S3 {method} s3://{self.bucket}/{self.prefix}{key or ''} failed after "
                          f"{attempt + 1} attempts: {reason}")

    # -- the interface --------------------------------------------------------

    async def get(self, key: str) -> bytes:
        response = await self._request("GET", "GET", check_key(key))
        if response.status_code == 404:
            raise NotFound(key)
        return response.content

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        check_key(key)
        check_range(start, length)
        if length == 0:
            return b""
        response = await self._request("GET", "GET", key, headers={"Range": f"bytes={start}-{start + length - 1}"},
                                       answers=(404, 416))
        status = response.status_code
        if status == 404:
            raise NotFound(key)
        if status == 416:  # the object ends at or before ``start``
            return b""
        if status == 206:
            found = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if found is None or int(found.group(1)) != start:
                self.counters.add("errors")
                raise Unavailable(f"S3 GET s3://{self.bucket}/{self.prefix}{key} bytes {start}-: the answer's "
                                  f"Content-Range is {response.headers.get('content-range')!r}")
            return response.content[:length]
        return response.content[start : start + length]  # 200: the whole object (Range ignored)

    async def put(self, key: str, data: bytes) -> None:
        await self._request("PUT", "PUT", check_key(key), data=data)

    async def create(self, key: str, data: bytes) -> None:
        check_key(key)

        async def landed() -> bool:
            try:
                current = await self.get(key)
            except NotFound:
                return False
            if current == data:
                return True
            raise Conflict(key)

        response = await self._request("PUT", "PUT", key, data=data, headers={"If-None-Match": "*"},
                                       on_ambiguous=landed)
        if response.status_code == 412:
            self.counters.add("conflicts")
            raise Conflict(key)

    async def list(self, prefix: str, *, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        check_prefix(prefix)
        params = {"list-type": "2", "prefix": self.prefix + prefix, "max-keys": str(min(limit, 1000))}
        if start_after:
            params["start-after"] = self.prefix + start_after
        response = await self._request("LIST", "GET", None, params=params)
        if response.status_code == 404:
            raise Invalid(f"the bucket {self.bucket!r} does not exist")
        root = ET.fromstring(response.content)
        out = []
        for item in root.iter(f"{_NS}Contents"):
            full = item.findtext(f"{_NS}Key") or ""
            out.append(ObjectInfo(full[len(self.prefix):], int(item.findtext(f"{_NS}Size") or 0)))
        return out[:limit]

    async def delete(self, key: str) -> None:
        await self._request("DELETE", "DELETE", check_key(key))

    async def aclose(self) -> None:
        await self._client.aclose()
