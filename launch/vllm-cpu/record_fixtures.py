"""Records real vLLM answers, success and error, into tests/fixtures/vllm/ for the unit tests.

Run with the vLLM CPU stack up (launch/vllm-cpu/up.sh):
    python3 launch/vllm-cpu/record_fixtures.py            # every request fixture
    python3 launch/vllm-cpu/record_fixtures.py metrics    # only the /metrics pages (metrics_<role>.prom)
Each fixture is one JSON file: {"vllm_version", "role", "method", "path", "request", "status",
"body"}, where "body" is the server's answer exactly as text and "request" is what was sent, with
every image data URL shortened to its first 40 characters. Standard library only.
"""

import base64
import json
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "vllm"
PORT = {"captioner": 8001, "reasoner": 8002, "verifier": 8003, "evaluator": 8004, "embedder": 8005}


def png(width, height, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


IMAGE = "data:image/png;base64," + base64.b64encode(png(64, 48, (200, 30, 30))).decode()


def send(role, method, path, body=None, raw=None):
    url = f"http://127.0.0.1:{PORT[role]}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
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


def image_chat(model, text, images=1, **extra):
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": IMAGE}}] * images
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": 8, **extra}


def text_chat(model, text, **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}],
            "temperature": 0.0, "max_tokens": 16, **extra}


SCHEMA = {"type": "object", "properties": {"descriptions": {"type": "array", "items": {"type": "string", "maxLength": 60}, "minItems": 1, "maxItems": 2}},
          "required": ["descriptions"], "additionalProperties": False}
LONG = "a red bus parked next to a tall building with many windows " * 40

CASES = [
    # (name, role, method, path, body)
    ("models", "reasoner", "GET", "/v1/models", None),
    ("version", "reasoner", "GET", "/version", None),
    ("chat_basic", "reasoner", "POST", "/v1/chat/completions", text_chat("reasoner", "What is the capital of France?")),
    ("chat_logprobs", "reasoner", "POST", "/v1/chat/completions",
     text_chat("reasoner", "Answer yes or no: is the sky blue?", max_tokens=2, logprobs=True, top_logprobs=5)),
    ("chat_json_schema", "reasoner", "POST", "/v1/chat/completions",
     text_chat("reasoner", "Describe a dog on a sofa as JSON.", max_tokens=96,
               response_format={"type": "json_schema", "json_schema": {"name": "reasoning", "schema": SCHEMA}})),
    ("err_prompt_too_long", "reasoner", "POST", "/v1/chat/completions", text_chat("reasoner", LONG * 12)),
    ("err_max_tokens_too_large", "reasoner", "POST", "/v1/chat/completions", text_chat("reasoner", "hi", max_tokens=100000)),
    ("err_wrong_model", "reasoner", "POST", "/v1/chat/completions", text_chat("no-such-model", "hi")),
    ("err_image_on_text_model", "reasoner", "POST", "/v1/chat/completions", image_chat("reasoner", "What is this?")),
    ("err_malformed_json", "reasoner", "POST", "/v1/chat/completions", b'{"model": "reasoner", "messages": ['),
    ("captioner_chat_image", "captioner", "POST", "/v1/chat/completions", image_chat("captioner", "Describe the image.")),
    ("captioner_err_multimodal_too_long", "captioner", "POST", "/v1/chat/completions",
     image_chat("captioner", LONG * 12)),
    ("verifier_chat_image_logprobs", "verifier", "POST", "/v1/chat/completions",
     image_chat("verifier", "Is there a dog?", max_tokens=1, logprobs=True, top_logprobs=20)),
    # PaliGemma's 1,024-token window: text that fits alone but not with the image's 16 tokens, and
    # text that leaves no room for a single output token.
    ("verifier_err_multimodal_too_long", "verifier", "POST", "/v1/chat/completions",
     image_chat("verifier", "dog " * 1015, max_tokens=1)),
    ("verifier_err_prompt_fills_context", "verifier", "POST", "/v1/chat/completions",
     image_chat("verifier", "dog " * 1005, max_tokens=1)),
    ("verifier_err_two_images", "verifier", "POST", "/v1/chat/completions", image_chat("verifier", "Same?", images=2)),
    ("verifier_err_file_url", "verifier", "POST", "/v1/chat/completions",
     {"model": "verifier", "messages": [{"role": "user", "content": [
         {"type": "text", "text": "Is there a dog?"},
         {"type": "image_url", "image_url": {"url": "file:///tmp/a%20b%23c.png"}}]}], "max_tokens": 4}),
    ("verifier_err_bad_image", "verifier", "POST", "/v1/chat/completions",
     {"model": "verifier", "messages": [{"role": "user", "content": [
         {"type": "text", "text": "Is there a dog?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]}],
      "max_tokens": 4}),
    ("evaluator_chat_image", "evaluator", "POST", "/v1/chat/completions", image_chat("evaluator", "Does the image match? Answer yes or no.")),
    ("embedder_text", "embedder", "POST", "/v1/embeddings",
     {"model": "embedder", "messages": [{"role": "user", "content": [{"type": "text", "text": "a red bus"}]}], "encoding_format": "float"}),
    ("embedder_image", "embedder", "POST", "/v1/embeddings",
     {"model": "embedder", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}], "encoding_format": "float"}),
    ("embedder_text_truncated", "embedder", "POST", "/v1/embeddings",
     {"model": "embedder", "messages": [{"role": "user", "content": [{"type": "text", "text": LONG}]}], "encoding_format": "float", "truncate_prompt_tokens": -1}),
    ("embedder_err_too_long", "embedder", "POST", "/v1/embeddings",
     {"model": "embedder", "messages": [{"role": "user", "content": [{"type": "text", "text": LONG}]}], "encoding_format": "float"}),
    ("embedder_err_wrong_model", "embedder", "POST", "/v1/embeddings",
     {"model": "nope", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}),
    ("embedder_err_chat_on_pooling", "embedder", "POST", "/v1/chat/completions", text_chat("embedder", "hi")),
]


def metrics_pages():
    """Each server's /metrics page as it stands (run some traffic first, e.g. the demo run), into
    tests/fixtures/vllm/metrics_<role>.prom for the /metrics reader's tests."""
    for role, port in PORT.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        (OUT / f"metrics_{role}.prom").write_text(text)
        print(f"metrics_{role}.prom  {len(text.splitlines())} lines")


def main():
    only = set(sys.argv[1:])
    if only == {"metrics"}:
        metrics_pages()
        return
    status, version = send("reasoner", "GET", "/version")
    if status != 200:
        sys.exit("the vLLM CPU stack does not answer on 127.0.0.1:8002; start it with launch/vllm-cpu/up.sh")
    version = json.loads(version)["version"]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, role, method, path, body in CASES:
        if only and name not in only:
            continue
        raw = body if isinstance(body, bytes) else None
        status, text = send(role, method, path, None if raw else body, raw)
        record = {"vllm_version": version, "role": role, "method": method, "path": path,
                  "request": raw.decode() if raw else shorten(body), "status": status, "body": text}
        (OUT / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"{name:40} {status}  {text[:90]!r}")


if __name__ == "__main__":
    main()
