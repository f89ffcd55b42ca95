"""CPU time (user + system) of qwenplan commands, the median of N runs, beside a bare
`python -c pass` measured in the same run (the box may be shared and busy).

    python tools/startup_time.py [N]      # run it twice first: the second run has .pyc cached
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "plan --json": ["-m", "qwenplan.launch.cli", "plan", "--json"],
    "explain": ["-m", "qwenplan.launch.cli", "explain"],
    "plan --json --gpu H100": ["-m", "qwenplan.launch.cli", "plan", "--json", "--gpu", "H100"],
    "explain --gpu 4090": ["-m", "qwenplan.launch.cli", "explain", "--gpu", "4090"],
    "explain --gpu H100": ["-m", "qwenplan.launch.cli", "explain", "--gpu", "H100"],
    "plan --json --gpu H100 --gpus 16": ["-m", "qwenplan.launch.cli", "plan", "--json", "--gpu", "H100", "--gpus", "16"],
    "plan --json --gpu H100 --gpus 16 --nodes 4": ["-m", "qwenplan.launch.cli", "plan", "--json", "--gpu", "H100",
                                                   "--gpus", "16", "--nodes", "4"],
}


def cpu_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for name, argv in COMMANDS.items():
        print(f"{name:44} {cpu_ms(argv, n):6.0f} ms")
