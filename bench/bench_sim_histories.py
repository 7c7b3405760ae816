"""Benchmark: organic histories for many simulated users, one process vs Ray tasks.

    python bench/bench_sim_histories.py                        # 100,000 users, 28 days, 2 shards
    python bench/bench_sim_histories.py --users 20000 --mode ray --shards 4

Both ways run ``SimEnv.organic(...).run_days(range(days), None)`` (no starter screen,
no encoder: histories only). One process generates every user; with Ray each task
generates one contiguous shard of users (``first_user`` offsets). Every random stream
is keyed by the global user index, so the shards together hold exactly the sessions of
the single process: the script checks that via row counts and an order-free checksum
of (session_id, summary).

Only row counts, timings and a checksum come back from a task unless ``--return-tables``
is given (then the shards' ``sessions`` tables travel to the driver through the object
store, as a stage that writes one Parquet file would need).

Peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: of the driver process for
the one-process run (measured before Ray is imported), and of each Ray worker for its
task. A worker runs one task when shards <= --num-cpus; with more shards a worker may
be reused and then reports the peak of every task it ran.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import zlib
from typing import Any

import pyarrow as pa

from icebreaker_ray.sim.catalog import load_catalog
from icebreaker_ray.sim.deploy import SimEnv


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process: unlike wall time, not inflated when other
    jobs share the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def checksum(sessions: pa.Table) -> int:
    """Order-free: sum of CRC32s of (session_id, summary) rows, mod 2**64."""
    ids = sessions.column("session_id").to_pylist()
    text = sessions.column("summary").to_pylist()
    return sum(zlib.crc32(f"{i}\x00{t}".encode()) for i, t in zip(ids, text, strict=True)) % 2**64


def generate(first_user: int, num_users: int, seed: int, days: int,
             return_table: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Organic histories of users first_user .. first_user + num_users - 1."""
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    env = SimEnv.organic(load_catalog(), num_users, seed, first_user=first_user)
    users_s = time.perf_counter() - t0

    def progress(day: int) -> None:
        if verbose:
            print(f"  day {day}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    log = env.run_days(range(days), None, progress=progress)
    out = {
        "first_user": first_user,
        "users": num_users,
        "sessions": log.sessions.num_rows,
        "visits": log.events.num_rows,
        "table_mb": log.sessions.nbytes / 2**20,
        "checksum": checksum(log.sessions),
        "users_s": users_s,
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - cpu0,
        "maxrss_mb": maxrss_mb(),
        "table": log.sessions if return_table else None,
    }
    return out


def shard_bounds(users: int, shards: int) -> list[tuple[int, int]]:
    """(first_user, num_users) of ``shards`` contiguous, near-equal shards."""
    edges = [users * i // shards for i in range(shards + 1)]
    return [(lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    rss_before = maxrss_mb()
    t0 = time.perf_counter()
    res = generate(0, args.users, args.seed, args.days, verbose=args.verbose)
    res["wall"] = time.perf_counter() - t0
    res["rss_before_mb"] = rss_before
    return res


def run_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    try:
        task = ray.remote(num_cpus=1)(generate)
        t0 = time.perf_counter()
        refs = [task.remote(lo, n, args.seed, args.days, args.return_tables)
                for lo, n in shard_bounds(args.users, args.shards)]
        parts = ray.get(refs)
        tables = [p.pop("table") for p in parts]
        if args.return_tables:
            sessions = pa.concat_tables(tables)
            assert sessions.num_rows == sum(p["sessions"] for p in parts)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {
        "wall": wall,
        "init_s": init_s,
        "parts": parts,
        "sessions": sum(p["sessions"] for p in parts),
        "visits": sum(p["visits"] for p in parts),
        "checksum": sum(p["checksum"] for p in parts) % 2**64,
        "table_mb": sum(p["table_mb"] for p in parts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=("both", "local", "ray"), default="both")
    ap.add_argument("--verbose", action="store_true", help="progress of the one-process run")
    ap.add_argument("--return-tables", action="store_true",
                    help="gather the shards' sessions tables in the driver")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    # One process first, before Ray is imported, so its peak RSS is the generator's own.
    local = run_local(args) if args.mode in ("both", "local") else None
    ray_res = run_ray(args) if args.mode in ("both", "ray") else None
    load_after = os.getloadavg()[0]

    print(f"{args.users:,} users x {args.days} days, seed {args.seed}; "
          f"Ray: {args.shards} shard task(s) on num_cpus={args.num_cpus}"
          + (", sessions tables gathered in the driver" if args.return_tables else
             ", only counts/checksums returned"))
    print()
    print("| run | wall s | CPU s | sessions | visits | sessions/s (wall) | peak RSS (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    if local:
        print(f"| one process | {local['wall']:.1f} | {local['cpu_s']:.1f} | {local['sessions']:,} | "
              f"{local['visits']:,} | {local['sessions'] / local['wall']:,.0f} | "
              f"{local['maxrss_mb']:,.0f} (process before: {local['rss_before_mb']:,.0f}) |")
    if ray_res:
        parts = ray_res["parts"]
        rss = ", ".join(f"{p['maxrss_mb']:,.0f}" for p in parts)
        print(f"| Ray, {len(parts)} tasks | {ray_res['wall']:.1f} | "
              f"{sum(p['cpu_s'] for p in parts):.1f} (sum) | {ray_res['sessions']:,} | "
              f"{ray_res['visits']:,} | {ray_res['sessions'] / ray_res['wall']:,.0f} | "
              f"per task: {rss} |")
        for p in parts:
            print(f"| - task: users {p['first_user']:,}..{p['first_user'] + p['users'] - 1:,} | "
                  f"{p['seconds']:.1f} | {p['cpu_s']:.1f} | {p['sessions']:,} | {p['visits']:,} | "
                  f"{p['sessions'] / p['seconds']:,.0f} | {p['maxrss_mb']:,.0f} |")
    print()
    print(f"1-min load average: {load_before:.1f} before, {load_after:.1f} after "
          f"({os.cpu_count()} cores; other jobs may share them, which inflates wall time)")
    if local:
        print(f"one process: creating users {local['users_s']:.1f} s; sessions table "
              f"{local['table_mb']:,.0f} MiB in Arrow")
    if ray_res:
        print(f"Ray: ray.init {ray_res['init_s']:.1f} s (not in wall time); "
              f"sessions tables {ray_res['table_mb']:,.0f} MiB in Arrow over all shards")
    if local and ray_res:
        same = (local["sessions"], local["checksum"]) == (ray_res["sessions"], ray_res["checksum"])
        print(f"speed-up of Ray tasks over one process: {local['wall'] / ray_res['wall']:.2f}x; "
              f"shards reproduce the one-process sessions exactly: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
