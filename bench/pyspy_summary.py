"""Summarise py-spy raw (collapsed) output: per thread share, top functions by self and by total time.

    py-spy record --pid PID --duration 15 --rate 200 --format raw --threads -o leader.txt --nonblocking
    python bench/pyspy_summary.py leader.txt [--top 30]
"""
from __future__ import annotations

import argparse
import re
from collections import Counter


def parse(path: str):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        yield stack.split(";"), int(count)


def short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"(.*?) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    func, path, _ = m.groups()
    return f"{func} ({'/'.join(path.split('/')[-2:])})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--thread", default=None, help="only stacks whose thread frame contains this text")
    args = ap.parse_args()
    total = 0
    threads, selfs, totals = Counter(), Counter(), Counter()
    for stack, n in parse(args.path):
        thread = stack[0] if stack and stack[0].startswith("thread") else "?"
        frames = stack[1:] if thread != "?" else stack
        if args.thread and args.thread not in thread:
            continue
        total += n
        threads[thread] += n
        if frames:
            selfs[short(frames[-1])] += n
        for f in set(short(f) for f in frames):
            totals[f] += n
    print(f"samples: {total}")
    print("\n== by thread ==")
    for t, n in threads.most_common():
        print(f"{100 * n / total:6.1f}%  {t}")
    print("\n== self time ==")
    for f, n in selfs.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {f}")
    print("\n== total time (inclusive) ==")
    for f, n in totals.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {f}")


if __name__ == "__main__":
    main()
