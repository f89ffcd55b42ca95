#!/usr/bin/env python3
"""Plant realistic one-line bugs, one at a time, and check that the tests notice each.

tools/mutants.yaml lists the mutations: the file, the original line's text (matched after
stripping indentation, so the list survives edits that move lines; it must occur exactly once),
the mutated text, and the test files to run. A line that no longer exists is reported STALE,
never skipped silently. Each mutation is applied, only its tests run (pytest -x: the first
failure kills it), and the file is restored, also on Ctrl-C or SIGTERM; a copy of the original
sits beside it as FILE.mutant-orig while mutated, and a later run restores any it finds.

    .venv/bin/python tools/mutants.py            # every mutant (about 20-30 min on 2 busy cores)
    .venv/bin/python tools/mutants.py --check    # only: does every line still exist?
    .venv/bin/python tools/mutants.py -k decide  # mutants whose file or id contains "decide"

The tests must pass on the unmutated code, or every mutant looks killed: a test that fails
already is left out with --deselect tests/FILE.py::NAME (repeatable), and the run says so.

Entries may say `equivalent: why` (the code behaves the same; not counted) or `gap: why` (a
known hole in the tests, counted as a survivor). Exit 1 when a mutant survives unexplained or
is stale, or the score is under the target.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).with_name("mutants.yaml")
TARGET = 0.85


LOCK = ROOT / ".mutants.lock"


def take_lock() -> bool:
    """One run at a time: another run's mutated file must not be 'restored' under it."""
    try:
        fd = os.open(LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            pid = int(LOCK.read_text() or 0)
            os.kill(pid, 0)
            return False                  # that run is alive
        except (ValueError, ProcessLookupError):
            LOCK.unlink()                 # a run that died: its leftovers are ours to restore
            return take_lock()
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def restore_leftovers() -> None:
    for orig in ROOT.rglob("*.mutant-orig"):
        if ".venv" in orig.parts:
            continue
        target = orig.with_name(orig.name[: -len(".mutant-orig")])
        target.write_bytes(orig.read_bytes())
        orig.unlink()
        print(f"restored {target.relative_to(ROOT)} from an interrupted run")


def locate(m: dict) -> tuple[Path, str, int | None, str]:
    """(path, text, line index or None, problem)."""
    path = ROOT / m["file"]
    if not path.exists():
        return path, "", None, "file missing"
    text = path.read_text()
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.strip() == m["find"].strip()]
    if len(hits) != 1:
        return path, text, None, "not found" if not hits else f"found {len(hits)} times"
    return path, text, hits[0], ""


def mutate(text: str, index: int, replacement: str) -> str:
    lines = text.split("\n")
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip())]
    lines[index] = indent + replacement.strip()
    return "\n".join(lines)


class Interrupted(Exception):
    pass


def _raise(*_):
    raise Interrupted()


def run_one(m: dict, python: str, timeout: int, deselect: list[str] = ()) -> tuple[str, float]:
    path, text, index, problem = locate(m)
    if index is None:
        return f"STALE ({problem})", 0.0
    backup = path.with_name(path.name + ".mutant-orig")
    backup.write_text(text)
    t0 = time.monotonic()
    try:
        path.write_text(mutate(text, index, m["replace"]))
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m["tests"]]
        cmd += [a for d in deselect for a in ("--deselect", d)]
        try:
            r = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            status = "survived" if r.returncode == 0 else "killed"
            if r.returncode not in (0, 1):       # 2+: interrupted, internal error, no tests: say so
                status = f"killed (pytest exit {r.returncode})"
            failed = [line.split()[1] for line in r.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
            if failed:
                status += f" by {failed[0].split(' - ')[0]}"
        except subprocess.TimeoutExpired:
            status = "killed (timeout)"
    finally:
        path.write_text(text)
        backup.unlink()
    return status, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that every mutation's line exists")
    ap.add_argument("-k", default="", help="only mutants whose file or id contains this (comma: any of)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mutant (a hang counts as killed)")
    ap.add_argument("--deselect", action="append", default=[], metavar="TEST",
                    help="a test that already fails without mutation (repeatable)")
    args = ap.parse_args()
    if not take_lock():
        print(f"another mutation run is going ({LOCK}); run one at a time", file=sys.stderr)
        return 2
    try:
        return run(args)
    finally:
        LOCK.unlink(missing_ok=True)


def _check(mutants: list[dict]) -> int:
    """--check: report the mutations that no longer apply to the code, without running tests."""
    stale = [(m["id"], locate(m)[3]) for m in mutants if locate(m)[2] is None]
    for mid, why in stale:
        print(f"STALE {mid}: {why}")
    print(f"{len(mutants) - len(stale)} of {len(mutants)} mutations apply")
    return 1 if stale else 0


def _survivor_note(m: dict, status: str) -> str:
    """Why a survivor is acceptable (equivalent, known gap), or that nothing explains it."""
    if status != "survived":
        return ""
    return f"  equivalent: {m['equivalent']}" if m.get("equivalent") else \
           f"  known gap: {m['gap']}" if m.get("gap") else "  UNEXPLAINED"


def _is_unexplained(m: dict, status: str) -> bool:
    """A stale mutation, or a survivor with neither an equivalence nor a known gap written down."""
    if status == "survived" and not (m.get("equivalent") or m.get("gap")):
        return True
    return status.startswith("STALE")


def _run_all(mutants: list[dict], args, per_file: dict[str, list[str]], unexplained: list[str]) -> None:
    """Run each mutant's tests, print its line, and tally its outcome per module."""
    for n, m in enumerate(mutants, 1):
        status, secs = run_one(m, args.python, args.timeout, args.deselect)
        note = _survivor_note(m, status)
        if _is_unexplained(m, status):
            unexplained.append(m["id"])
        kind = "equivalent" if status == "survived" and m.get("equivalent") else status.split()[0].lower()
        status, _, by = status.partition(" by ")
        per_file[m["file"]].append(kind)
        print(f"[{n:>3}/{len(mutants)}] {status:<24} {secs:6.1f}s  {m['file']}: {m['id']}{note}"
              + (f"\n          by {by}" if by else ""), flush=True)


def _summary(per_file: dict[str, list[str]], unexplained: list[str]) -> int:
    """The per-module table and the score against TARGET; 0 only if it is met and all is explained."""
    print("\nmodule                        killed / counted  (equivalent, stale)")
    total_k = total_c = 0
    for f in sorted(per_file):
        kinds = per_file[f]
        killed = sum(k == "killed" for k in kinds)
        counted = sum(k in ("killed", "survived") for k in kinds)
        total_k += killed
        total_c += counted
        print(f"{f:<30} {killed:>3} / {counted:<3} {killed / counted if counted else 1:>6.0%}   "
              f"({kinds.count('equivalent')}, {kinds.count('stale')})")
    score = total_k / total_c if total_c else 1.0
    print(f"{'all':<30} {total_k:>3} / {total_c:<3} {score:>6.0%}   target {TARGET:.0%}")
    if unexplained:
        print("unexplained survivors or stale mutations: " + ", ".join(unexplained))
    return 0 if score >= TARGET and not unexplained else 1


def run(args) -> int:
    restore_leftovers()
    wanted = args.k.split(",")
    mutants = [m for m in yaml.safe_load(DATA.read_text())["mutants"]
               if any(k in m["file"] or k in m["id"] for k in wanted)]
    ids = [m["id"] for m in mutants]
    assert len(set(ids)) == len(ids), "mutant ids must be unique"
    if args.check:
        return _check(mutants)
    signal.signal(signal.SIGTERM, _raise)
    for d in args.deselect:
        print(f"left out (fails without mutation): {d}")
    per_file: dict[str, list[str]] = defaultdict(list)
    unexplained: list[str] = []
    try:
        _run_all(mutants, args, per_file, unexplained)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: the file under mutation was restored", file=sys.stderr)
        return 130
    return _summary(per_file, unexplained)


if __name__ == "__main__":
    sys.exit(main())
