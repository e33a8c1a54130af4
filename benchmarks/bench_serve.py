"""Load and soak test of ``tinyasr serve``: many concurrent sessions streaming at real-time pace.

The server runs as the user runs it (``python -m tinyasr serve --port 0``) in a child process; this process
plays N clients on one event loop.  Each client streams the bundled sample
(``tinyasr/models/sample_digits.wav``, 4.27 s) in 100 ms chunks at the pace of a microphone, sends ``end``,
waits for the final result, reconnects and starts again, until the run's time is up (client starts are
staggered over one sample's length).  Figures:

* every final transcript against the offline one (``Recognizer.transcribe`` of the same file);
* latency: from sending the last audio chunk (``end`` follows at once) to receiving the final result;
* pace: how late each chunk left against its real-time schedule (backpressure shows here);
* the server's resident memory (/proc/PID/status VmRSS) every ``--sample-every`` s, its growth after the
  first minute as a least-squares slope, and the server's CPU time.

The clients share the machine with the server, so the figures are for both on the same cores.
Run: ``python benchmarks/bench_serve.py [--sessions 32] [--seconds 600]`` from the repository root (Linux);
the figures go to stdout and to benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import date

import numpy as np
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.machine import cpu_model  # noqa: E402

SAMPLE = os.path.join(ROOT, "tinyasr", "models", "sample_digits.wav")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "serve.md")
CHUNK_SECONDS = 0.1


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def receive(ws, finals: list) -> dict:
    """Events until ``done`` or ``error`` (returned); finals as (arrival time, text)."""
    async for message in ws:
        event = json.loads(message)
        if event["type"] == "final":
            finals.append((time.monotonic(), event["text"]))
        elif event["type"] in ("done", "error"):
            return event
    return {"type": "error", "message": f"closed with {ws.close_code} before done"}


async def client(url: str, chunks, delay: float, deadline: float, expected: str, stats: dict) -> None:
    """One user: sessions back to back until the deadline, each the sample at real-time pace."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    while time.monotonic() < deadline:
        async with connect(url, max_queue=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": chunks[0][1]}))
            json.loads(await ws.recv())
            finals = []
            receiver = asyncio.ensure_future(receive(ws, finals))
            started = time.monotonic()
            for index, (samples, _) in enumerate(chunks):
                await asyncio.sleep(max(0.0, started + index * CHUNK_SECONDS - time.monotonic()))
                stats["lateness"].append(time.monotonic() - (started + index * CHUNK_SECONDS))
                await ws.send(samples)
            last_chunk = time.monotonic()
            await ws.send(json.dumps({"type": "end"}))
            ending = await receiver
        if ending["type"] == "error" or not finals:
            stats["errors"].append(ending)
            continue
        stats["latency"].append(finals[-1][0] - last_chunk)
        stats["utterances"] += 1
        stats["mismatches"] += " ".join(text for _, text in finals) != expected


async def load(url: str, pid: int, sessions: int, seconds: float, sample_every: float, expected: str) -> dict:
    samples, rate = soundfile.read(SAMPLE, dtype="int16")
    step = int(rate * CHUNK_SECONDS)
    chunks = [(samples[i:i + step].tobytes(), rate) for i in range(0, len(samples), step)]
    stats = {"latency": [], "lateness": [], "errors": [], "utterances": 0, "mismatches": 0, "memory": []}
    started = time.monotonic()
    deadline = started + seconds
    spread = len(samples) / rate
    tasks = [asyncio.ensure_future(client(url, chunks, spread * i / sessions, deadline, expected, stats))
             for i in range(sessions)]
    cpu_start = cpu_seconds(pid)
    while time.monotonic() < deadline:
        stats["memory"].append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(min(sample_every, max(0.0, deadline - time.monotonic())))
    await asyncio.gather(*tasks)
    stats["memory"].append((time.monotonic() - started, rss_mb(pid)))
    stats["server_cpu"] = (cpu_seconds(pid) - cpu_start) / (time.monotonic() - started)
    stats["audio_seconds"] = stats["utterances"] * spread
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the run (default: 600)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not write {RESULTS}")
    args = parser.parse_args()

    sys.path.insert(0, ROOT)
    from tinyasr import Recognizer

    expected = Recognizer().transcribe(SAMPLE).text
    server = subprocess.Popen([sys.executable, "-m", "tinyasr", "serve", "--port", "0", "--max-sessions",
                               str(args.sessions)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        while banner and not banner.startswith("tinyasr serve:"):  # e.g. a warning printed first
            banner = server.stderr.readline()
        url = banner.split(" and ")[1].split(";")[0]
        load_before = os.getloadavg()[0]
        stats = asyncio.run(load(url, server.pid, args.sessions, args.seconds, args.sample_every, expected))
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=60)

    latency = np.array(stats["latency"]) * 1e3
    lateness = np.array(stats["lateness"]) * 1e3
    memory = np.array(stats["memory"])
    settled = memory[memory[:, 0] >= min(60.0, memory[-1, 0] / 2)]
    slope = np.polyfit(settled[:, 0] / 60, settled[:, 1], 1)[0] if len(settled) > 2 else float("nan")
    rows = [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} cores"),
        ("load average (1 min) before / after", f"{load_before:.1f} / {load_after:.1f}"),
        ("sessions, length of run", f"{args.sessions} concurrent, {args.seconds:g} s"),
        ("utterances finished, errors", f"{stats['utterances']}, {len(stats['errors'])}"),
        ("final transcript != offline", f"{stats['mismatches']}"),
        ("latency last chunk -> final: median / p95 / max", f"{np.median(latency):.0f} / "
         f"{np.percentile(latency, 95):.0f} / {latency.max():.0f} ms"),
        ("chunk sent late vs real time: p95 / max", f"{np.percentile(lateness, 95):.0f} / {lateness.max():.0f} ms"),
        ("server memory: first / after 1 min / last / max", f"{memory[0, 1]:.0f} / {settled[0, 1]:.0f} / "
         f"{memory[-1, 1]:.0f} / {memory[:, 1].max():.0f} MB"),
        ("server memory growth after the first minute", f"{slope:+.2f} MB/min"),
        ("server memory each minute", ", ".join(f"{mb:.0f}" for t, mb in memory if t % 60 < args.sample_every)
         + " MB"),
        ("server CPU", f"{stats['server_cpu'] * 100:.0f} % of one core; "
         f"{stats['server_cpu'] * args.seconds / max(stats['audio_seconds'], 1e-9) * 100:.1f} % of a core per "
         "real-time stream"),
    ]
    table = "\n".join(["| what | figure |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    print(table)
    if stats["errors"]:
        print("errors:", stats["errors"][:5])
    if not args.no_write:
        with open(RESULTS, "w") as out:
            out.write(f"# tinyasr serve under load ({date.today()})\n\n`python benchmarks/bench_serve.py "
                      f"--sessions {args.sessions} --seconds {args.seconds:g}`: clients and server on the same "
                      "machine; see the script's docstring for what each figure measures.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
