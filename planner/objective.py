"""Choosing among candidates that fit, by predicted speed (planner/speed.py).

A goal with `objective: speed` (profiles/goals.yaml) takes, among the candidates that meet its
memory targets at the first context that fits, those within `quality_window` quality points of
the best, drops any slower than `max_tpot_ms` per token for a single request or below the floor
of profiles/speed.yaml, and keeps the one with the most generated tokens/s at the goal's
concurrency. Its sequence cap is then the knee: the smallest power of two (up to the goal's cap
and the DeltaNet state-block limit) within `knee` of the best predicted tokens/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import speed


@dataclass(frozen=True)
class Judged:
    """A candidate's predicted speed where the choice is made."""

    tokens_per_s: float      # at the goal's concurrency
    single: speed.Burst      # one request


class Predictor:
    """Predicted bursts of the candidates of one plan, each computed once."""

    def __init__(self, machine: speed.Machine):
        self.machine = machine
        self._memo: dict[tuple, speed.Burst] = {}

    def burst(self, cand, concurrency: int) -> speed.Burst:
        key = (cand.variant.id, cand.engine, cand.tp, cand.pp, cand.dp, cand.kv_dtype, cand.spec_tokens, cand.eager,
               cand.batched_tokens, cand.max_seqs, cand.expert_cache, concurrency)
        if key not in self._memo:
            self._memo[key] = speed.predict(cand, self.machine, concurrencies=(concurrency,))[concurrency]
        return self._memo[key]

    def judge(self, cand, concurrency: int) -> Judged:
        return Judged(self.burst(cand, concurrency).tokens_per_s, self.burst(cand, 1))

    def all_levels(self, cand, extra: int | None = None) -> dict[int, speed.Burst]:
        levels = sorted(set(speed.CONCURRENCIES) | ({extra} if extra else set()))
        return {c: self.burst(cand, c) for c in levels}


def quality(o) -> int:
    """The rank that `quality_window` compares: the checkpoint's, an fp8 KV cache one step lower (2)."""
    c = o.cand
    return c.variant.quality - (2 if c.kv_dtype == "fp8" else 0) - (0 if c.variant.verified else 2)


def below_floor(j: Judged) -> str | None:
    floor = speed.profile()["floor"]["min_tokens_per_s_single"]
    if j.single.tokens_per_s < floor:
        return f"predicted {j.single.tokens_per_s:.1f} tokens/s for one request, below the {floor:g} tokens/s floor"
    return None


def over_tpot(j: Judged, goal: dict) -> bool:
    bound = goal.get("max_tpot_ms")
    return bool(bound) and j.single.tpot_s * 1000 > bound


def pick(found: list, goal: dict, predictor: Predictor, fallback_key):
    """The fastest of `found` within the quality window, or None when all are below the floor."""
    conc = goal["concurrency"]
    hard = [o for o in found if o.cand.engine != "vllm-offload"] or found
    graphs = [o for o in hard if not o.cand.eager] or hard
    # A halved prefill chunk is there to make room (planner/decide.py); keep the engine's own
    # chunk wherever the same candidate fits with it.
    def same_but_chunk(o):
        c = o.cand
        return c.variant.id, c.engine, c.tp, c.pp, c.dp, c.kv_dtype, c.spec_tokens
    largest: dict[tuple, int] = {}
    for o in graphs:
        largest[same_but_chunk(o)] = max(largest.get(same_but_chunk(o), 0), o.cand.batched_tokens)
    graphs = [o for o in graphs if o.cand.batched_tokens == largest[same_but_chunk(o)]]
    best_q = max(quality(o) for o in graphs)
    window = goal.get("quality_window", 0)
    near = [o for o in graphs if quality(o) >= best_q - window]
    kept, slow = [], []
    for o in near:
        j = predictor.judge(o.cand, conc)
        if below_floor(j):
            continue
        if over_tpot(j, goal):
            slow.append(o)
        else:
            kept.append(o)
    # The goal's per-token bound picks among plans that meet it; when none does, the fastest
    # above the floor is still a plan (the plan's warnings say it is slow).
    kept = kept or slow
    if not kept:
        return None
    # each quality point given up must buy `speed_per_quality_point` more predicted tokens/s
    per_point = goal.get("speed_per_quality_point", 0.0)
    def score(o):
        return round(predictor.judge(o.cand, conc).tokens_per_s * (1 - per_point * (best_q - quality(o))), 1)
    return max(kept, key=lambda o: (score(o), fallback_key(o)))


def knee_caps(limit: int, cap: int) -> list[int]:
    """Sequence caps to try: powers of two from 16 up to min(cap, limit), and that bound itself."""
    top = max(1, min(cap, limit))
    caps = [c for c in (16, 32, 64, 128, 256, 512, 1024) if c < top]
    return caps + [top]
