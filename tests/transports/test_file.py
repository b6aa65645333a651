"""The directory transport against hostile objects: FIFOs, devices, folders, symbolic links."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pipes_bus import PipesBusError, UnreadableObjectError
from pipes_bus._wire.chunk import build_chunk
from pipes_bus._wire.keys import chunk_key
from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Custom, Log
from pipes_bus.orchestrator import Event, StreamFault
from pipes_bus.transports._file import FileTransport

SESSION = "s"


def put_log(bus: FileTransport, writer: str, n: int = 0, first: int = 0) -> None:
    """A one-message chunk ``n`` in ``writer``'s stream."""
    body = msgspec.json.encode(Log(message=f"{writer}-{n}")) + b"\n"
    data = build_chunk(writer=writer, chunk=n, first=first, count=1, body=body)
    assert bus.put_if_absent(chunk_key(SESSION, writer, n), data)


def chunk_path(root: Path, writer: str, n: int) -> Path:
    """Where chunk ``n`` of ``writer`` lives on disk."""
    return root / SESSION / "streams" / writer / f"{n:020d}"


def poll_with_deadline(reader: SessionReader, seconds: float = 10.0) -> list[Any]:
    """reader.poll() on a thread; fail (instead of hanging the suite) if it does not return."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(reader.poll())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"poll() did not return within {seconds} s"
    if error:
        raise error[0]
    return result


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty bus directory."""
    path = tmp_path / "bus"
    path.mkdir()
    return path


def planted(kind: str, path: Path, tmp_path: Path) -> None:
    """Put a hostile object of ``kind`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "link-to-file":
        # A valid chunk 0 of writer "w", outside the bus: followed, it would be delivered.
        body = msgspec.json.encode(Log(message="from outside the bus")) + b"\n"
        target = tmp_path / "outside"
        target.write_bytes(build_chunk(writer="w", chunk=0, first=0, count=1, body=body))
        path.symlink_to(target)


class TestHostileObjects:
    """Planted objects are faults naming their key; nothing hangs or reads without bound."""

    @pytest.mark.parametrize("kind", ["fifo", "zero", "folder", "link-to-file"])
    def test_a_planted_object_at_a_chunk_key_is_a_foreign_fault(
        self, root: Path, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO, a link to /dev/zero, a folder or a link out of the bus at chunk 0 is one
        ``foreign`` fault at that key, at once; the stream goes on, and so does every other."""
        bus = FileTransport(str(root))
        planted(kind, chunk_path(root, "w", 0), tmp_path)
        put_log(bus, "w", 1, first=0)
        put_log(bus, "other")
        items = poll_with_deadline(SessionReader(bus, SESSION, discover_interval=0))
        found = [(i.key, i.reason) for i in items if isinstance(i, StreamFault)]
        assert found == [(chunk_key(SESSION, "w", 0), "foreign")]
        assert sorted((i.writer, i.seq) for i in items if isinstance(i, Event)) == [
            ("other", 0),
            ("w", 0),
        ]

    @pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
    def test_get_refuses_anything_but_a_regular_file(
        self, root: Path, tmp_path: Path, kind: str
    ) -> None:
        """get() raises UnreadableObjectError(reason="foreign") naming the key."""
        bus = FileTransport(str(root))
        planted(kind, root / "k", tmp_path)
        with pytest.raises(UnreadableObjectError) as info:
            bus.get("k", max_size=100)
        assert info.value.reason == "foreign"
        assert info.value.key == "k"
        assert str(root / "k") in str(info.value)

    def test_a_file_growing_past_its_limit_is_read_only_to_the_limit(self, root: Path) -> None:
        """The limit is enforced on what is read, whatever size the file reported."""
        bus = FileTransport(str(root))
        (root / "k").write_bytes(b"x" * 1000)
        with pytest.raises(UnreadableObjectError) as info:
            bus.get("k", max_size=999)
        assert info.value.reason == "too_large"
        assert bus.get("k", max_size=1000) == b"x" * 1000

    def test_a_session_folder_that_is_a_link_is_not_followed(
        self, root: Path, tmp_path: Path
    ) -> None:
        """{bus}/{session} as a link to a folder outside the bus reads nothing from there:
        a fault, and no event."""
        outside = tmp_path / "outside-bus"
        elsewhere = FileTransport(str(outside))
        put_log(elsewhere, "w")
        (root / SESSION).symlink_to(outside / SESSION)
        bus = FileTransport(str(root))
        items = poll_with_deadline(SessionReader(bus, SESSION, discover_interval=0))
        assert [type(i).__name__ for i in items] == ["StreamFault"]
        assert items[0].reason == "foreign"
        assert not [i for i in items if isinstance(i, Event)]

    def test_a_writer_steps_over_a_planted_fifo(self, root: Path) -> None:
        """A FIFO where the writer's next chunk goes: the writer writes the next key, no hang."""
        bus = FileTransport(str(root))
        planted("fifo", chunk_path(root, "w", 0), root)
        writer = ChunkWriter(bus, SESSION, "w", WriterSettings(linger=3600))
        writer.write(Custom(payload=1))
        done = threading.Event()
        threading.Thread(target=lambda: (writer.close(), done.set()), daemon=True).start()
        assert done.wait(10), "close() hung on a FIFO"
        items = poll_with_deadline(SessionReader(bus, SESSION, discover_interval=0))
        assert [(i.seq, i.chunk) for i in items if isinstance(i, Event)] == [(0, 1), (1, 1)]

    def test_a_file_the_follower_may_not_read_is_an_unreadable_fault(self) -> None:
        """A chunk another user wrote (mode 0600) is an ``unreadable`` fault for a follower
        running as someone else; the reader carries on."""
        base = Path(tempfile.mkdtemp(prefix="pipes-bus-perm-", dir="/tmp"))
        try:
            root = base / "bus"
            bus = FileTransport(str(root))
            put_log(bus, "w")
            put_log(bus, "other")
            for folder in (base, root, root / SESSION, root / SESSION / "streams"):
                os.chmod(folder, 0o755)
            for writer in ("w", "other"):
                os.chmod(root / SESSION / "streams" / writer, 0o755)
            os.chmod(chunk_path(root, "other", 0), 0o644)
            # As root, the follower drops to "nobody" once running; as anyone else, the
            # chunk is made unreadable to its owner.
            drop = "import os; os.setegid(65534); os.seteuid(65534)\n" if os.geteuid() == 0 else ""
            if not drop:
                os.chmod(chunk_path(root, "w", 0), 0o000)
            script = (
                "from pipes_bus.log import SessionReader\nfrom pipes_bus.orchestrator import StreamFault, Event\n"
                "from pipes_bus.transports._file import FileTransport\n"
                + drop
                + f"items = SessionReader(FileTransport({str(root)!r}), 's', "
                "discover_interval=0).poll()\n"
                "print(sorted((i.key, i.reason) for i in items if isinstance(i, StreamFault)))\n"
                "print(sorted(i.writer for i in items if isinstance(i, Event)))\n"
            )
            out = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.splitlines()
            assert out == [f"[({chunk_key(SESSION, 'w', 0)!r}, 'unreadable')]", "['other']"]
        finally:
            shutil.rmtree(base, ignore_errors=True)


class TestWalk:
    """A walk for clean-up follows nothing out of the bus and ends on any tree."""

    def test_links_fifos_and_devices_are_objects_and_deleting_them_unlinks_only(
        self, root: Path, tmp_path: Path
    ) -> None:
        """A planted link (to a file or a folder outside), a FIFO: each is walked as an
        object of size 0 and deleted as a link; what it points at is untouched."""
        bus = FileTransport(str(root))
        assert bus.put_if_absent("s/streams/w/0", b"12345")
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "precious").write_bytes(b"keep me")
        (root / "s" / "to-folder").symlink_to(outside)
        (root / "s" / "to-file").symlink_to(outside / "precious")
        os.mkfifo(root / "s" / "fifo")
        found = sorted(bus.walk("s"))
        assert found == [("s/fifo", 0), ("s/streams/w/0", 5), ("s/to-file", 0), ("s/to-folder", 0)]
        for key, _ in found:
            bus.delete(key)
        assert not (root / "s").exists()
        assert (outside / "precious").read_bytes() == b"keep me"

    def test_a_tree_deeper_than_the_walk_enters_ends_with_the_deep_folder_named(
        self, root: Path
    ) -> None:
        """A hostile tree 200 folders deep: the walk stops entering at its depth limit and
        names the folder there (its delete then fails, naming it); no recursion error."""
        bus = FileTransport(str(root))
        deep = root / "s"
        for n in range(200):
            deep = deep / f"d{n}"
        deep.mkdir(parents=True)
        (deep / "x").write_bytes(b"1")
        found = list(bus.walk("s"))
        assert len(found) == 1
        key, size = found[0]
        assert key == "s/" + "/".join(f"d{n}" for n in range(32)) and size == 0
        with pytest.raises(PipesBusError) as info:
            bus.delete(key)
        assert key in str(info.value) or str(root) in str(info.value)
