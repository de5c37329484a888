"""Broker contract tests: :class:`BrokerConformance`.

The tests live in two modules (:mod:`machinery.testing._broker_messages`,
:mod:`machinery.testing._broker_worker`) over a common base (:mod:`machinery.testing._broker_base`:
the tunables such as :attr:`~BrokerConformance.eta_tolerance`, the fixtures and helpers);
:class:`BrokerConformance` is all of them, and is imported from here or from
:mod:`machinery.testing`.
"""

from __future__ import annotations

from machinery.testing._broker_base import require_capability
from machinery.testing._broker_messages import BrokerMessageTests
from machinery.testing._broker_worker import BrokerWorkerTests

__all__ = ["BrokerConformance", "require_capability"]


class BrokerConformance(BrokerMessageTests, BrokerWorkerTests):
    """The broker contract. Subclass it in your plugin's tests (``class TestMyBroker(BrokerConformance): ...``).

    Needs the fixtures ``url`` (yours) and ``broker_oracle`` (yours, a
    :class:`~machinery.testing.BrokerOracle`); see :mod:`machinery.testing.plugin` for the rest.
    The broker class is resolved from the URL through the plugin host, as a user's
    ``Server(...)`` would, so the plugin must be installed and registered.
    """

    _machinery_suite = True
