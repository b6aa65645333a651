"""A pipes_bus worker written from docs/protocol.md alone: Python's standard library only.

It does not import pipes_bus. It reads the bootstrap (a bus given as a path or a file://
URL), loads an inline context, names its writer from $PIPES_BUS_LABEL by the protocol's
sanitising rule, and writes one stream (opened, a log, three custom messages, a
materialization, closed) as two JSON Lines chunks on a directory bus, published atomically
(temp file, link into place).
"""

import base64
import json
import os
import re
import socket
import sys
import tempfile
import time
import zlib


def decode(text):
    return json.loads(zlib.decompress(base64.urlsafe_b64decode(text)))


def compact(value):
    return json.dumps(value, separators=(",", ":"))


def build_chunk(writer, number, first, messages, final):
    body = "".join(compact(m) + "\n" for m in messages).encode()
    header = {
        "format": "pipes-bus-chunk",
        "protocol": "1.0",
        "writer": writer,
        "chunk": number,
        "first": first,
        "count": len(messages),
        "encoding": "jsonl",
        "size": len(body),
        "crc32": 0,
        "final": final,
    }
    # The checksum covers the header line (with "crc32":0) + "\n" + body.
    crc = zlib.crc32(compact(header).encode() + b"\n" + body)
    header["crc32"] = crc
    return compact(header).encode() + b"\n" + body


def publish(root, key, data):
    """Put-if-absent on a directory: write a temp file, then link it into place."""
    path = os.path.join(root, *key.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # raises FileExistsError if the key is taken
    finally:
        os.unlink(tmp)


def sanitized(label):
    """A label as a writer id's last part, by the protocol's rule."""
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", label)).strip(".-_")
    return text[:48] or "x"


def main():
    params = decode(os.environ["PIPES_BUS_SESSION"])
    bus = params["bus"]
    root = bus[len("file://") :] if bus.startswith("file://") else bus
    source = params.get("context", {})
    context = decode(os.environ[source["env"]]) if source.get("via") == "env" else {}
    label = os.environ.get("PIPES_BUS_LABEL")
    writer = f"w-{int(time.time() * 1000):011x}-{os.getpid()}-stdlib"
    if label:
        writer += "-" + sanitized(label)
    stream = f"{params['session']}/streams/{writer}"
    now = time.time
    first = [
        {
            "kind": "opened",
            "time": now(),
            "info": {
                "id": writer,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "label": label,
                "language": "python-stdlib",
            },
        },
        {"kind": "log", "time": now(), "message": f"run {context.get('run_id')}", "level": "info"},
    ] + [{"kind": "custom", "time": now(), "payload": {"n": n}} for n in range(3)]
    publish(root, f"{stream}/{0:020d}", build_chunk(writer, 0, 0, first, final=False))
    second = [
        {
            "kind": "materialization",
            "time": now(),
            "asset_key": context.get("asset_keys", ["a"])[0],
            "metadata": {"rows": {"type": "int", "value": 3}},
        },
        {"kind": "closed", "time": now(), "count": len(first) + 1},
    ]
    publish(root, f"{stream}/{1:020d}", build_chunk(writer, 1, len(first), second, final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
