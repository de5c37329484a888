"""The :class:`Producer`: sends tasks, groups, chains and chords through a broker, storing their
first states in a backend.

A :class:`~machinery.Server` composes one (its ``producer``; the Go-named ``send_*`` methods
delegate to it); a worker re-publishes retries through it and a scheduler sends its ticks
through it. It knows no registered task and no configuration.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from machinery.results import AsyncResult, ChainAsyncResult, ChordAsyncResult, GroupResult
from machinery.wire.codec import encode_signature
from machinery.wire.model import NullHeaders, Signature, new_uuid, sent_headers

if TYPE_CHECKING:
    from machinery.interfaces import Backend, Broker
    from machinery.plugins import PluginHost
    from machinery.workflow import Chain, Chord, Group

__all__ = ["Producer"]


class Producer:
    """Publishes signatures through ``broker``, storing PENDING in ``backend``.

    :param broker: where messages go.
    :param backend: where the first states go (and what the result objects read).
    :param plugins: the plugin host whose ``machinery_before_publish``/``after_publish``
        observers see every publish (None: no observers).
    :param pre_publish: called with each signature just before it is encoded
        (Go's ``SetPrePublishHandler``); also settable later as :attr:`pre_publish`.
    """

    def __init__(
        self,
        broker: Broker,
        backend: Backend,
        plugins: PluginHost | None = None,
        pre_publish: Callable[[Signature], None] | None = None,
    ) -> None:
        self.broker = broker
        self.backend = backend
        #: Called with each signature just before it is encoded (None: nothing).
        self.pre_publish = pre_publish
        #: The host when a plugin observes publishing, else None (read once: hooks are registered by then).
        self._hooks = plugins if plugins is not None and plugins.has_publish_observers() else None
        self._plugins = plugins
        #: PENDING and the message in one round trip (``machinery_fused_publisher``), asked on the
        #: first send; None when no plugin fuses this pair.
        self._fused: Callable[[bytes, Signature], None] | None = None
        self._fused_asked = False

    def prepare(self, sig: Signature) -> bytes:
        """Give ``sig`` a UUID and ``{}`` headers when it has none, run the pre-publish handler,
        the ``machinery_before_publish`` observers and the broker's routing, and encode it."""
        if not sig.uuid:
            sig.uuid = new_uuid("task_")
        if type(sig.headers) is NullHeaders:  # Go's HeadersWithSpan: a nil map becomes {}
            sig.headers = dict(sig.headers)
        if self.pre_publish is not None:
            self.pre_publish(sig)
        if self._hooks is not None:
            self._hooks.before_publish(sig)
        self.broker.adjust_routing_key(sig)
        return encode_signature(sig)

    def send(self, signature: Signature) -> AsyncResult:
        """Store PENDING and publish one task (Go's ``SendTask``).

        :raises PublishError: the broker did not accept it.
        :raises BackendError: the PENDING state could not be stored.
        """
        body = self.prepare(signature)
        if self._hooks is not None:
            self._published([signature], self.publish_one, body, signature)
        else:
            self.publish_one(body, signature)
        return AsyncResult(signature, self.backend)

    def publish_one(self, body: bytes, signature: Signature) -> None:
        """Store PENDING, then publish ``body`` (the encoded ``signature``), with no hook."""
        # PENDING is stored before the message can be taken (a worker's STARTED must not be
        # overwritten by it): in one round trip where a plugin fuses the broker and the backend.
        if not self._fused_asked:
            self._fused = self._fused_publisher()
            self._fused_asked = True
        fused = self._fused
        if fused is not None:
            fused(body, signature)
            return
        self.backend.set_state_pending(signature)
        self.broker.publish(body, signature)

    def _fused_publisher(self) -> Callable[[bytes, Signature], None] | None:
        # The transport's capability when the broker and the backend come from the same one
        # (asked first, as the hookspec says), else a plugin's ``machinery_fused_publisher``.
        broker, backend = self.broker, self.backend
        transport = broker.transport
        if (
            transport is not None
            and transport is backend.transport
            and transport.supports_publish_with_state(broker, backend)
        ):
            return functools.partial(transport.publish_with_state, broker, backend)
        plugins = self._plugins
        return plugins.fused_publisher(broker, backend) if plugins is not None else None

    def republish(self, signature: Signature) -> None:
        """Publish without touching the stored state (retries keep RETRY visible)."""
        body = self.prepare(signature)
        if self._hooks is not None:
            self._published([signature], self.broker.publish, body, signature)
        else:
            self.broker.publish(body, signature)

    def _published(self, sigs: Sequence[Signature], publish: Callable[..., None], *args: Any) -> None:
        """Run ``publish(*args)``, then ``machinery_after_publish`` for each of ``sigs``."""
        try:
            publish(*args)
        except BaseException as exc:
            for s in sigs:
                self._after_publish(s, exc)
            raise
        for s in sigs:
            self._after_publish(s, None)

    def _after_publish(self, sig: Signature, error: BaseException | None) -> None:
        if self._hooks is None:
            return
        try:
            self._hooks.after_publish(sig, error)
        except Exception:  # an observer must not turn a send into a failure
            import logging

            logging.getLogger("machinery.server").exception("a plugin's machinery_after_publish raised")

    def send_group(self, group: Group, send_concurrency: int = 0) -> GroupResult:
        """Record the group, store PENDING for each member and publish them all.

        :param send_concurrency: how many publishing threads (0: one pipelined batch, which is
            fastest for brokers that batch).
        :returns: one :class:`AsyncResult` per member, in order.
        """
        self.backend.init_group(group.group_uuid, group.uuids())
        self.backend.set_states_pending(group.tasks)
        items = [(self.prepare(s), s) for s in group.tasks]
        if self._hooks is not None:
            self._published(group.tasks, self._publish_items, items, send_concurrency)
        else:
            self._publish_items(items, send_concurrency)
        return GroupResult((AsyncResult(s, self.backend) for s in group.tasks), group.group_uuid)

    def _publish_items(self, items: Sequence[tuple[bytes, Signature]], send_concurrency: int) -> None:
        if send_concurrency <= 1 or len(items) <= 1:
            self.broker.publish_many(items)
        else:
            n = min(send_concurrency, len(items))
            chunks = [items[i::n] for i in range(n)]
            errors: list[BaseException] = []

            def run(chunk: Sequence[tuple[bytes, Signature]]) -> None:
                try:
                    self.broker.publish_many(chunk)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in chunks]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

    def send_chord(self, chord: Chord, send_concurrency: int = 0) -> ChordAsyncResult:
        """Send the chord's group; the callback is sent by the worker that completes the group."""
        sent_headers(chord.callback)  # Go's SendChord gives the callback {} headers too
        self.send_group(chord.group, send_concurrency)
        return ChordAsyncResult(chord.group.tasks, chord.callback, self.backend)

    def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send the chain's first task; each next one is sent by the worker on success."""
        self.send(chain.tasks[0])
        return ChainAsyncResult(chain.tasks, self.backend)
