"""Test helpers that ship with pipes_bus: the transport conformance suite and fault injection.

- :mod:`pipes_bus.testing.conformance`: the contract every transport passes (it needs pytest,
  so it is imported from there, not here);
- :class:`FaultyTransport` (with a :class:`FaultPlan`): faults injected around any transport,
  in process;
- :class:`FaultProxy` (with :class:`ProxyFaults`): a loopback HTTP proxy in front of a real
  store server that records every request, answers some itself, and injects faults on the
  wire;
- :mod:`pipes_bus.testing.servers`: local store servers (moto, fake-gcs-server, Azurite).

The worker side never imports this package.
"""

import sys

from pipes_bus.testing.fault_proxy import FaultProxy, ProxyFaults, Recorded, Reply
from pipes_bus.testing.faults import FaultPlan, FaultyTransport

if "pytest" in sys.modules:  # under pytest: show the values in the suite's failed asserts
    sys.modules["pytest"].register_assert_rewrite("pipes_bus.testing.conformance")

__all__ = ["FaultPlan", "FaultProxy", "FaultyTransport", "ProxyFaults", "Recorded", "Reply"]
