"""Records real infinity-emb answers, success and error, into tests/fixtures/infinity/ for the unit
tests (tests/infinity_fixtures.rs).

Run with the infinity CPU server up (launch/infinity-cpu/up.sh, port 8006); the overloaded answer
needs a second one with a tiny queue, which this script starts and stops itself:
    python3 launch/infinity-cpu/record_fixtures.py
Each fixture is one JSON file: {"server", "method", "path", "request", "status", "body"}, where
"body" is the server's answer exactly as text and "request" is what was sent, with every image data
URL shortened to its first 40 characters. Standard library only.
"""

import base64
import concurrent.futures
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "infinity"
SERVER = "infinity-emb 0.0.78"


def png(width, height, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


IMAGE = "data:image/png;base64," + base64.b64encode(png(64, 48, (200, 30, 30))).decode()
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"hello world").decode()


def send(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def shorten(v):
    if isinstance(v, str) and v.startswith("data:"):
        return v[:40] + "..."
    if isinstance(v, dict):
        return {k: shorten(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shorten(x) for x in v]
    return v


def embed(inputs, modality, model="embedder"):
    return {"model": model, "input": inputs, "modality": modality, "encoding_format": "float"}


CASES = [
    ("models", "GET", "/models", None),
    ("embed_text", "POST", "/embeddings", embed(["a red square", "two dogs"], "text")),
    ("embed_image", "POST", "/embeddings", embed([IMAGE], "image")),
    ("embed_wrong_model_answered_anyway", "POST", "/embeddings", embed(["a"], "text", "nope")),
    ("err_not_an_image", "POST", "/embeddings", embed([NOT_AN_IMAGE], "image")),
    ("err_33_images", "POST", "/embeddings", embed([IMAGE] * 33, "image")),
    ("err_file_url", "POST", "/embeddings", embed(["file:///etc/passwd"], "image")),
    ("err_empty_input", "POST", "/embeddings", embed([], "text")),
]


def write(name, method, path, body, status, text):
    record = {"server": SERVER, "method": method, "path": path, "request": shorten(body),
              "status": status, "body": text}
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{name:40} {status}  {text[:90]!r}")


def overloaded():
    """A second server whose queue holds one item: 32-image requests sent together overflow it."""
    env = dict(os.environ, IMAGESCOPE_INFINITY_PORT="8007", INFINITY_QUEUE_SIZE="1")
    subprocess.run([str(ROOT / "launch/infinity-cpu/up.sh")], env=env, check=True)
    try:
        body = embed([IMAGE] * 32, "image")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: send(8007, "POST", "/embeddings", body), range(8)))
        for status, text in answers:
            if status == 429:
                write("err_overloaded", "POST", "/embeddings", body, status, text)
                return
        sys.exit(f"no 429 among {[s for s, _ in answers]}")
    finally:
        subprocess.run([str(ROOT / "launch/down.sh"), "infinity-embedder-8007"], check=False)


def main():
    status, _ = send(8006, "GET", "/health")
    if status != 200:
        sys.exit("infinity does not answer on 127.0.0.1:8006; start it with launch/infinity-cpu/up.sh")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, method, path, body in CASES:
        write(name, method, path, body, *send(8006, method, path, body))
    overloaded()


if __name__ == "__main__":
    main()
