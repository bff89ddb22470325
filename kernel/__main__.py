"""``python -m kernel``: the ``kernel`` command."""

from .cli import main

raise SystemExit(main())
