"""``python -m pipes_bus`` is the ``pipes-bus`` command."""

from pipes_bus.cli import main

raise SystemExit(main())
