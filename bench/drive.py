"""Run one `LoadSpec` against one running server with the chosen generator, and sample server CPU.

The server's CPU share over the measured window tells who the bottleneck was: a server near 1.0
core is saturated (the number is its capacity); a server well below 1.0 while the generator is near
1.0 means the generator capped the number.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench.loadgen import BodySource, LoadResult, LoadSpec, run_python
from bench.servers import ServerProcess
from bench.wrk import run_wrk, wrk_path

DRIVERS = ("auto", "wrk", "python")


@dataclass(frozen=True)
class Settings:
    seconds: float = 5.0
    connections: int = 32
    warmup: float = 1.0
    driver: str = "auto"  # auto: wrk when on PATH, else the Python generator

    def uses_wrk(self) -> bool:
        return self.driver == "wrk" or (self.driver == "auto" and wrk_path() is not None)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            seconds=float(os.environ.get("BENCH_SECONDS", "5")),
            connections=int(os.environ.get("BENCH_CONNECTIONS", "32")),
            warmup=float(os.environ.get("BENCH_WARMUP", "1")),
            driver=os.environ.get("BENCH_DRIVER", "auto"),
        )


def spec_for(
    settings: Settings, port: int, path: str, *, method: str = "GET", body: BodySource = None,
    authorization: str = "",
) -> LoadSpec:
    return LoadSpec(
        port=port,
        path=path,
        method=method,
        body=body,
        authorization=authorization,
        connections=settings.connections,
        seconds=settings.seconds,
        warmup=settings.warmup,
    )


def drive(server: ServerProcess, spec: LoadSpec, settings: Settings) -> LoadResult:
    samples: dict[str, tuple[float, float]] = {}

    def on_phase(phase: str) -> None:
        samples[phase] = (time.perf_counter(), server.cpu_seconds())

    run = run_wrk if settings.uses_wrk() else run_python
    result = run(spec, on_phase=on_phase)
    if "start" in samples and "end" in samples:
        (t0, cpu0), (t1, cpu1) = samples["start"], samples["end"]
        if t1 > t0:
            result.server_cpu = (cpu1 - cpu0) / (t1 - t0)
    return result
