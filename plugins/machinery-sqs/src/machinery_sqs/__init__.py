"""AWS transports for machinery: an SQS broker, a DynamoDB result backend and a DynamoDB lock.

Schemes: ``https://sqs.<region>.amazonaws.com/<account>`` and ``sqs://`` (broker),
``https://dynamodb.<region>.amazonaws.com`` and ``dynamodb://`` (backend and lock); ``http://``
for local servers (moto, ElasticMQ, DynamoDB Local). Two transports (one per service) are
registered lazily by name, so boto3 is imported only when one of these URLs is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from machinery import hookimpl

if TYPE_CHECKING:
    from machinery.plugin import TransportRegistry
    from machinery_sqs.backend import DynamoDBBackend, DynamoDBOptions
    from machinery_sqs.broker import SQSBroker, SQSOptions
    from machinery_sqs.lock import DynamoDBLock

__all__ = ["DynamoDBBackend", "DynamoDBLock", "DynamoDBOptions", "SQSBroker", "SQSOptions"]
_MODULES = {
    "SQSBroker": "broker",
    "SQSOptions": "broker",
    "DynamoDBBackend": "backend",
    "DynamoDBOptions": "backend",
    "DynamoDBLock": "lock",
}

#: Environment variables of the ``sqs:`` section (the broker) and the ``dynamodb:`` section
#: (backend and lock), declared with the registration as plain data.
SQS_ENV: dict[str, str] = {
    "SQS_WAIT_TIME_SECONDS": "wait_time_seconds",
    "SQS_VISIBILITY_TIMEOUT": "visibility_timeout",
}
DYNAMODB_ENV: dict[str, str] = {
    "TASK_STATES_TABLE": "task_states_table",
    "GROUP_METAS_TABLE": "group_metas_table",
}


@hookimpl
def machinery_register_transports(registry: TransportRegistry) -> None:
    """SQS (``sqs://``, Go's ``https://sqs.<region>.amazonaws.com/<account>``) for brokers;
    DynamoDB (``dynamodb://``, ``https://dynamodb.<region>.amazonaws.com``) for result backends
    and locks; ``http://`` for local servers."""
    registry.add(
        "sqs",
        "machinery_sqs.transport:SQSTransport",
        roles={"broker"},
        section="sqs",
        env=SQS_ENV,
        aliases=("https", "http"),
    )
    registry.add(
        "dynamodb",
        "machinery_sqs.transport:DynamoDBTransport",
        roles={"backend", "lock"},
        section="dynamodb",
        env=DYNAMODB_ENV,
        aliases=("https", "http"),
    )


def __getattr__(name: str) -> object:
    # Re-export the classes without importing boto3 when the plugin is merely registered.
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"machinery_sqs.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
