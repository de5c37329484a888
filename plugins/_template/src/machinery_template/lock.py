"""``TemplateLock``: a lock with expiry, used by the periodic task scheduler (one send per tick
across schedulers).

TEMPLATE: a skeleton. Each operation is atomic on the server (``SET NX PX``, a conditional
write...), owned by ``self.owner`` (one token per instance), and a held key expires on its
own when its holder dies. The reference is the core's ``memory://`` lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from machinery.plugin import Lock
from machinery_template import ENV_OPTIONS
from machinery_template.transport import TemplateTransport

if TYPE_CHECKING:
    from datetime import timedelta

    from machinery.plugin import Config

__all__ = ["TemplateLock"]


class TemplateLock(Lock):
    """Lock for ``template://`` URLs; each instance is one owner.

    :param url: the URL.
    :param config: the core configuration.
    :param transport: the transport handing it out (None: the shared one of ``url`` and ``config``).
    """

    config_section: ClassVar[str | None] = "template"
    env_options: ClassVar[dict[str, str]] = ENV_OPTIONS

    def __init__(self, url: str, config: Config, *, transport: TemplateTransport | None = None) -> None:
        super().__init__(url, config)
        self.transport = TemplateTransport.attach(self, url, config, transport)

    @property
    def client(self) -> Any:
        """The transport's connection (opened on first use)."""
        assert self.transport is not None
        return self.transport.connection_for(self)

    def acquire(self, key: str, ttl: timedelta) -> bool:
        """Take ``key`` for ``ttl`` unless another owner holds an unexpired claim (this owner
        taking it again succeeds)."""
        raise NotImplementedError("TEMPLATE: TemplateLock.acquire: an atomic set-if-absent with expiry")

    def release(self, key: str) -> bool:
        """Delete ``key`` if this owner holds it; False otherwise."""
        raise NotImplementedError("TEMPLATE: TemplateLock.release: delete if the owner matches")

    def extend(self, key: str, ttl: timedelta) -> bool:
        """Push the expiry of ``key`` to ``ttl`` from now if this owner still holds it."""
        raise NotImplementedError("TEMPLATE: TemplateLock.extend: renew if the owner matches")

    def close(self) -> None:
        """Release the transport (its connection is closed with the last role). Idempotent."""
        if self.transport is not None:
            self.transport.release(self)
