"""The core is sans-I/O: no module in paxos/ may import I/O, clocks, threads or randomness."""
import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "paxos"
FORBIDDEN = {"zmq", "pykka", "msgpack", "threading", "time", "socket", "random", "os", "io", "asyncio",
             "subprocess", "datetime", "uuid", "secrets", "select", "selectors", "multiprocessing", "sqlite3",
             "signal", "logging", "pathlib", "shutil", "tempfile", "concurrent"}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def core_files():
    files = sorted(CORE.glob("*.py"))
    assert files, "the core package must exist"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_imports_no_io_clock_thread_or_randomness(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path.name} calls {node.func.id}()"


def test_purity_check_catches_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import time\n")
    with pytest.raises(AssertionError):
        test_core_module_imports_no_io_clock_thread_or_randomness(bad)
