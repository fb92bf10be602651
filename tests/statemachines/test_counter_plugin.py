"""Claim: a third-party package that registers in `omni.statemachines` is loaded by name (examples/omni-counter).

The example is installed with pip, offline, into a private target directory (not into the shared
interpreter, so other tests and sessions never see it), and loaded in a fresh interpreter whose path
includes that directory: exactly how an installed plug-in is discovered through importlib.metadata.
"""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "omni-counter"


def pip_install(target: Path, source: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "-q",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)


def build_wheel_by_hand(project: Path, out: Path) -> Path:
    """A wheel made from pyproject.toml with zipfile: for machines whose setuptools cannot build wheels
    offline (setuptools < 70.1 without the `wheel` package)."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    name, version = meta["name"].replace("-", "_"), meta["version"]
    dist_info = f"{name}-{version}.dist-info"
    files = {str(p.relative_to(project)): p.read_bytes()
             for package in ["omni_counter"] for p in (project / package).rglob("*.py")}
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in meta["entry-points"].items())
    metadata = f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {version}\n"
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: omni-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def test_counter_plugin_installs_and_loads_by_name(tmp_path):
    source, target = tmp_path / "omni-counter", tmp_path / "site"
    # a copy, so that a build leaves nothing (build/, *.egg-info) in the repository
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = pip_install(target, source)
    if result.returncode != 0:  # no offline wheel builder here: install the same package as a wheel
        assert "bdist_wheel" in result.stderr + result.stdout or "setuptools" in result.stderr, result.stderr
        result = pip_install(target, build_wheel_by_hand(source, tmp_path))
    assert result.returncode == 0, result.stderr
    assert list(target.glob("omni_counter-*.dist-info/entry_points.txt"))

    script = textwrap.dedent("""
        import json
        from omni.statemachines import StateMachineError, available_state_machines, load_state_machine
        Counter = load_state_machine("counter")
        sm = Counter()
        out = {"available": available_state_machines(), "writes": [sm.is_write({"op": "incr"}),
               sm.is_write({"op": "get"})], "results": []}
        for i, cmd in enumerate([{"op": "incr", "name": "a"}, {"op": "incr", "name": "a", "by": 41},
                                 {"op": "incr", "name": "a", "by": "x"}, {"op": "incr", "name": "b"}]):
            try:
                out["results"].append(sm.apply(i, cmd))
            except StateMachineError as e:
                out["results"].append(e.code)
        out["get"] = sm.query({"op": "get", "name": "a"})
        copy = Counter()
        copy.restore(sm.snapshot())
        out["restored"] = [copy.applied_index, copy.query({"op": "get", "name": "b"})]
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert {"counter", "kv", "sql"} <= set(out["available"])
    assert out["writes"] == [True, False]
    assert out["results"] == [{"value": 1}, {"value": 42}, "BAD_REQUEST", {"value": 1}]
    assert out["get"] == {"value": 42}
    assert out["restored"] == [4, {"value": 1}]
