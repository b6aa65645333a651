"""The documented exit statuses, shared by the CLI, the session result and ``pipes-bus exec``
(stdlib only: the worker side's command imports it)."""

EXIT_USAGE = 2  # bad arguments or configuration
EXIT_WORKER_FAILED = 3  # a writer closed with an exception
EXIT_INCOMPLETE = 4  # a writer opened but never closed
EXIT_UNDELIVERABLE = 5  # some data on the bus could not be delivered
EXIT_BUS = 6  # the bus could not be reached, or read to the end
EXIT_CANCELLED = 7  # the session was cancelled
