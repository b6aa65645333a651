"""The public faces: one per audience, each name in exactly one, each reporting its face."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FACES = [
    "pipes_bus",
    "pipes_bus.messages",
    "pipes_bus.log",
    "pipes_bus.orchestrator",
    "pipes_bus.transports",
    "pipes_bus.launchers",
]


@pytest.mark.parametrize("face", FACES)
class TestFaces:
    def test_all_is_sorted_and_every_name_is_defined(self, face: str) -> None:
        """__all__ is sorted as ruff sorts it (constants, classes, then the rest) and each
        name resolves."""
        module = importlib.import_module(face)
        assert module.__all__ == sorted(module.__all__, key=_isort_key)
        for name in module.__all__:
            assert getattr(module, name) is not None, name

    def test_public_classes_and_functions_report_their_face(self, face: str) -> None:
        """Tracebacks, reprs and `closed` messages name the face, not a private module."""
        module = importlib.import_module(face)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) or (callable(value) and hasattr(value, "__module__")):
                assert value.__module__ == face, (name, value.__module__)


def _isort_key(name: str) -> tuple[int, str]:
    if len(name) > 1 and name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def test_no_name_is_in_two_faces() -> None:
    """Each public name has one home: no face re-exports another's."""
    seen: dict[str, str] = {}
    for face in FACES:
        for name in importlib.import_module(face).__all__:
            if name.startswith("__"):
                continue
            assert name not in seen, f"{name} is in {seen[name]} and {face}"
            seen[name] = face


def test_there_is_no_import_cycle_between_the_private_packages() -> None:
    """Each private package imports only the layers below it: wire < log < worker, and
    wire < log < orchestrator; the worker and orchestrator never import each other."""
    code = (
        "import sys, importlib\n"
        "importlib.import_module(sys.argv[1])\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('pipes_bus.')))\n"
    )
    rules = {
        "pipes_bus._wire.chunk": ("pipes_bus._log", "pipes_bus._worker", "pipes_bus._orchestrator"),
        "pipes_bus._log.reader": ("pipes_bus._worker", "pipes_bus._orchestrator"),
        "pipes_bus._log.writer": ("pipes_bus._worker", "pipes_bus._orchestrator"),
        "pipes_bus._worker.api": ("pipes_bus._orchestrator", "pipes_bus._log.reader"),
        "pipes_bus._orchestrator.session": ("pipes_bus._worker", "pipes_bus.integrations"),
    }
    for module, forbidden in rules.items():
        out = subprocess.run(
            [sys.executable, "-c", code, module], capture_output=True, text=True, check=True
        ).stdout.split()
        assert not [m for m in out if m.startswith(forbidden)], (module, out)
