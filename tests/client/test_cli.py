"""Claims of the client commands (cli/kv.py, cli/status.py, cli/common.py) against fake nodes."""
import json
import subprocess
import sys

from click.testing import CliRunner
from omni.cli import main

from .fakenode import dead_endpoint


def run(*args, env=None):
    """Invoke `omni ARGS` in-process, with stderr kept apart from stdout."""
    try:
        runner = CliRunner(mix_stderr=False)  # click 8.1
    except TypeError:
        runner = CliRunner()  # click >= 8.2 always keeps stderr apart
    return runner.invoke(main, list(args), env=env)


def endpoints(*nodes_or_endpoints):
    return ",".join(getattr(n, "endpoint", n) for n in nodes_or_endpoints)


def test_kv_put_prints_ok_exits_zero_and_sends_the_value_as_a_string(node):
    good = node(1)
    result = run("kv", "put", "greeting", "42", "--endpoints", good.endpoint)
    assert result.exit_code == 0, result.output
    assert result.stdout == "OK\n"
    assert good.requests[0]["value"] == "42"


def test_json_value_sends_the_parsed_json(node):
    good = node(1)
    result = run("kv", "put", "k", '{"n": [1, 2.5, null]}', "--json-value", "--endpoints", good.endpoint)
    assert result.exit_code == 0, result.output
    assert good.requests[0]["value"] == {"n": [1, 2.5, None]}


def test_kv_get_prints_the_bare_value(node):
    good = node(1)
    good.store["k"] = "hello"
    result = run("kv", "get", "k", "--endpoints", good.endpoint)
    assert result.exit_code == 0 and result.stdout == "hello\n"


def test_kv_get_with_json_output_prints_the_result_object(node):
    good = node(1)
    good.store["k"] = {"a": 1}
    result = run("kv", "get", "k", "-o", "json", "--consistency", "local", "--endpoints", good.endpoint)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"value": {"a": 1}, "revision": 1}
    assert good.requests[0]["consistency"] == "local"


def test_kv_del_prints_the_number_of_deleted_keys(node):
    good = node(1)
    good.store["k"] = "v"
    first = run("kv", "del", "k", "--endpoints", good.endpoint)
    second = run("kv", "del", "k", "--endpoints", good.endpoint)
    assert (first.stdout, second.stdout) == ("1\n", "0\n")
    assert good.requests[0]["op"] == "delete"


def test_kv_cas_absent_sends_nil_as_expected(node):
    good = node(1)
    result = run("kv", "cas", "k", "new", "--absent", "--endpoints", good.endpoint)
    assert result.exit_code == 0, result.output
    assert good.requests[0]["expected"] is None and good.requests[0]["value"] == "new"
    assert result.stdout.startswith("FAILED")  # the fake never lets a cas succeed


def test_kv_cas_without_absent_needs_expected_and_value(node):
    good = node(1)
    result = run("kv", "cas", "k", "only-one", "--endpoints", good.endpoint)
    assert result.exit_code != 0
    assert good.requests == []


def test_kv_range_prints_one_key_tab_value_line_per_key(node):
    good = node(1)
    good.store.update({"app/a": "1", "app/b": "2", "other": "3"})
    result = run("kv", "range", "app/", "--endpoints", good.endpoint)
    assert result.exit_code == 0, result.output
    assert result.stdout == "app/a\t1\napp/b\t2\n"
    assert good.requests[0]["prefix"] == "app/"


def test_a_failure_when_nothing_answers_exits_1_with_one_error_line_on_stderr():
    result = run("kv", "get", "k", "--endpoints", endpoints(dead_endpoint(), dead_endpoint()), "--timeout", "0.4")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in result.stderr


def test_an_error_reply_exits_1_with_its_code_on_stderr(node):
    refusing = node(1, "error:UNAUTHORIZED")
    result = run("kv", "put", "k", "v", "--endpoints", refusing.endpoint, "-o", "json")
    assert result.exit_code == 1
    assert result.stderr == "error: UNAUTHORIZED: refused by the fake node\n"
    assert result.stdout == ""


def test_a_real_process_that_reaches_no_node_prints_one_error_line_and_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "omni.cli", "kv", "put", "k", "v", "--endpoints", dead_endpoint(), "--timeout", "0.3"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: UNAVAILABLE: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_endpoints_come_from_omni_endpoints_when_not_given(node):
    good = node(2)
    result = run("kv", "put", "k", "v", env={"OMNI_ENDPOINTS": good.endpoint})
    assert result.exit_code == 0, result.output
    assert len(good.requests) == 1


def test_status_prints_one_row_per_node_and_marks_the_unreachable_one(node):
    leader, follower, gone = node(1), node(2), dead_endpoint()
    result = run("status", "--endpoints", endpoints(leader, follower, gone), "--timeout", "1")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NODE", "ENDPOINT", "ROLE", "LEADER", "BALLOT", "DECIDED_IDX", "CONFIG_ID",
                              "MEMBERS", "STATE_MACHINE"]
    assert [row.split() for row in rows] == [
        ["1", leader.endpoint, "leader", "1", "4,0,1", "17", "1", "1,2,3", "kv"],
        ["2", follower.endpoint, "follower", "1", "4,0,1", "17", "1", "1,2,3", "kv"],
        ["-", gone, "unreachable", "-", "-", "-", "-", "-", "-"],
    ]
    assert [r["op"] for r in leader.requests + follower.requests] == ["status", "status"]


def test_status_exits_nonzero_when_no_node_answers():
    result = run("status", "--endpoints", endpoints(dead_endpoint(), dead_endpoint()), "--timeout", "0.3")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert result.stdout.count("unreachable") == 2


def test_status_json_lists_every_endpoint_with_its_answer_or_error(node):
    good, gone = node(1), dead_endpoint()
    result = run("status", "-o", "json", "--endpoints", endpoints(good, gone), "--timeout", "1")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [a["endpoint"] for a in answers] == [good.endpoint, gone]
    assert answers[0]["ok"] is True and answers[0]["status"]["role"] == "leader"
    assert answers[1]["ok"] is False and answers[1]["error"]["code"] == "UNAVAILABLE"
