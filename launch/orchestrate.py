"""What `qwenplan auto` does once the engine is ready: say where it serves and how to call it,
then stay in the foreground until the engine exits or a signal arrives.

The engine runs in its own process group (launch/runner.py); the runner's signal handler
stops that group (SIGTERM, SIGKILL after the grace period) on SIGINT, SIGTERM or SIGHUP.
qwenplan then exits as a program killed by that signal would (128 + the signal: 130, 143, 129).
An engine that dies on its own is diagnosed from its log as at start-up, and the exit is 1.
"""

from __future__ import annotations

import json
import shlex
import signal

import click
from qwenplan.launch.runner import _connect_host


def signal_exit_code(sig: int) -> int:
    """The exit status of a program that stops on `sig`, as shells report it."""
    return 128 + int(sig)


def interrupted(sig: int) -> click.exceptions.Exit:
    click.echo(f"qwenplan: interrupted by {signal.Signals(sig).name}; the engine was stopped", err=True)
    return click.exceptions.Exit(signal_exit_code(sig))


def how_to_call(doc: dict, key_env: str | None) -> list[str]:
    """The lines printed once the engine is ready: where, which model, a curl line, how to stop.
    The API key is named by its variable, never printed."""
    s = doc["settings"]
    host = _connect_host(s["host"])
    base = f"http://{f'[{host}]' if ':' in host else host}:{s['port']}/v1"
    body = json.dumps({"model": s["served_model_name"], "messages": [{"role": "user", "content": "Hello"}]})
    curl = ["curl", f"{base}/chat/completions", "-H", "Content-Type: application/json"]
    line = shlex.join(curl)
    if key_env:
        line += f' -H "Authorization: Bearer ${key_env}"'
    line += " -d " + shlex.quote(body)
    return [f"serving: {base}", f"model:   {s['served_model_name']}", f"try:     {line}", "Ctrl-C to stop"]


def stay_in_foreground(engine, doc: dict, key_env: str | None) -> int:
    """Print how to call the engine, wait until it exits or qwenplan is signalled; the exit status."""
    for line in how_to_call(doc, key_env):
        click.echo(line)
    code = engine.wait()
    if engine.signalled is not None:
        raise interrupted(engine.signalled)
    from qwenplan.launch.diagnose import diagnose

    d = diagnose(list(engine.lines))
    why = f": {d.message}" if d else ""
    click.echo(f"qwenplan: error: the engine exited with code {code} while serving{why} (log: {engine.log_path})",
               err=True)
    return 1
