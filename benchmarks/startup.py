"""4 and 6. Start-up time and memory of the app, each against the bare cost of torch, transformers and the weights."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import Result, table

CHILD = Path(__file__).with_name("child.py")


def child(mode: str) -> dict[str, float]:
    env = {**os.environ, "TOKENSTEP_BENCH_T0": repr(time.time())}
    out = subprocess.run([sys.executable, str(CHILD), mode], env=env, capture_output=True, text=True, check=True).stdout
    return {key: float(value) for key, value in (line.split() for line in out.splitlines() if line[:1].isupper())}


RUNS = 5  # start-up here varies by ±0.3 s from run to run: alternate the two, keep the best of each


def run() -> list[Result]:
    child("bare")  # converts the GGUF once if it is not cached yet, and warms the file cache
    bares, apps = [], []
    for _ in range(RUNS):
        bares.append(child("bare"))
        apps.append(child("app"))
    bare = min(bares, key=lambda values: values["LOADED"])
    app = min(apps, key=lambda values: values["FIRST_CANDIDATES"])
    overhead = app["FIRST_CANDIDATES"] - bare["LOADED"]
    table(
        "Start-up: seconds from process start",
        ["first frame", "first candidates", "bare import+load", "overhead"],
        [[app["FIRST_FRAME"], app["FIRST_CANDIDATES"], bare["LOADED"], overhead]],
    )
    baseline_mb = bare["IMPORTED_RSS_MB"] + bare["WEIGHTS_MB"]
    memory_overhead = app["PEAK_RSS_MB"] - baseline_mb
    table(
        "Memory: peak RSS, MB",
        ["app peak", "bare import", "weights", "overhead"],
        [[app["PEAK_RSS_MB"], bare["IMPORTED_RSS_MB"], bare["WEIGHTS_MB"], memory_overhead]],
    )
    return [
        Result(
            "startup_overhead_s",
            overhead,
            "<",
            0.5,
            measured=f"the app's start to its first candidates: {app['FIRST_CANDIDATES']:.2f} s",
            baseline=f"`import torch, transformers` and loading the weights: {bare['LOADED']:.2f} s",
        ),
        Result("first_frame_s", app["FIRST_FRAME"], "<", 1.0, measured=f"the app's first frame: {app['FIRST_FRAME']:.2f} s"),
        Result(
            "memory_overhead_mb",
            memory_overhead,
            "<",
            300,
            measured=f"the app's peak RSS: {app['PEAK_RSS_MB']:.0f} MB",
            baseline=f"import {bare['IMPORTED_RSS_MB']:.0f} MB + weights {bare['WEIGHTS_MB']:.0f} MB",
        ),
    ]
