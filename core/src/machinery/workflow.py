"""Workflows: groups, chains and chords, with Go Machinery's semantics.

* :class:`Group`: tasks run in parallel; each gets the group's UUID and size.
* :class:`Chain`: each task's ``on_success`` holds the next; a task's results are appended to
  the next task's arguments unless the task that produced them is immutable (Go's meaning of
  ``Immutable``). ``Chain(add(1, 1), add(5, 5), multiply(4))`` runs
  ``multiply(4, add(5, 5, add(1, 1)))`` = 48; with ``add(1, 1).set_immutable()`` first,
  ``add(5, 5)`` does not receive its result: ``multiply(4, add(5, 5))`` = 40.
* :class:`Chord`: a group plus a callback that receives all members' results, in group order,
  fired exactly once when the whole group has succeeded.
  ``Chord(Group(add(1, 1), add(5, 5)), multiply())`` runs ``multiply(2, 10)`` = 20.

The worker that stores a chord member's SUCCESS calls :func:`chord_callback_to_send`; the one
call that completes the group gets the callback to send. The group record (its member list
and trigger flag) must still be in the result backend then: when it has expired or was lost
(a cache restarted), the callback cannot be sent, and a WARNING names the group and callback.
"""

from __future__ import annotations

from collections.abc import Iterable

from machinery.signature import Arg, Signature, new_uuid

# Producers import this module: nothing more is imported at run time (``logging`` only when a
# warning is due); type checkers treat ``TYPE_CHECKING`` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinery.interfaces import Backend

__all__ = ["Chain", "Chord", "Group", "chord_callback_to_send"]

# Groups already reported missing (a WARNING once per group and process, not once per member;
# forgotten all at once past 1000, so a group may be reported again then).
_missing_reported: dict[str, None] = {}
_MISSING_REMEMBERED = 1000


def _flatten(tasks: tuple[Signature | Iterable[Signature], ...]) -> list[Signature]:
    if len(tasks) == 1 and not isinstance(tasks[0], Signature):
        return list(tasks[0])
    return [t for t in tasks if isinstance(t, Signature)]


class Group:
    """Tasks that run independently and in parallel (Go's ``tasks.NewGroup``).

    :param tasks: signatures, as arguments or one iterable.
    :param group_uuid: defaults to ``group_<uuid4>``.
    """

    def __init__(self, *tasks: Signature | Iterable[Signature], group_uuid: str = "") -> None:
        self.tasks: list[Signature] = _flatten(tasks)
        if not self.tasks:
            raise ValueError("a group needs at least one task")
        self.group_uuid = group_uuid or new_uuid("group_")
        n = len(self.tasks)
        for sig in self.tasks:
            if not sig.uuid:
                sig.uuid = new_uuid("task_")
            sig.group_uuid = self.group_uuid
            sig.group_task_count = n

    def uuids(self) -> list[str]:
        """The member task UUIDs, in order."""
        return [t.uuid for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"Group({self.group_uuid}, {len(self.tasks)} tasks)"


class Chain:
    """Tasks that run one after another, each receiving the previous results (Go's ``NewChain``).

    To make a step ignore the previous step's result, mark the *previous* step immutable
    (``Signature(..., immutable=True)`` or :meth:`Signature.set_immutable`): in Go's terms an
    immutable task does not pass its results to its success callbacks.

    :param tasks: signatures, as arguments or one iterable.
    """

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        self.tasks: list[Signature] = _flatten(tasks)
        if not self.tasks:
            raise ValueError("a chain needs at least one task")
        for sig in self.tasks:
            if not sig.uuid:
                sig.uuid = new_uuid("task_")
        for prev, nxt in zip(self.tasks, self.tasks[1:]):
            prev.on_success = [nxt]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(t.name for t in self.tasks)})"


class Chord:
    """A group and a callback that runs once, with all results, when the group succeeded.

    :param group: the group (or an iterable of signatures, made into a group).
    :param callback: the callback; its UUID defaults to ``chord_<uuid4>``.
    """

    def __init__(self, group: Group | Iterable[Signature], callback: Signature) -> None:
        self.group = group if isinstance(group, Group) else Group(*group)
        self.callback = callback
        if not callback.uuid:
            callback.uuid = new_uuid("chord_")
        for sig in self.group.tasks:
            sig.chord_callback = callback

    def __repr__(self) -> str:
        return f"Chord({self.group!r} -> {self.callback.name})"


def _warn(msg: str, *args: object) -> None:
    import logging

    logging.getLogger("machinery.worker").warning(msg, *args)


def _warn_group_missing(group_uuid: str, callback: Signature) -> None:
    if group_uuid in _missing_reported:
        return
    if len(_missing_reported) >= _MISSING_REMEMBERED:
        _missing_reported.clear()
    _missing_reported[group_uuid] = None
    _warn(
        "chord callback %s (%s) of group %s will not be sent: the group's record is missing from the "
        "result backend (expired after results_expire_in, or lost when the store restarted)",
        callback.name,
        callback.uuid,
        group_uuid,
    )


def chord_callback_to_send(backend: Backend, member: Signature) -> Signature | None:
    """After ``member``, a task of a chord's group, has succeeded: the chord callback, with every
    member's results appended (unless it is immutable), when this call is the one that completes
    the group and wins the trigger; else None.

    One backend call (:meth:`~machinery.backend_ops.BackendOps.complete_chord_member`) reads the
    group once. A missing group record is logged as a WARNING naming the group and the callback
    (once per group); a group with a failed member is logged too, its callback is not sent.
    """
    group_uuid, count, callback = member.group_uuid, member.group_task_count, member.chord_callback
    if not group_uuid or callback is None:
        return None
    outcome = backend.complete_chord_member(group_uuid, count)
    kind = outcome.kind
    if kind == "fire":
        if not callback.immutable:
            callback.args.extend(Arg._trusted(r.type, r.value) for st in outcome.states for r in st.results or ())
        return callback
    if kind == "member_failed" and outcome.failed is not None:
        _warn("chord of group %s not sent: task %s is %s", group_uuid, outcome.failed.task_uuid, outcome.failed.state)
    elif kind == "vanished" or (kind == "missing" and backend.needs_group_record):
        _warn_group_missing(group_uuid, callback)
    return None
