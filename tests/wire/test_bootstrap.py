"""Context injection: every injector pairs with a loader, and credentials never travel."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import pytest

from pipes_bus import ConfigurationError, Context, PartitionKeyRange, PartitionTimeWindow
from pipes_bus._wire.bootstrap import CONTEXT_ENV, SESSION_ENV, decode_params
from pipes_bus._worker.loaders import load_context
from pipes_bus.orchestrator import (
    ArgvContextInjector,
    AutoContextInjector,
    EnvContextInjector,
    ObjectContextInjector,
    Session,
)

FULL = Context(
    run_id="run-1",
    job_name="nightly",
    asset_keys=["a/b", "c"],
    partition_key="2026-11-23",
    partition_key_range=PartitionKeyRange("2026-11-01", "2026-11-23"),
    partition_time_window=PartitionTimeWindow("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"),
    retry_number=2,
    code_versions={"c": "v7"},
    provenance={"c": {"code_version": "v6", "input_data_versions": {"a/b": "x"}}},
    extras={"threshold": 0.5, "tags": ["x", "y"]},
)


def _load(session: Session) -> Context:
    env = dict(session.env)
    argv = ["worker.py", *session.args]
    return load_context(decode_params(env), session.transport, env, argv)


class TestInjectors:
    @pytest.mark.parametrize(
        "injector",
        [
            EnvContextInjector(),
            ObjectContextInjector(),
            ArgvContextInjector(),
            AutoContextInjector(),
        ],
    )
    def test_every_field_round_trips(self, tmp_path: Path, injector: object) -> None:
        """The worker loads exactly the context the orchestrator injected, whatever the injector."""
        session = Session(str(tmp_path / "bus"), context=FULL, injector=injector)  # type: ignore[arg-type]
        assert _load(session) == FULL

    def test_auto_inlines_small_and_stores_large_contexts(self, tmp_path: Path) -> None:
        """auto puts a small context in the environment and a large one in a session object."""
        small = Session(str(tmp_path / "bus"), context={"extras": {"a": 1}})
        assert small.injection.source["via"] == "env" and CONTEXT_ENV in small.env
        import secrets

        big_extras = {f"k{i}": secrets.token_hex(32) for i in range(2000)}
        large = Session(str(tmp_path / "bus"), context={"extras": big_extras})
        assert large.injection.source["via"] == "object"
        assert large.injection.source["key"] == f"{large.id}/context.json"
        assert CONTEXT_ENV not in large.env
        assert sum(len(v) for v in large.env.values()) < 2000
        assert _load(large).extras == big_extras

    def test_env_injector_refuses_contexts_too_big_for_an_environment(self, tmp_path: Path) -> None:
        """The env injector names the limit and the alternative instead of breaking exec()."""
        import secrets

        noise = {f"k{i}": secrets.token_hex(64) for i in range(2000)}
        with pytest.raises(ConfigurationError, match="ObjectContextInjector"):
            Session(str(tmp_path / "bus"), context={"extras": noise}, injector="env").open()

    def test_a_missing_context_variable_is_named(self, tmp_path: Path) -> None:
        """If the context variable was stripped from the environment, the error names it."""
        session = Session(str(tmp_path / "bus"), context=FULL, injector="env")
        env = {SESSION_ENV: session.env[SESSION_ENV]}
        with pytest.raises(ConfigurationError, match=CONTEXT_ENV):
            load_context(decode_params(env), session.transport, env, [])

    def test_run_id_defaults_to_the_session_id(self, tmp_path: Path) -> None:
        """A context without run_id gets the session id as its run id."""
        session = Session(str(tmp_path / "bus"))
        assert _load(session).run_id == session.id


class TestBootstrap:
    def test_credentials_are_never_injected(self, tmp_path: Path) -> None:
        """Secret-looking storage options stay out of the worker's environment; others go in."""
        session = Session(
            str(tmp_path / "bus"),
            storage_options={
                "key": "AKIA-SECRET",
                "secret": "s3cr3t",
                "token": "anon",
                "client_kwargs": {"region_name": "eu", "aws_secret_access_key": "zzz"},
                "account_key": "kkk",
                "auto_mkdir": True,
            },
        )
        raw = json.loads(zlib.decompress(base64.urlsafe_b64decode(session.env[SESSION_ENV])))
        assert raw["storage_options"] == {
            "token": "anon",
            "client_kwargs": {"region_name": "eu"},
            "auto_mkdir": True,
        }
        everything = " ".join(session.env.values()) + json.dumps(raw)
        for secret in ("AKIA-SECRET", "s3cr3t", "zzz", "kkk"):
            assert secret not in everything

    def test_only_options_known_to_be_safe_reach_the_worker(self, tmp_path: Path) -> None:
        """An allow-list decides: headers (with an Authorization), a passphrase, an apikey
        and any option nobody vetted stay with the orchestrator, and are named."""
        session = Session(
            str(tmp_path / "bus"),
            storage_options={
                "headers": {"Authorization": "Bearer tok-123"},
                "passphrase": "pass-456",
                "apikey": "key-789",
                "my_plugin_setting": "opaque-000",
                "endpoint_url": "http://127.0.0.1:9",
                "config_kwargs": {"signature_version": "s3v4", "proxies": {"h": "u:p@x"}},
            },
        )
        raw = json.loads(zlib.decompress(base64.urlsafe_b64decode(session.env[SESSION_ENV])))
        assert raw["storage_options"] == {
            "endpoint_url": "http://127.0.0.1:9",
            "config_kwargs": {"signature_version": "s3v4"},
        }
        assert session.withheld_options == [
            "headers",
            "passphrase",
            "apikey",
            "my_plugin_setting",
            "config_kwargs.proxies",
        ]
        everything = " ".join(session.env.values())
        for secret in ("tok-123", "pass-456", "key-789", "opaque-000", "u:p@x"):
            assert secret not in everything
        assert "not handed to the worker: headers, passphrase" in session.diagnose()

    def test_a_garbled_bootstrap_is_a_clear_error(self) -> None:
        """A PIPES_BUS_SESSION that is not ours fails with a ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match=SESSION_ENV):
            decode_params({SESSION_ENV: "not-base64!"})
