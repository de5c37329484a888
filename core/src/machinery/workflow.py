"""Workflows: groups, chains and chords, with Go Machinery's semantics.

* :class:`Group`: tasks run in parallel; each gets the group's UUID and size.
* :class:`Chain`: each task's ``on_success`` holds the next; results are appended to the next
  task's arguments unless it is immutable. ``Chain(add(1, 1), add(5, 5), multiply(4))`` runs
  ``multiply(4, add(5, 5, add(1, 1)))`` = 48.
* :class:`Chord`: a group plus a callback that receives all members' results, in group order,
  fired exactly once when the whole group has succeeded.
  ``Chord(Group(add(1, 1), add(5, 5)), multiply())`` runs ``multiply(2, 10)`` = 20.
"""

from __future__ import annotations

from collections.abc import Iterable

from machinery.signature import Signature, new_uuid

__all__ = ["Chain", "Chord", "Group"]


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
