"""What the SQS broker and the DynamoDB backend and lock share: URL parsing, client set-up and
the translation of botocore errors into machinery's error tree.

boto3 is imported here lazily (inside functions), so parsing a URL or an options section never
pays for it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from machinery.plugin import ConfigError, MachineryError, redact_url

__all__ = ["AwsTarget", "LazyClient", "error_code", "is_connection_error", "parse_aws_url", "translate"]

E = TypeVar("E", bound=MachineryError)

#: ``sqs.us-east-1.amazonaws.com``, ``dynamodb.eu-west-1.amazonaws.com``, ``sqs.cn-north-1.amazonaws.com.cn``
_AWS_HOST = re.compile(r"^(?P<service>[a-z0-9-]+)[.-](?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$")
#: the region form itself (``us-east-1``, ``us-gov-west-1``)
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class AwsTarget:
    """What a transport URL says about where to connect.

    :param scheme: ``https``, ``http``, ``sqs`` or ``dynamodb``.
    :param region: the AWS region ("" when the URL leaves it to the environment).
    :param endpoint_url: an explicit endpoint taken from a non-AWS host ("" if none).
    :param path: the URL path without slashes (the account id for SQS).
    :param base: ``scheme://host/path`` without query, for Go's queue URLs (http(s) forms only).
    :param query: options given in the URL's query string.
    """

    scheme: str
    region: str = ""
    endpoint_url: str = ""
    path: str = ""
    base: str = ""
    query: Mapping[str, str] = field(default_factory=dict)


def parse_aws_url(url: str, *, key: str, own_scheme: str) -> AwsTarget:
    """Parse ``https://<service>.<region>.amazonaws.com/<path>`` or ``<own_scheme>://[region][/path]``.

    An ``https://`` host that is not an AWS one (a VPC endpoint) and any ``http://`` host (a
    local server such as moto or ElasticMQ) becomes the endpoint URL. Options may follow as a
    query string (``?endpoint_url=...&region=...``).

    :param key: the config key the URL came from, for error messages (``broker``).
    :param own_scheme: the friendlier scheme of the transport (``sqs`` or ``dynamodb``).
    :raises ConfigError: a malformed URL, or credentials in it (use the AWS credential chain).
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(key, f"not a valid URL: {redact_url(url)!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if parts.username or parts.password:
        raise ConfigError(
            key,
            f"{redact_url(url)!r}: credentials do not go in the URL; use the AWS credential chain "
            "(environment variables, ~/.aws, an instance role) or a boto3 session/client",
        )
    if parts.fragment:
        raise ConfigError(key, f"{redact_url(url)!r}: unexpected fragment")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path.strip("/")
    if scheme in ("https", "http"):
        host = (parts.hostname or "").lower()
        if not host:
            raise ConfigError(key, f"{redact_url(url)!r}: missing host")
        m = _AWS_HOST.match(host) if scheme == "https" else None
        region = m.group("region") if m else ""
        endpoint = "" if m else f"{scheme}://{parts.netloc}"
        base = f"{scheme}://{parts.netloc}/{path}" if path else f"{scheme}://{parts.netloc}"
        return AwsTarget(scheme, region, endpoint, path, base, query)
    if scheme == own_scheme:
        region = parts.netloc.lower()
        if region and not _REGION.match(region):
            raise ConfigError(
                key, f"{redact_url(url)!r}: {region!r} is not an AWS region (expected {own_scheme}://us-east-1/...)"
            )
        return AwsTarget(scheme, region, "", path, "", query)
    raise ConfigError(key, f"{redact_url(url)!r}: expected an https://, http:// or {own_scheme}:// URL")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` ("" for other exceptions).

    SQS's JSON protocol reports ``AWS.SimpleQueueService.NonExistentQueue`` with the query
    code ``QueueDoesNotExist``; the query code is preferred so both spellings compare equal.
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return ""
    err = response.get("Error") or {}
    return str(err.get("QueryErrorCode") or err.get("Code") or "")


def is_connection_error(exc: BaseException) -> bool:
    """True for network-level botocore errors (endpoint unreachable, timeouts, dropped connections)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def translate(
    exc: BaseException, what: str, error: Callable[[str], E], connection_error: Callable[[str], MachineryError]
) -> MachineryError:
    """Turn a botocore exception into a machinery error (the caller raises it ``from exc``).

    :param what: the operation, for the message (``"send to SQS queue 'jobs'"``).
    :param error: builds the error for refusals (``PublishError``, ``BackendError``...).
    :param connection_error: builds the error for network failures.
    """
    from botocore.exceptions import NoCredentialsError, NoRegionError, PartialCredentialsError

    if isinstance(exc, NoRegionError):
        return ConfigError("region", f"cannot {what}: no AWS region (put it in the URL, set AWS_REGION or 'region')")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return connection_error(f"cannot {what}: no AWS credentials found ({exc})")
    if is_connection_error(exc):
        return connection_error(f"cannot {what}: {exc}")
    code = error_code(exc)
    if code:
        msg = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return error(f"cannot {what}: {code}: {msg}")
    return error(f"cannot {what}: {type(exc).__name__}: {exc}")


_shared: dict[tuple[Any, ...], Any] = {}
_shared_lock = threading.Lock()


class LazyClient:
    """A boto3 client obtained on first use (never in a constructor), thread-safely.

    Clients this plugin creates are shared within the process by every broker, backend and lock
    with the same service, region, endpoint and session: creating one costs ~0.1 s (boto3 loads
    the service model), and boto3 clients are thread-safe. They live until the process exits.

    :param service: ``sqs`` or ``dynamodb``.
    :param client: a ready client supplied by the user (used as it is, never closed).
    :param session: a ``boto3.session.Session`` to create the client from.
    :param region: region name ("" lets boto3 read ``AWS_REGION``/``AWS_DEFAULT_REGION``/~/.aws).
    :param endpoint_url: endpoint override ("" lets boto3 honour ``AWS_ENDPOINT_URL``).
    :param pool: HTTP connections kept per client (task threads ack concurrently).
    """

    def __init__(
        self, service: str, *, client: Any, session: Any, region: str, endpoint_url: str, pool: int = 50
    ) -> None:
        self.service = service
        self._client = client
        self._session = session
        self._region = region
        self._endpoint_url = endpoint_url
        self._pool = pool

    def get(self) -> Any:
        """The client, created (or taken from the process's shared ones) on the first call."""
        c = self._client
        if c is not None:
            return c
        key = (
            os.getpid(),
            self.service,
            self._region,
            self._endpoint_url,
            id(self._session),
            os.environ.get("AWS_ENDPOINT_URL"),
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            os.environ.get("AWS_PROFILE"),
        )
        with _shared_lock:
            c = _shared.get(key)
            if c is None:
                import boto3
                from botocore.config import Config as BotoConfig

                session = self._session or boto3.session.Session()
                kwargs: dict[str, Any] = {
                    "config": BotoConfig(
                        max_pool_connections=self._pool,
                        retries={"mode": "standard", "max_attempts": 4},
                        connect_timeout=5,
                        read_timeout=40,
                    )
                }
                if self._region:
                    kwargs["region_name"] = self._region
                if self._endpoint_url:
                    kwargs["endpoint_url"] = self._endpoint_url
                c = _shared[key] = session.client(self.service, **kwargs)
        self._client = c
        return c
