"""Test helpers that ship with pipes_bus: the transport conformance suite and fault injection.

Importing this package needs pytest (for the suite); the worker side never imports it.
"""

from pipes_bus.testing.faults import FaultPlan, FaultyTransport

__all__ = ["FaultPlan", "FaultyTransport"]
