"""The AWS transports: :class:`SQSTransport` (the broker) and :class:`DynamoDBTransport` (the
result backend and lock), with what they share: URL parsing, client set-up and the translation of
botocore errors into machinery's error tree.

The core keeps one transport per URL and configuration, so a backend and a lock on the same
DynamoDB share one client and one record of the tables known to exist; the client is closed with
the last of them. boto3 is imported here lazily (inside functions), so parsing a URL or an
options section never pays for it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlsplit

from machinery.plugin import ConfigError, MachineryError, Transport, parse_options, redact_url

if TYPE_CHECKING:
    from machinery.plugin import Config
    from machinery_sqs.backend import DynamoDBOptions, DynamoDBTables
    from machinery_sqs.broker import SQSOptions

__all__ = [
    "AwsTarget",
    "DynamoDBTransport",
    "SQSTransport",
    "error_code",
    "is_connection_error",
    "new_client",
    "parse_aws_url",
    "translate",
]

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


_session: Any = None
_session_lock = threading.Lock()


def new_client(service: str, *, session: Any, region: str, endpoint_url: str, pool: int = 50) -> Any:
    """A new boto3 client (thread-safe to use; made from ``session``, or from one process-wide
    default session, which keeps the loaded service models: the first client costs ~0.1 s).

    :param service: ``sqs`` or ``dynamodb``.
    :param session: a ``boto3.session.Session`` to create the client from (None: the default).
    :param region: region name ("" lets boto3 read ``AWS_REGION``/``AWS_DEFAULT_REGION``/~/.aws).
    :param endpoint_url: endpoint override ("" lets boto3 honour ``AWS_ENDPOINT_URL``).
    :param pool: HTTP connections kept per client (task threads ack concurrently).
    """
    global _session
    import boto3
    from botocore.config import Config as BotoConfig

    kwargs: dict[str, Any] = {
        "config": BotoConfig(
            max_pool_connections=pool,
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=40,
        )
    }
    if region:
        kwargs["region_name"] = region
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    with _session_lock:  # a session is not thread-safe; its clients are
        if session is None:
            if _session is None:
                _session = boto3.session.Session()
            session = _session
        return session.client(service, **kwargs)


def _close_client(client: Any) -> None:
    close = getattr(client, "close", None)  # botocore >= 1.28
    if close is not None:
        with contextlib.suppress(Exception):
            close()


class SQSTransport(Transport):
    """An SQS URL and ``sqs:`` section, parsed once; its connection is the boto3 client (a
    ready one from ``sqs.client`` is used as it is and never closed).

    :param url: ``https://sqs.<region>.amazonaws.com/<account>``, ``sqs://[region][/account]``
        or ``http://host:port/<account>`` (a local server).
    :param config: the core config.
    :raises machinery.errors.ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {"broker": "machinery_sqs.broker:SQSBroker"}

    def __init__(self, url: str, config: Config) -> None:
        from machinery_sqs.broker import SQSOptions, aliased

        super().__init__(url, config)
        #: Where to connect.
        self.target: AwsTarget = parse_aws_url(url, key="broker", own_scheme="sqs")
        if self.target.base and not self.target.path:
            raise ConfigError(
                "broker", f"{redact_url(url)!r}: expected https://sqs.<region>.amazonaws.com/<account-id>"
            )
        #: The ``sqs:`` section and the URL's query options.
        self.options: SQSOptions = parse_options(
            SQSOptions, "sqs", aliased(config.section("sqs")), aliased(self.target.query)
        )

    def open(self) -> Any:
        """The boto3 SQS client."""
        o = self.options
        if o.client is not None:
            return o.client
        return new_client(
            "sqs",
            session=o.session,
            region=o.region or self.target.region,
            endpoint_url=o.endpoint_url or self.target.endpoint_url,
        )

    def close_connection(self, connection: Any) -> None:
        """Close the client, unless it was the user's."""
        if connection is not self.options.client:
            _close_client(connection)


class DynamoDBTransport(Transport):
    """A DynamoDB URL and ``dynamodb:`` section, parsed once; its connection is a
    :class:`~machinery_sqs.backend.DynamoDBTables` (the client and the tables known to exist),
    shared by the backend and the lock.

    :param url: ``https://dynamodb.<region>.amazonaws.com``, ``dynamodb://[region]`` or
        ``http://host:port`` (DynamoDB Local, moto).
    :param config: the core config.
    :raises machinery.errors.ConfigError: a bad URL or option.
    """

    role_classes: ClassVar[Mapping[str, type[Any] | str]] = {
        "backend": "machinery_sqs.backend:DynamoDBBackend",
        "lock": "machinery_sqs.lock:DynamoDBLock",
    }

    def __init__(self, url: str, config: Config) -> None:
        from machinery_sqs.backend import DynamoDBOptions

        super().__init__(url, config)
        # the config key named in errors: the lock's when only the lock is on this URL
        key = "lock" if url == config.lock and url != config.result_backend else "result_backend"
        #: Where to connect.
        self.target: AwsTarget = parse_aws_url(url, key=key, own_scheme="dynamodb")
        #: The ``dynamodb:`` section and the URL's query options.
        self.options: DynamoDBOptions = DynamoDBOptions.load(self.target, config)

    def open(self) -> DynamoDBTables:
        """The boto3 DynamoDB client (a new one, unless ``dynamodb.client`` holds one) and the
        record of the tables known to exist."""
        from machinery_sqs.backend import DynamoDBTables

        o = self.options
        client = o.client
        if client is None:
            client = new_client(
                "dynamodb",
                session=o.session,
                region=o.region or self.target.region,
                endpoint_url=o.endpoint_url or self.target.endpoint_url,
            )
        return DynamoDBTables(o, client)

    def close_connection(self, connection: DynamoDBTables) -> None:
        """Close the client, unless it was the user's."""
        if connection.client is not self.options.client:
            _close_client(connection.client)
