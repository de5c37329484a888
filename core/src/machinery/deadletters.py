"""Dead letters: list, show, replay and purge the messages a broker keeps after a worker dropped
them (``nack(requeue=False)``: a malformed body, a task that kept failing with
``stop_task_deletion_on_error``, a state no backend would store...).

Brokers declare :attr:`Broker.supports_dead_letters <machinery.interfaces.Broker.supports_dead_letters>`
and implement :meth:`~machinery.interfaces.Broker.list_dead_letters` and
:meth:`~machinery.interfaces.Broker.remove_dead_letter`; this module builds the operations of
``machinery dead`` on those two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from machinery.errors import MachineryError

if TYPE_CHECKING:
    from machinery.interfaces import Broker, DeadLetter
    from machinery.server import Server
    from machinery.signature import Signature

__all__ = ["DeadLetterError", "Replayed", "describe", "purge", "replay", "require_support"]


class DeadLetterError(MachineryError):
    """A dead-letter operation that cannot be done (unsupported broker, unknown id, a body that
    is not a task message...)."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """What :func:`replay` did.

    :param letter: the dead letter replayed.
    :param task_uuid: the UUID the task runs under (a fresh one with ``new_uuid``).
    :param queue: the queue it was published to.
    :param removed: False when the publish succeeded but the dead letter could not be removed
        (it is then both queued and still kept: remove it with ``purge`` or by id).
    """

    letter: DeadLetter
    task_uuid: str
    queue: str
    removed: bool


def require_support(broker: Broker) -> None:
    """:raises DeadLetterError: the broker keeps no dead letters (or cannot list them)."""
    if not type(broker).supports_dead_letters:
        raise DeadLetterError(
            f"the {type(broker).__name__} broker keeps no dead letters that machinery can list "
            "(see `machinery plugins`)"
        )


def decode(letter: DeadLetter) -> Signature | None:
    """The letter's task signature, or None when the body is not a task message."""
    from machinery.errors import DecodeError
    from machinery.signature import decode_signature

    try:
        return decode_signature(letter.body)
    except DecodeError:
        return None


def describe(letter: DeadLetter, *, full: bool = False) -> dict[str, Any]:
    """A JSON-ready description: id, queue, time, deliveries, task name and UUID (or the decode
    error), and with ``full`` the body (text when UTF-8, else base64)."""
    from machinery.errors import DecodeError
    from machinery.signature import decode_signature, format_time

    out: dict[str, Any] = {
        "id": letter.id,
        "queue": letter.queue,
        "dead_at": format_time(letter.dead_at) if letter.dead_at is not None else None,
        "deliveries": letter.deliveries,
        "size": len(letter.body),
    }
    try:
        sig = decode_signature(letter.body)
        out.update(task=sig.name, uuid=sig.uuid, error=None)
    except DecodeError as exc:
        out.update(task=None, uuid=None, error=f"not a task message: {exc.reason}")
    if full:
        try:
            out["body"] = letter.body.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            out["body_base64"] = base64.b64encode(letter.body).decode("ascii")
    return out


def find(broker: Broker, letter_id: str, queue: str | None = None) -> DeadLetter:
    """:raises DeadLetterError: no dead letter has that id."""
    require_support(broker)
    letter = broker.get_dead_letter(letter_id, queue)
    if letter is None:
        where = f" in queue {queue!r}" if queue else ""
        raise DeadLetterError(f"no dead letter {letter_id!r}{where} (see `machinery dead list`)")
    return letter


def replay(server: Server, letter: DeadLetter, *, new_uuid: bool = False) -> Replayed:
    """Publish a dead letter again, then remove it from the dead letters.

    Unchanged (the default), the body is published byte for byte to the queue it died in and
    the task's stored state is reset to PENDING (so ``machinery watch`` and ``AsyncResult``
    follow the new run). With ``new_uuid`` it is sent as a new task: a fresh UUID, PENDING
    stored for it, the rest of the signature unchanged. The dead letter is removed only once
    the broker has confirmed the publish, so a failure leaves it where it was (a crash between
    the two leaves it both queued and kept: at least once, never lost).

    :raises DeadLetterError: the body is not a task message (nothing is published).
    :raises machinery.errors.PublishError: the broker did not accept it (it stays kept).
    """
    from machinery.signature import encode_signature
    from machinery.signature import new_uuid as make_uuid

    sig = decode(letter)
    if sig is None:
        raise DeadLetterError(
            f"dead letter {letter.id!r} is not a task message, so it cannot be replayed "
            "(`machinery dead show` prints it; `machinery dead purge` deletes it)"
        )
    if not sig.routing_key:
        sig.routing_key = letter.queue
    if new_uuid:
        sig.uuid = make_uuid("task_")
        body = encode_signature(sig)
    else:
        body = letter.body
    server.producer.publish_one(body, sig)
    try:
        removed = server.broker.remove_dead_letter(letter)
    except MachineryError:
        removed = False
    return Replayed(letter=letter, task_uuid=sig.uuid, queue=server.broker.queue_for(sig), removed=removed)


def purge(broker: Broker, queue: str | None = None) -> int:
    """Delete every dead letter of ``queue`` (all queues the broker can list if None).

    :returns: how many were deleted.
    """
    require_support(broker)
    return sum(1 for letter in broker.list_dead_letters(queue) if broker.remove_dead_letter(letter))
