"""The registry: every scenario of the suite, in the order a full run takes them.

One row per scenario: its name (``--only``, ``results/<name>.json``, the table fragments
``docs/benchmarks/<name>*.txt``), the generator function that measures it (its docstring
is the title and the method), and how its rows are shown. Goals live beside each
function, as ``Target``s on the rows it yields. Order matters: in-process measurements
first, idle sessions started after the bursts, and the long ones last.
"""

from __future__ import annotations

from _core import Scenario

from scenarios import (
    control,
    delivery,
    faults,
    idle,
    latency,
    launchers,
    scale,
    sessions,
    startup,
    throughput,
    wake,
)

DAGSTER = ("dagster", "dagster_pipes", "dagster_aws")

SCENARIOS = [
    # name               measures                     tables                      extras
    Scenario("import-time", startup.import_time, startup.tables, compare=startup.compare),
    Scenario("log", throughput.log, throughput.log_tables, throughput.log_plot),
    Scenario(
        "throughput",
        throughput.throughput,
        throughput.throughput_tables,
        throughput.throughput_plot,
    ),
    Scenario(
        "burst", delivery.burst, delivery.burst_tables, delivery.burst_plot, delivery.burst_compare
    ),
    Scenario("memory", delivery.memory, delivery.memory_tables, delivery.memory_plot),
    Scenario("fanin", delivery.fanin, delivery.fanin_tables, delivery.fanin_plot),
    Scenario("scale", scale.scale, scale.tables),
    Scenario("idle", idle.idle, idle.tables, idle.plot, idle.compare),
    Scenario("cancel", control.cancel, control.tables),
    Scenario("control-cost", control.cost, control.cost_tables),
    Scenario("launchers", launchers.launchers, launchers.tables),
    Scenario("sessions", sessions.sessions, sessions.tables),
    Scenario("wake", wake.wake, wake.tables),
    Scenario("trickle", latency.trickle, latency.trickle_tables, latency.trickle_plot),
    Scenario(
        "reference-trickle",
        latency.reference_trickle,
        latency.reference_tables,
        latency.reference_plot,
        latency.reference_compare,
        needs=DAGSTER,
    ),
    Scenario(
        "unencodable",
        delivery.unencodable,
        delivery.unencodable_tables,
        compare=delivery.unencodable_compare,
    ),
    Scenario("faulty", faults.faulty, faults.tables),
    Scenario("faults", faults.faults, faults.tables),
    Scenario("soak", faults.soak, faults.tables, faults.soak_plot, faults.compare),
]
