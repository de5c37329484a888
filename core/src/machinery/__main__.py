"""``python -m machinery``: the same as the ``machinery`` command."""

from __future__ import annotations

from machinery.cli import main

raise SystemExit(main())
