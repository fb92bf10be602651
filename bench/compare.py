"""Omni side by side with etcd 3.4 and PySyncObj on this machine: same workloads, one run, one report.

    python3 bench/compare.py                  # every workload 10 s (a few minutes in all)
    python3 bench/compare.py --duration 30    # the figures for BENCHMARKS.md
    python3 bench/compare.py --etcd-check-perf  # also etcd's own Go load generator (60 s more)

What it does, in order:
1. Installs what is missing: etcd from Debian (`apt-get install -y etcd-server etcd-client`) and PySyncObj
   from PyPI into a throwaway venv (``--venv``, default /tmp/omni-compare-venv, made with
   --system-site-packages so it sees pyzmq and msgpack). Neither becomes a dependency of Omni.
2. Starts, one system at a time, each 3-node cluster on loopback with its data in a temporary directory:
   - etcd: three `etcd` processes, default settings (fsync of the WAL on every commit);
   - PySyncObj: three bench/pysyncobj_server.py processes (PySyncObj's Raft plus a ZeroMQ/msgpack front
     that speaks the Omni protocol's put/get/batch, so the very same load generator drives it; PySyncObj
     never fsyncs, see that file);
   - Omni: three `omni node start` processes (kv state machine, the defaults, fsync on);
   and a bare pyzmq + msgpack echo server (the ceiling of this load generator on this machine).
3. Runs the same workloads against each, always at the leader:
   - put, sequential: one client, one request at a time;
   - get, sequential: linearizable (etcd: default range; PySyncObj has no such read: local dict);
   - get local, sequential: Omni consistency=local, etcd serializable=true, PySyncObj local dict;
   - put, pipelined: 2 processes x 200 requests in flight (the issue's target load);
   - get, pipelined: 2 x 200, linearizable (PySyncObj: local);
   - batch of 100 puts per request, pipelined 2 x 8: Omni `batch`, etcd a txn of 100 puts, PySyncObj
     one replicated put_many; reported as entries/s.
   Omni, PySyncObj and the echo server are driven by `omni bench` (ZeroMQ DEALER, msgpack, requests
   matched by id). etcd is driven through its v3 HTTP/JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`,
   `/v3/kv/txn`, base64 keys and values) by an asyncio HTTP/1.1 generator in this file: one keep-alive
   connection per in-flight request, the same processes x concurrency. The Go client would be faster
   than JSON over HTTP; `--etcd-check-perf` adds etcd's own `etcdctl check perf --load=s` as a reference.
4. Writes bench/compare_results.json and the section between the compare markers in BENCHMARKS.md
   (machine, date, exact command, table), then stops everything it started.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import base64
import datetime
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omni.cli.bench import free_ports, set_pdeathsig, stop_processes

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "compare_results.json"
MARK_START = "<!-- compare:start -->"
MARK_END = "<!-- compare:end -->"
SYSTEMS = ("omni", "etcd", "pysyncobj")

# name, workload, read level, processes, concurrency, batch
WORKLOADS = [
    ("put, sequential", "put", None, 1, 1, 1),
    ("get linearizable, sequential", "get", "linearizable", 1, 1, 1),
    ("get local, sequential", "get", "local", 1, 1, 1),
    ("put, pipelined 2x200", "put", None, 2, 200, 1),
    ("get linearizable, pipelined 2x200", "get", "linearizable", 2, 200, 1),
    ("batch of 100 puts, pipelined 2x8", "put-batch", None, 2, 8, 100),
]


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Processes started here; all stopped by stop(), and by the kernel if this script dies."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], logfile: Path, env=None) -> subprocess.Popen:
        with open(logfile, "ab") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 start_new_session=True, preexec_fn=set_pdeathsig)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        stop_processes(self.procs, timeout=10)
        self.procs = []


# ---- installing -------------------------------------------------------------------------------------------

def ensure_etcd() -> str:
    if not (shutil.which("etcd") and shutil.which("etcdctl")):
        log("installing etcd-server and etcd-client from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "etcd-server", "etcd-client"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "etcd"


def ensure_pysyncobj(venv: Path) -> tuple[str, str]:
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making a throwaway venv in {venv}")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    probe = [str(python), "-c", "import pysyncobj, zmq, msgpack; from importlib.metadata import version; "
                                "print(version('pysyncobj'))"]
    got = subprocess.run(probe, capture_output=True, text=True)
    if got.returncode != 0:
        # pyzmq and msgpack too: --system-site-packages sees the base interpreter's packages, not those of a
        # virtualenv this script may run from.
        log("installing pysyncobj==0.3.17, pyzmq and msgpack from PyPI into the venv")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pysyncobj==0.3.17", "pyzmq", "msgpack"], check=True)
        got = subprocess.run(probe, capture_output=True, text=True, check=True)
    return str(python), f"PySyncObj {got.stdout.strip()}"


# ---- the clusters -----------------------------------------------------------------------------------------

def omni_bench(endpoints: list[str], workload: str, level: str | None, processes: int, concurrency: int,
               batch: int, duration: float, warmup: float, extra: list[str] = ()) -> tuple[dict, list[str]]:
    cmd = [sys.executable, "-m", "omni.cli", "bench", "--endpoints", ",".join(endpoints), "--workload", workload,
           "--processes", str(processes), "--concurrency", str(concurrency), "--duration", str(duration),
           "--warmup", str(warmup), "--keys", "10000", "--value-size", "100", "--key-size", "16", "-o", "json",
           *extra]
    if level:
        cmd += ["--read-level", level]
    if workload == "put-batch":
        cmd += ["--batch", str(batch)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 300)
    shown = ["omni", *cmd[3:]]
    if run.stdout.strip():
        return json.loads(run.stdout), shown
    return {"failed": run.stderr.strip()[-500:]}, shown


def start_omni(procs: Procs, root: Path) -> list[str]:
    sys.path.insert(0, str(REPO))
    from omni.cli.bench import free_base_port, wait_for_leader
    from omni.cli.node import cluster_commands
    base = free_base_port(3)
    for pid, cmd in enumerate(cluster_commands(3, base, root, "kv"), 1):
        procs.start(cmd + ["--log-level", "WARNING"], root / f"omni-{pid}.log")
    endpoints = [f"tcp://127.0.0.1:{base + 100 + p}" for p in (1, 2, 3)]
    wait_for_leader(endpoints, deadline=60)
    return endpoints


def start_pysyncobj(procs: Procs, root: Path, python: str, append_period: float | None) -> list[str]:
    ports = free_ports(6)
    raft = [f"127.0.0.1:{p}" for p in ports[:3]]
    clients = [f"tcp://127.0.0.1:{p}" for p in ports[3:]]
    for i in range(3):
        cmd = [python, str(REPO / "bench" / "pysyncobj_server.py"), "--self", raft[i],
               "--partners", ",".join(r for j, r in enumerate(raft) if j != i), "--client", clients[i],
               "--data-dir", str(root / f"pso-{i + 1}")]
        if append_period is not None:
            cmd += ["--append-period", str(append_period)]
        procs.start(cmd, root / f"pso-{i + 1}.log")
    from omni.client import Client, OmniError
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            views = []
            for ep in clients:
                with Client([ep], timeout=0.5, retries=0) as c:
                    views.append(c.status())
            if all(v["ready"] for v in views) and len({v["leader"] for v in views}) == 1 and views[0]["leader"]:
                with Client(clients, timeout=2.0, retries=3) as c:
                    c.request("put", key="warm", value=1)
                return clients
        except OmniError:
            pass
        time.sleep(0.3)
    raise RuntimeError("PySyncObj cluster not ready in 60 s")


def start_etcd(procs: Procs, root: Path) -> list[str]:
    ports = free_ports(6)
    peer = [f"http://127.0.0.1:{p}" for p in ports[:3]]
    client = [f"http://127.0.0.1:{p}" for p in ports[3:]]
    cluster = ",".join(f"n{i + 1}={peer[i]}" for i in range(3))
    for i in range(3):
        procs.start(["etcd", "--name", f"n{i + 1}", "--data-dir", str(root / f"etcd-{i + 1}"),
                     "--listen-client-urls", client[i], "--advertise-client-urls", client[i],
                     "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", "omni-compare", "--logger", "zap", "--log-level", "warn"],
                    root / f"etcd-{i + 1}.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ok = subprocess.run(["etcdctl", "--endpoints", ",".join(client), "endpoint", "health"],
                            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        if ok.returncode == 0:
            return client
        time.sleep(0.5)
    raise RuntimeError("etcd cluster not healthy in 60 s")


def etcd_leader(endpoints: list[str]) -> str:
    out = subprocess.run(["etcdctl", "--endpoints", ",".join(endpoints), "endpoint", "status", "-w", "json"],
                         capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True).stdout
    for item in json.loads(out):
        if item["Status"]["leader"] == item["Status"]["header"]["member_id"]:
            return item["Endpoint"]
    return endpoints[0]


# ---- the etcd load generator (HTTP/JSON gateway) ---------------------------------------------------------

def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _etcd_body(workload: str, level: str | None, rng: random.Random, value: str, batch: int) -> tuple[str, bytes]:
    key = _b64("k" + str(rng.randrange(10000)).rjust(15, "0"))
    if workload == "put":
        return "/v3/kv/put", json.dumps({"key": key, "value": value}).encode()
    if workload == "get":
        body = {"key": key}
        if level == "local":
            body["serializable"] = True
        return "/v3/kv/range", json.dumps(body).encode()
    # distinct keys: etcd refuses a txn that puts one key twice (Omni's batch would simply apply both)
    ops = [{"request_put": {"key": _b64("k" + str(n).rjust(15, "0")), "value": value}}
           for n in rng.sample(range(10000), batch)]
    return "/v3/kv/txn", json.dumps({"success": ops}).encode()


async def _etcd_conn(host: str, port: int, spec: dict, rng: random.Random, stats: dict, t_warm: float,
                     t_end: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    value = _b64(random.Random(1).randbytes(100))
    try:
        while True:
            now = time.monotonic()
            if now >= t_end:
                return
            path, body = _etcd_body(spec["workload"], spec["level"], rng, value, spec["batch"])
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % (path.encode(), host.encode(), len(body)) + body)
            sent = time.monotonic()
            status = await reader.readline()
            if not status:
                raise ConnectionError("etcd closed the connection")
            length, chunked = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
                    chunked = True
            if chunked:  # large replies (a txn of 100 puts) come chunked
                parts = []
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        await reader.readline()  # the CRLF after the last chunk (no trailers here)
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readline()
                payload = b"".join(parts)
            else:
                payload = await reader.readexactly(length) if length else b""
            done = time.monotonic()
            ok = b" 200 " in status and b'"error"' not in payload[:200]
            if not ok:
                code = status.split(b" ")[1].decode() if b" " in status else "?"
                stats["errors"][f"HTTP_{code}"] = stats["errors"].get(f"HTTP_{code}", 0) + 1
            elif t_warm <= done < t_end:
                stats["requests"] += 1
                stats["lat"].append(int((done - sent) * 1e9))
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        stats["errors"][type(exc).__name__] = stats["errors"].get(type(exc).__name__, 0) + 1
    finally:
        writer.close()


def _etcd_worker(endpoint: str, spec: dict, index: int, t0: float, out) -> None:
    m = re.match(r"http://([^:]+):(\d+)", endpoint)
    host, port = m.group(1), int(m.group(2))
    stats = {"requests": 0, "errors": {}, "lat": array.array("q")}
    t_warm = t0 + spec["warmup"]
    t_end = t_warm + spec["duration"]

    async def main():
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        await asyncio.gather(*(_etcd_conn(host, port, spec, random.Random(index * 10_000 + i), stats, t_warm, t_end)
                               for i in range(spec["concurrency"])))

    asyncio.run(main())
    out.put({"requests": stats["requests"], "errors": stats["errors"], "lat": stats["lat"].tobytes()})


def etcd_load(endpoint: str, workload: str, level: str | None, processes: int, concurrency: int, batch: int,
              duration: float, warmup: float) -> dict:
    mp = multiprocessing.get_context("fork")
    out = mp.Queue()
    spec = dict(workload=workload, level=level, concurrency=concurrency, batch=batch, duration=duration,
                warmup=warmup)
    t0 = time.monotonic() + 0.5
    workers = [mp.Process(target=_etcd_worker, args=(endpoint, spec, i, t0, out)) for i in range(processes)]
    for w in workers:
        w.start()
    parts = [out.get(timeout=duration + warmup + 120) for _ in workers]
    for w in workers:
        w.join()
    lat = array.array("q")
    errors: dict = {}
    requests = 0
    for p in parts:
        requests += p["requests"]
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
        chunk = array.array("q")
        chunk.frombytes(p["lat"])
        lat.extend(chunk)
    ordered = sorted(lat)

    def pct(q):
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6, 3) if ordered else None

    ops = requests * (batch if workload == "put-batch" else 1)
    return {"workload": workload, "requests": requests, "ops": ops, "ops_per_s": round(ops / duration, 1),
            "requests_per_s": round(requests / duration, 1), "errors": errors,
            "errors_total": sum(errors.values()),
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                           "max": round(ordered[-1] / 1e6, 3) if ordered else None}}


def etcd_preload(endpoint: str) -> None:
    """Keys 0..9999 (the bench's key space), 100 per txn, so gets find values."""
    import urllib.request
    value = _b64(random.Random(1).randbytes(100))
    for lo in range(0, 10000, 100):
        ops = [{"request_put": {"key": _b64("k" + str(n).rjust(15, "0")), "value": value}} for n in range(lo, lo + 100)]
        req = urllib.request.Request(endpoint + "/v3/kv/txn", data=json.dumps({"success": ops}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()


def etcd_check_perf(endpoints: list[str], load: str) -> dict:
    """etcd's own Go load generator. Each --load has a fixed target rate (s 150, m 1000, l 8000, xl 15000
    writes/s, 60 s): it reports PASS or FAIL and the throughput it reached, so xl measures the most."""
    run = subprocess.run(["etcdctl", "--endpoints", ",".join(endpoints), "check", "perf", f"--load={load}"],
                         capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=200)
    text = run.stdout + run.stderr
    found = re.search(r"(\d+) writes/s", text)
    verdict = re.findall(r"^((?:PASS|FAIL)[^\n]*)", text, re.M)
    return {"load": load, "text": text.strip()[-600:], "writes_per_s": int(found.group(1)) if found else None,
            "verdict": verdict}


# ---- the report -------------------------------------------------------------------------------------------

def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def cell(result: dict | None, batch: bool) -> str:
    if not result:
        return "-"
    if "failed" in result:
        return "failed"
    rate = result["ops_per_s"]
    lat = result["latency_ms"]
    text = f"{rate:,.0f}{' entries' if batch else ''}/s, p50 {lat['p50']:.2f} / p99 {lat['p99']:.2f} ms" \
        if lat["p50"] is not None else f"{rate:,.0f}/s"
    if result.get("errors_total"):
        text += f", {result['errors_total']} errors ({', '.join(f'{k} {v}' for k, v in result['errors'].items())})"
    return text


def markdown(report: dict) -> str:
    lines = [MARK_START, "## Side by side: Omni, etcd, PySyncObj (bench/compare.py)", "",
             f"Measured {report['date']} on {report['machine']}; load average {report['load_before']} before the run"
             f" and {report['load_after']} after it{' (the machine was shared with other jobs: treat every figure as a lower bound)' if report['busy'] else ''}.",
             f"Command: `{report['command']}` ({report['duration']:g} s per workload after {report['warmup']:g} s warm-up;"
             " 100-byte values, 16-byte keys, 10,000 keys; every request to the leader; results in"
             " `bench/compare_results.json`).", "",
             f"Versions: {report['versions']['etcd']}; {report['versions']['pysyncobj']}; {report['versions']['omni']}.",
             "", "| workload | Omni | etcd | PySyncObj |", "|---|---|---|---|"]
    for name, workload, *_ in WORKLOADS:
        row = [cell(report["results"][s].get(name), workload == "put-batch") for s in SYSTEMS]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    echo = report.get("echo")
    if echo and "failed" not in echo:
        lines += ["", f"Ceiling (bare pyzmq + msgpack echo server, one thread, same generator, 2 x 200): "
                      f"{echo['requests_per_s']:,.0f} requests/s. Omni pipelined puts / echo = "
                      f"{report['ratio']:.3f}." if report.get("ratio") is not None else ""]
    if report.get("etcd_check_perf"):
        perf = report["etcd_check_perf"]
        lines += ["", f"`etcdctl check perf --load={perf.get('load', 's')}` (etcd's own Go client, a fixed target"
                      f" rate for 60 s; measured separately after the table): {perf.get('writes_per_s')} writes/s"
                      f" ({'; '.join(perf.get('verdict', [])) or 'no verdict'})."]
    lines += ["", "How each was driven, and what is not equal:",
              "- Omni and PySyncObj: `omni bench` (ZeroMQ DEALER + msgpack, requests matched by id); Omni writes"
              " carry client/seq (exactly-once bookkeeping). PySyncObj runs behind a small ZeroMQ/msgpack front"
              " (bench/pysyncobj_server.py) with its defaults and a journal file; it never fsyncs, so its writes"
              " are not durable the way Omni's and etcd's are; its gets are local reads of the dict (it has no"
              " linearizable read), so both of its get rows are local reads.",
              "- etcd: its v3 HTTP/JSON gateway from an asyncio HTTP/1.1 generator in bench/compare.py, one"
              " keep-alive connection per request in flight (JSON + base64 over HTTP costs etcd more than gRPC"
              " would); linearizable get = default range, local get = `serializable: true`; the batch row is one"
              " txn of 100 puts. etcd runs with its defaults (fsync per commit).",
              "- Omni: `omni node start` defaults (10 ms ticks, SQLite WAL log with synchronous=FULL, group commit).",
              MARK_END]
    return "\n".join(lines)


def write_benchmarks(section: str) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text()
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# ---- main -------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per workload")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of omni,etcd,pysyncobj")
    ap.add_argument("--workloads", default=None, help="comma-separated indexes into the workload list (0-5)")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/omni-compare-venv"))
    ap.add_argument("--pysyncobj-append-period", type=float, default=None)
    ap.add_argument("--etcd-check-perf", nargs="?", const="xl", default=None, choices=["s", "m", "l", "xl"],
                    help="also run etcdctl check perf --load=LOAD (default xl; 60 s)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the BENCHMARKS.md section from bench/compare_results.json, run nothing")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md / compare_results.json")
    args = ap.parse_args()
    if args.render_only:
        write_benchmarks(markdown(json.loads(RESULTS.read_text())))
        return
    systems = [s for s in args.systems.split(",") if s]
    chosen = WORKLOADS if args.workloads is None else [WORKLOADS[int(i)] for i in args.workloads.split(",")]
    versions = {"etcd": ensure_etcd() if "etcd" in systems else "etcd not run",
                "pysyncobj": "PySyncObj not run"}
    python = None
    if "pysyncobj" in systems:
        python, versions["pysyncobj"] = ensure_pysyncobj(args.venv)
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        versions["omni"] = f"Omni {head}{' with uncommitted changes' if dirty else ''}"
    except OSError:
        versions["omni"] = "Omni (no git)"
    load_before = os.getloadavg()[0]
    report = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "command": "python3 bench/compare.py " + " ".join(sys.argv[1:]), "duration": args.duration,
              "warmup": args.warmup, "versions": versions, "results": {s: {} for s in SYSTEMS},
              "commands": {}, "load_before": round(load_before, 1)}
    root = Path(tempfile.mkdtemp(prefix="omni-compare-"))
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        echo_proc = procs.start([sys.executable, str(REPO / "bench" / "echo_server.py"), "--endpoint",
                                 f"tcp://127.0.0.1:{free_ports(1)[0]}"], root / "echo.log")
        echo_ep = echo_proc.args[-1]
        time.sleep(0.5)
        log("echo ceiling")
        report["echo"], report["commands"]["echo"] = omni_bench([echo_ep], "echo", None, 2, 200, 1, args.duration,
                                                                args.warmup)
        procs.stop()
        for system in systems:
            log(f"starting {system}")
            if system == "omni":
                eps = start_omni(procs, root)
            elif system == "pysyncobj":
                eps = start_pysyncobj(procs, root, python, args.pysyncobj_append_period)
            else:
                eps = start_etcd(procs, root)
            for name, workload, level, processes, concurrency, batch in chosen:
                log(f"{system}: {name}")
                if system == "etcd":
                    if workload == "get" and not report["results"]["etcd"].get("_preloaded"):
                        etcd_preload(etcd_leader(eps))
                        report["results"]["etcd"]["_preloaded"] = True
                    result = etcd_load(etcd_leader(eps), workload, level, processes, concurrency, batch,
                                       args.duration, args.warmup)
                    report["commands"][f"etcd: {name}"] = (f"HTTP POST {etcd_leader(eps)}/v3/kv/"
                                                           f"{'put' if workload == 'put' else 'range' if workload == 'get' else 'txn'}"
                                                           f" x {processes} processes x {concurrency} connections")
                else:
                    result, cmd = omni_bench(eps, workload, level, processes, concurrency, batch, args.duration,
                                             args.warmup)
                    report["commands"][f"{system}: {name}"] = " ".join(cmd)
                report["results"][system][name] = result
                log(f"  {cell(result, workload == 'put-batch')}")
            if system == "etcd" and args.etcd_check_perf:
                log(f"etcd: etcdctl check perf --load={args.etcd_check_perf}")
                report["etcd_check_perf"] = etcd_check_perf(eps, args.etcd_check_perf)
            procs.stop()
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)
    report["results"]["etcd"].pop("_preloaded", None)
    load_after = os.getloadavg()[0]
    report["load_after"] = round(load_after, 1)
    report["busy"] = max(load_before, load_after) > 1.0
    omni_put = report["results"]["omni"].get("put, pipelined 2x200")
    echo = report.get("echo")
    if omni_put and echo and "failed" not in omni_put and "failed" not in echo and echo["requests_per_s"]:
        report["ratio"] = round(omni_put["requests_per_s"] / echo["requests_per_s"], 4)
    section = markdown(report)
    print(section)
    if not args.no_write:
        RESULTS.write_text(json.dumps(report, indent=1))
        write_benchmarks(section)
        log(f"wrote {RESULTS} and the compare section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
