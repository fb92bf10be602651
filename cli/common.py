"""What the client commands (`omni kv ...`, `omni status`) share: connection options, output, failure.

Every client command takes `--endpoints` (else OMNI_ENDPOINTS, else the ports `omni cluster up` uses),
`--timeout` (the whole command's time budget) and `-o/--output text|json`. Text output is for people;
json prints the op's result object, one JSON document on stdout, for scripts. A failure of any kind
ends the command with exit code 1 and exactly one line on stderr, `error: CODE: message`, never a
traceback: a script can rely on the exit code and a person reads one line.
"""
from __future__ import annotations

import base64
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from omni.client import DEFAULT_ENDPOINTS, Client, OmniError, parse_endpoints

#: the longest one node is waited for before the next is tried, whatever the command's budget
ATTEMPT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Options:
    """The connection and output options of one client command."""

    endpoints: list[str]
    timeout: float
    output: str

    def client(self) -> Client:
        """A client that tries the endpoints in turn until the command's time budget is spent.

        One attempt waits at most a share of the budget, so every node gets its turn within it.
        """
        attempt = min(ATTEMPT_TIMEOUT, self.timeout / len(self.endpoints))
        return Client(self.endpoints, timeout=attempt, retries=None, deadline=self.timeout)

    @property
    def json(self) -> bool:
        return self.output == "json"


_OPTIONS = [
    click.option("--endpoints", envvar="OMNI_ENDPOINTS", default=",".join(DEFAULT_ENDPOINTS),
                 show_default=True, show_envvar=True,
                 help="Comma-separated client endpoints of the nodes (host:port means tcp://host:port)."),
    click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
                 help="Give up after this many seconds (each node is waited for at most 2 s, then the next)."),
    click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
                 help="text for people; json prints the result object for scripts (bytes as base64)."),
]


def client_command(func: Callable) -> Callable:
    """Add the shared options to a click command and turn every failure into exit 1 + one stderr line.

    The decorated function receives an `Options` as its first argument.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, endpoints: str, timeout: float, output: str, **kwargs: Any) -> Any:
        try:
            opts = Options(parse_endpoints(endpoints), timeout, output)
            return func(opts, *args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors and deliberate exits keep click's own handling
        except OmniError as e:
            fail(e.code, e.message)
        except ValueError as e:  # the client refused an argument before sending anything
            fail("BAD_REQUEST", str(e))
        except Exception as e:  # a bug must still not print a traceback at a user
            fail("INTERNAL", f"{type(e).__name__}: {e}")

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def fail(code: str, message: str) -> None:
    """Exit 1 with `error: CODE: message` on one line of stderr."""
    text = " ".join(str(message).split())  # one line, even if a node sent a multi-line message
    click.echo(f"error: {code}: {text}" if text else f"error: {code}", err=True)
    sys.exit(1)


def parse_value(text: str, as_json: bool) -> Any:
    """A value from the command line: the string itself, or (with --json-value) the JSON it holds."""
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}") from None


def jsonable(value: Any) -> Any:
    """A JSON-encodable copy of a msgpack value: bytes become base64 text, other oddities their repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(jsonable(k)): jsonable(v) for k, v in value.items()}
    return repr(value)


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), ensure_ascii=False))


def print_value(value: Any) -> None:
    """A stored value for people: strings as they are, bytes raw, anything else as JSON."""
    if isinstance(value, (str, bytes)):  # click writes bytes raw, unchanged
        click.echo(value)
    else:
        print_json(value)
