"""Producer side of one scenario for one system, run in a subprocess of that system's environment.

``python driver.py SYSTEM SCENARIO [options]`` prints one JSON object on stdout. Timing is done
here, identically for every system; the system module only supplies one-call operations
(``enqueue``, ``roundtrip``, ``eta``), sync or async.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "systems"))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("system")
    p.add_argument("scenario", choices=["enqueue", "prefill", "group", "roundtrip", "eta"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--results", type=int, default=1)
    p.add_argument("--send-concurrency", type=int, default=0)
    p.add_argument("--spread", type=float, default=5.0)
    p.add_argument("--lead", type=float, default=0.5)
    return p.parse_args()


def _sync(mod: Any, args: argparse.Namespace) -> dict[str, Any]:
    client = mod.Client(bool(args.results))
    try:
        if args.scenario == "prefill" and hasattr(client, "prefill"):
            t0 = time.perf_counter()  # untimed in the results: only the backlog for a drain
            client.prefill(args.n)
            return {"seconds": time.perf_counter() - t0, "n": args.n}
        if args.scenario in ("enqueue", "prefill"):
            for i in range(args.warmup):
                client.enqueue(-1 - i)
            t0 = time.perf_counter()
            for i in range(args.n):
                client.enqueue(i)
            return {"seconds": time.perf_counter() - t0, "n": args.n}
        if args.scenario == "group":
            t0 = time.perf_counter()
            client.enqueue_group(args.n, args.send_concurrency)
            return {"seconds": time.perf_counter() - t0, "n": args.n}
        if args.scenario == "roundtrip":
            for i in range(args.warmup):
                client.roundtrip(i)
            lat = []
            for i in range(args.n):
                t0 = time.perf_counter()
                value = client.roundtrip(i)
                lat.append(time.perf_counter() - t0)
                if value != i:
                    raise RuntimeError(f"round trip {i} returned {value!r}")
            return {"latencies": lat}
        if args.scenario == "eta":
            start = time.time() + args.lead
            dues = [start + args.spread * i / max(1, args.n - 1) for i in range(args.n)]
            for i, due in enumerate(dues):
                client.eta(i, due)
            return {"sent": args.n, "last_due": dues[-1], "send_seconds": time.time() - (start - args.lead)}
        raise ValueError(args.scenario)
    finally:
        client.close()


async def _async(mod: Any, args: argparse.Namespace) -> dict[str, Any]:
    client = mod.Client(bool(args.results))
    await client.start()
    try:
        if args.scenario in ("enqueue", "prefill"):
            for i in range(args.warmup):
                await client.enqueue(-1 - i)
            t0 = time.perf_counter()
            for i in range(args.n):
                await client.enqueue(i)
            return {"seconds": time.perf_counter() - t0, "n": args.n}
        if args.scenario == "roundtrip":
            for i in range(args.warmup):
                await client.roundtrip(i)
            lat = []
            for i in range(args.n):
                t0 = time.perf_counter()
                value = await client.roundtrip(i)
                lat.append(time.perf_counter() - t0)
                if value != i:
                    raise RuntimeError(f"round trip {i} returned {value!r}")
            return {"latencies": lat}
        if args.scenario == "eta":
            start = time.time() + args.lead
            dues = [start + args.spread * i / max(1, args.n - 1) for i in range(args.n)]
            for i, due in enumerate(dues):
                await client.eta(i, due)
            return {"sent": args.n, "last_due": dues[-1], "send_seconds": time.time() - (start - args.lead)}
        raise ValueError(args.scenario)
    finally:
        await client.close()


def main() -> None:
    args = _parse()
    mod = importlib.import_module(f"bench_{args.system}")
    out = asyncio.run(_async(mod, args)) if mod.ASYNC else _sync(mod, args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
