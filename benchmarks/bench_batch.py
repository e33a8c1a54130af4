"""tinyasr.batch on a Dask LocalCluster: files per second with 1 and 2 workers, and a worker killed mid-run.

1,000 short files (FSDD recordings, 0.3-2 s at 8 kHz) go through ``tinyasr.batch.run(..., client=...)`` on a
LocalCluster of one, then two worker processes (one thread each).  Each cluster first transcribes a few
other files so every worker has loaded the model and compiled its kernels; the timed run is the 1,000
files alone.  The same run in this process (no Dask) gives the reference rate.  A last run on two workers
kills one worker (SIGKILL) after the first results: every file must still have exactly one row.

Run: ``python3 benchmarks/bench_batch.py [--files 1000]`` from the repository root; writes
benchmarks/results/batch.md.  Needs tinyasr[cluster].  With 2 cores shared with other work the
two-worker figure is a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from distributed import Client, LocalCluster  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from tinyasr import batch  # noqa: E402

RECORDINGS = os.path.join(ROOT, "..", "shared", "audio", "fsdd", "recordings")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "batch.md")
CHUNK = 16


def files(count: int, skip: int = 0):
    names = sorted(os.listdir(RECORDINGS))[skip:skip + count]
    if len(names) < count:
        raise SystemExit(f"{RECORDINGS} has fewer than {count + skip} recordings")
    return [os.path.join(RECORDINGS, n) for n in names]


def cpu_seconds(client) -> float:
    """CPU time used so far by the worker processes (or by this process without a client)."""
    return sum(client.run(time.process_time).values()) if client else time.process_time()


def timed_run(inputs, client, folder, name):
    """(files per second, CPU ms per file) of one run: the CPU share says what the wall clock cannot on a
    machine shared with other work (Dask's own cost per file)."""
    output = os.path.join(folder, name + ".jsonl")
    cpu = cpu_seconds(client)
    start = time.perf_counter()
    batch.run(inputs, output, client=client, chunk_size=CHUNK)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds(client) - cpu
    paths = [r["audio_filepath"] for r in batch.read_rows(output)]
    assert sorted(paths) == sorted(inputs), f"{name}: files lost or repeated"
    return len(inputs) / seconds, 1000 * cpu / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    inputs, warmup = files(args.files), files(2 * CHUNK, skip=args.files)
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        batch.run(warmup, os.path.join(folder, "warm-local.jsonl"))
        rates["in this process (no Dask)"] = max(timed_run(inputs, None, folder, f"local{i}")
                                                 for i in range(args.repeats))
        for workers in (1, 2):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
            with cluster, Client(cluster) as client:
                batch.run(warmup, os.path.join(folder, f"warm{workers}.jsonl"), client=client, chunk_size=1)
                rates[f"{workers} worker{'s' if workers > 1 else ''}"] = max(
                    timed_run(inputs, client, folder, f"w{workers}-{i}") for i in range(args.repeats))
            print(rates, flush=True)

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        with cluster, Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            killed = []

            def kill_once(_rows):
                if not killed:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])

            output = os.path.join(folder, "killed.jsonl")
            summary = batch.run(inputs, output, client=client, chunk_size=CHUNK, progress=kill_once)
            paths = [r["audio_filepath"] for r in batch.read_rows(output)]
            kill_ok = sorted(paths) == sorted(inputs) and len(set(paths)) == len(inputs)

    ratio = rates["2 workers"][0] / rates["1 worker"][0]
    lines = [f"# tinyasr batch on a Dask LocalCluster ({time.strftime('%Y-%m-%d')})", "",
             f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the end "
             "(above the core count, other work shared the cores and the two-worker figure is a floor).", "",
             f"{args.files} FSDD recordings (0.3-2 s, 8 kHz), bundled digits model, greedy, {CHUNK} files per task; "
             f"best of {args.repeats} runs after every worker is warm.", "",
             "| where | files per second | CPU ms per file (workers') |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {cpu:.2f} |" for name, (rate, cpu) in rates.items()]
    lines += ["", f"2 workers / 1 worker: **{ratio:.2f}x**.", "",
              f"A worker killed (SIGKILL) after the first results: {len(paths)} rows for {len(inputs)} files, "
              f"{'every file exactly once' if kill_ok else 'FILES LOST OR REPEATED'} "
              f"({summary.transcribed} transcribed, {summary.failed} failed)."]
    with open(RESULTS, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
