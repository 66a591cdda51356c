"""The Python side of benches/client_overhead.rs: the official `openai` package sending the same
requests as the Rust client, AsyncOpenAI with an asyncio.Semaphore of the same size.

Prints one JSON line: {"requests", "wall_s", "cpu_s"}. CPU is time.process_time() of this
process around the sending only (interpreter start-up and imports are not counted).
"""

import argparse
import asyncio
import base64
import json
import time

from openai import AsyncOpenAI


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--workload", choices=["chat-text", "chat-image", "embeddings"], required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--prompt-chars", type=int, required=True)
    ap.add_argument("--image", required=True)
    a = ap.parse_args()

    client = AsyncOpenAI(base_url=a.base_url, api_key="bench", max_retries=0, timeout=600)
    image_bytes = open(a.image, "rb").read()
    prompt = "word " * (a.prompt_chars // 5)
    sem = asyncio.Semaphore(a.concurrency)

    async def one(i: int) -> None:
        async with sem:
            if a.workload == "chat-text":
                r = await client.chat.completions.create(
                    model="bench",
                    messages=[{"role": "user", "content": f"{i} {prompt}"}],
                    max_tokens=512,
                    temperature=0,
                )
                assert r.choices[0].message.content
            elif a.workload == "chat-image":
                # Encoded per request, as the Rust client encodes per request.
                url = "data:image/jpeg;base64," + base64.b64encode(image_bytes).decode()
                r = await client.chat.completions.create(
                    model="bench",
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": url}},
                                {"type": "text", "text": f"Is there a dog? {i}"},
                            ],
                        }
                    ],
                    max_tokens=512,
                    temperature=0,
                )
                assert r.choices[0].message.content
            else:
                r = await client.embeddings.create(
                    model="bench", input=[f"a photo of a dog on a beach {i}"], encoding_format="float"
                )
                assert len(r.data[0].embedding) > 0

    # One warm-up request (connection set-up), as on the Rust side.
    await one(-1)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(a.requests)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(json.dumps({"requests": a.requests, "wall_s": wall, "cpu_s": cpu}))


asyncio.run(main())
