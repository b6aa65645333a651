"""The launcher registry: names, options, plugins and install hints."""

from __future__ import annotations

import pytest

from pipes_bus import ConfigurationError
from pipes_bus.launchers import (
    Job,
    JobStatus,
    Launcher,
    LaunchHandle,
    LaunchSpec,
    launcher_names,
    make_launcher,
    register_launcher,
)
from pipes_bus.launchers._registry import _load


class Nowhere(Launcher):
    """A launcher for the registry tests: it never launches anything."""

    name = "nowhere"

    def __init__(self, *, region: str = "here", size: int = 1) -> None:
        self.region, self.size = region, size

    def launch(self, spec: LaunchSpec) -> Job:
        raise NotImplementedError


def test_the_built_in_launchers_are_known() -> None:
    """subprocess, docker, slurm, ray and dask are all listed."""
    assert {"subprocess", "docker", "slurm", "ray", "dask"} <= set(launcher_names())


def test_an_unknown_launcher_names_the_known_ones() -> None:
    """A typo is a ConfigurationError that lists what exists."""
    with pytest.raises(ConfigurationError, match=r"No launcher named 'dokcer'.*docker"):
        make_launcher("dokcer")


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nowhere registered for one test only."""
    from pipes_bus.launchers import _registry

    monkeypatch.setattr(_registry, "_registered", dict(_registry._registered))
    register_launcher("nowhere", Nowhere)


@pytest.mark.usefixtures("nowhere")
def test_a_registered_launcher_gets_its_options() -> None:
    """register_launcher makes a name; keyword options reach __init__."""
    launcher = make_launcher("nowhere", region="eu", size=3)
    assert isinstance(launcher, Nowhere) and (launcher.region, launcher.size) == ("eu", 3)
    assert "nowhere" in launcher_names()


@pytest.mark.usefixtures("nowhere")
def test_an_unknown_option_lists_the_accepted_ones() -> None:
    """-L regoin=eu is refused with the launcher's options spelled out."""
    with pytest.raises(ConfigurationError, match=r"no option 'regoin'; its options: region, size"):
        make_launcher("nowhere", regoin="eu")


def test_a_missing_client_library_says_what_to_install() -> None:
    """A built-in launcher whose library is absent says which extra to install."""
    with pytest.raises(ConfigurationError, match=r'pip install "pipes-bus\[docker\]"'):
        _load("docker", "no_such_module_here:DockerLauncher")


def test_a_class_that_is_not_a_launcher_is_refused() -> None:
    """A plugin that points at something else is a one-line error."""
    with pytest.raises(ConfigurationError, match="is not a pipes_bus Launcher subclass"):
        _load("odd", "pipes_bus.launchers._base:JobStatus")


def test_a_finished_status_is_one_of_the_final_states() -> None:
    """pending and running are not finished; succeeded, failed, cancelled, unknown are."""
    assert [JobStatus(s).finished for s in ("pending", "running")] == [False, False]
    assert all(JobStatus(s).finished for s in ("succeeded", "failed", "cancelled", "unknown"))


def test_a_handle_round_trips_through_json() -> None:
    """The handle recorded in launch.json decodes to the same handle."""
    import msgspec

    handle = LaunchHandle(launcher="docker", job_id="abc", where="unix:///s", extra={"k": "v"})
    assert msgspec.json.decode(msgspec.json.encode(handle), type=LaunchHandle) == handle
