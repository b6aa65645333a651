"""Integrations with other systems. Each module imports the system it integrates with.

The core (``pipes_bus``, ``pipes_bus.orchestrator``) never imports anything from here.

- :mod:`pipes_bus.integrations.dagster`: pipes_bus as the transport of Dagster Pipes
  (a ``PipesMessageReader``, a ``PipesContextInjector``, and the worker's message writer
  and context loader for ``dagster_pipes.open_dagster_pipes()``).
"""
