"""``python -m pipes_bus`` is the ``pipes-bus`` command."""

from .cli import main

raise SystemExit(main())
