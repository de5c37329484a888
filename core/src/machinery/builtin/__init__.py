"""The transports that ship with the core, each a package registered like any plugin:
:mod:`machinery.builtin.memory` (``memory://`` and ``eager://``, the conformance suite's
reference) and :mod:`machinery.builtin.sqlite` (the embedded ``sqlite://`` default)."""
