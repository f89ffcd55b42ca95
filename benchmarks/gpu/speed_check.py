"""Predicted vs measured speed for every logged run (the speed model as it is now)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from predict import runs  # noqa: E402

if __name__ == "__main__":
    t0 = time.perf_counter()
    for run in runs():
        p = run.predict()["predicted"]
        cells = []
        for c in ("c1", "c32", "c128"):
            meas, pred = run.load[c]["tok_per_s"], p["tokens_per_s"][c]
            tm, tp = run.load[c]["ttft_p50_s"], p["ttft_p50_s"][c]
            cells.append(f"{c} {meas:5.0f}/{pred:5.0f} ({(pred / meas - 1) * 100:+4.0f}%) ttft {tm:5.2f}/{tp:5.2f}")
        print(f"{run.name:29s}{'M' if run.mtp else ' '} " + " ".join(cells))
    print(f"{time.perf_counter() - t0:.2f}s")
