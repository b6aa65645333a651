"""Security: signed chunks, a tamper-proof context, safe ids, and no secrets in output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import pipes_bus
from pipes_bus import ConfigurationError
from pipes_bus._redact import redact
from pipes_bus._wire.bootstrap import KEY_ENV, decode_params
from pipes_bus._wire.chunk import build_chunk
from pipes_bus._worker.loaders import load_context
from pipes_bus.log import ChunkWriter
from pipes_bus.messages import Custom, Opened, WriterInfo
from pipes_bus.orchestrator import Session
from tests.helpers import cli_command


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    """A signing session whose environment is this process's."""
    session = Session(str(tmp_path / "bus"), sign=True)
    for name, value in session.env.items():
        monkeypatch.setenv(name, value)
    return session


class TestSignedChunks:
    def test_the_key_reaches_the_worker_only_through_its_environment(self, signed: Session) -> None:
        """The session key is in the worker env and nowhere on the bus."""
        assert signed.key is not None
        assert signed.env[KEY_ENV] == signed.key.hex()
        with pipes_bus.open_worker() as worker:
            worker.report_custom_message("hello")
        result = signed.wait()
        assert result.ok
        root = Path(signed.bus)
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert signed.key.hex().encode() not in data and signed.key not in data

    def test_a_forged_stream_is_rejected_and_reported(self, signed: Session) -> None:
        """A stream written without the key is never delivered; it is reported as unauthenticated."""
        with pipes_bus.open_worker() as worker:
            worker.report_custom_message("real")
        forger = ChunkWriter(signed.transport, signed.id, "w-evil")
        forger.write(Opened(info=WriterInfo(id="w-evil")))
        forger.write(Custom(payload="forged"))
        forger.close()
        result = signed.wait(done=lambda: True, grace=0)
        assert [e.message.payload for e in result.custom_messages] == ["real"]  # type: ignore[union-attr]
        assert {f.reason for f in result.faults} == {"unauthenticated"}
        assert all("w-evil" in f.key for f in result.faults)
        assert result.exit_status() == 5

    def test_an_altered_chunk_is_rejected_and_the_rest_delivered(self, signed: Session) -> None:
        """A chunk re-signed with the wrong key in place of a real one is refused; later chunks arrive."""
        with pipes_bus.open_worker() as worker:
            worker.report_custom_message(0)
            worker.flush()
            first_chunk = Path(signed.bus, signed.id, "streams", worker.writer_id, f"{1:020d}")
            assert first_chunk.exists()
            forged = build_chunk(
                writer=worker.writer_id,
                chunk=2,
                first=2,
                count=1,
                body=b'{"kind":"custom","payload":"evil"}\n',
                key=b"not the session key",
            )
            signed.transport.put_if_absent(
                f"{signed.id}/streams/{worker.writer_id}/{2:020d}", forged
            )
            worker.report_custom_message(1)
        result = signed.wait()
        assert [e.message.payload for e in result.custom_messages] == [0, 1]  # type: ignore[union-attr]
        assert [f.reason for f in result.faults] == ["unauthenticated"]
        assert result.incomplete == []


class TestContextObject:
    def test_a_swapped_context_object_is_refused(self, tmp_path: Path) -> None:
        """A context object replaced on the bus fails the worker's digest check."""
        session = Session(str(tmp_path / "bus"), context={"extras": {"x": 1}}, injector="object")
        key = session.injection.source["key"]
        session.transport.delete(key)
        session.transport.put_if_absent(key, b'{"extras": {"x": 2}}')
        env = dict(session.env)
        with pytest.raises(ConfigurationError, match="SHA-256 differs"):
            load_context(decode_params(env), session.transport, env, [])


class TestIds:
    @pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "a b", "x" * 200, "a\\b"])
    def test_unsafe_session_ids_are_refused(self, tmp_path: Path, bad: str) -> None:
        """Session ids that could escape their prefix are refused with a clear error."""
        with pytest.raises(ConfigurationError, match="not a valid id"):
            Session(str(tmp_path / "bus"), session_id=bad)

    def test_labels_are_sanitized_into_writer_ids(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A hostile label cannot put a writer's stream outside its session."""
        session = Session(str(tmp_path / "bus"))
        for name, value in session.env.items():
            monkeypatch.setenv(name, value)
        with pipes_bus.open_worker(label="../../etc/passwd") as worker:
            pass
        assert "/" not in worker.writer_id and ".." not in worker.writer_id
        streams = Path(session.bus, session.id, "streams")
        assert [p.name for p in streams.iterdir()] == [worker.writer_id]
        assert session.wait().writers[worker.writer_id].label == "../../etc/passwd"


class TestRedaction:
    def test_credentials_are_scrubbed_from_text(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Account keys, SAS and presigned signatures, and secret env values become ***."""
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
        text = redact(
            "AccountName=dev;AccountKey=Eby8vdM02x==;Blob=x "
            "https://a/c?sv=1&sig=abc%2F&se=2 https://s3/x?X-Amz-Signature=deadbeef "
            "aws_secret_access_key='zzz' failed with wJalrXUtnFEMI-secret"
        )
        assert text == (
            "AccountName=dev;AccountKey=***;Blob=x "
            "https://a/c?sv=1&sig=***&se=2 https://s3/x?X-Amz-Signature=*** "
            "aws_secret_access_key='***' failed with ***"
        )

    @pytest.mark.parametrize(
        ("raw", "clean"),
        [
            ("s3://AKIA:wJalr/secret@bucket/p", "s3://AKIA:***@bucket/p"),
            ("https://user:hunter2@proxy:8080/x", "https://user:***@proxy:8080/x"),
            ("{'passphrase': 'open-sesame'}", "{'passphrase': '***'}"),
            ("apikey=abc123 api_key: 'def'", "apikey=*** api_key: '***'"),
            (
                "{'headers': {'Authorization': 'Bearer xyz'}}",
                "{'headers': {'Authorization': '***'}}",
            ),
            (
                "abfs://container@account.dfs.core.windows.net/x",
                "abfs://container@account.dfs.core.windows.net/x",
            ),
        ],
        ids=["url-password", "http-userinfo", "passphrase", "apikey", "headers", "no-password"],
    )
    def test_wider_credentials_are_scrubbed(self, raw: str, clean: str) -> None:
        """URL passwords, passphrases, API keys and Authorization headers become ***."""
        assert redact(raw) == clean

    def test_a_password_in_a_bus_url_is_not_printed(self, tmp_path: Path) -> None:
        """An error about a bus URL with userinfo names the URL without its password."""
        out = subprocess.run(
            [
                *cli_command(),
                "run",
                "--bus",
                "nosuch://me:topsecret@h/b",
                "--",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2
        assert "topsecret" not in out.stderr + out.stdout
        assert "nosuch://me:***@h/b" in out.stderr

    def test_store_errors_carry_no_secrets(self) -> None:
        """A lower-layer error quoting a connection string is translated without the key."""
        from pipes_bus._errors import translate_store_error

        raw = OSError("cannot connect with DefaultEndpointsProtocol=http;AccountKey=s3cr3tKEY==;")
        error = translate_store_error(raw, url="az://c/bus", key="k", op="read")
        assert "s3cr3tKEY" not in str(error)
        assert "AccountKey=***" in str(error)
