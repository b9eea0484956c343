"""Start-up time of a bundle with and without the verification cache (benchmarks/results/startup-verify/report.md).

    python benchmarks/results/startup-verify/measure.py BUNDLE [--repeats 5] [--json out.json]

Each measurement is a fresh Python process that imports the runtime, then times one call:
``Bundle.open`` or ``Pipeline.from_bundle`` (ONNX Runtime, CPU). Cases:

- before: the bundle reader as it was before the cache (runtime/bundle.py at commit 98ebab7),
  which hashes every file on every open; for Pipeline.from_bundle, the cache turned off
  (``MNER_CACHE_DIR=`` empty), which runs the same hashing loop;
- first start: the cache empty, so every file is hashed and then remembered;
- later start: the cache warm (what every start after the first one does);
- no verify: ``verify=False`` (``--no-verify``), nothing hashed.

The bundle's files are in the OS page cache throughout (they were just read), so hashing is
measured at memory speed, not disk speed: a start after a reboot reads the files from disk
too, which adds to "before" and "first start" and mostly not to "later start" (ONNX Runtime
still reads the graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BEFORE_COMMIT = "98ebab7"  # the last commit whose bundle reader hashed every file on every open

CHILD = r"""
import importlib.util, json, sys, time
kind, bundle, how = sys.argv[1], sys.argv[2], sys.argv[3]
if how == "before":
    spec = importlib.util.spec_from_file_location("old_bundle", sys.argv[4])
    module = sys.modules["old_bundle"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    open_bundle = lambda: module.Bundle.open(bundle)
else:
    from mner.runtime.bundle import Bundle
    open_bundle = lambda: Bundle.open(bundle, verify=how != "no-verify")
from mner.runtime.pipeline import Pipeline  # imported before timing: the imports are not what changed
started = time.perf_counter()
if kind == "bundle":
    open_bundle()
else:
    Pipeline.from_bundle(bundle, backend="ort", verify=how != "no-verify").close()
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def run_child(kind: str, bundle: Path, how: str, env: dict[str, str], old_reader: Path) -> float:
    child = subprocess.run([sys.executable, "-c", CHILD, kind, str(bundle), how, str(old_reader)], env=env,
                           capture_output=True, text=True)  # fmt: skip
    if child.returncode != 0:
        raise SystemExit(f"{kind} {how}: exit {child.returncode}\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mner-startup-"))
    old_reader = scratch / "old_bundle.py"
    old_reader.write_text(subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:runtime/bundle.py"],
                                         capture_output=True, text=True, check=True).stdout)  # fmt: skip
    cache = scratch / "cache"
    cached = {**os.environ, "MNER_CACHE_DIR": str(cache)}
    off = {**os.environ, "MNER_CACHE_DIR": ""}
    size = sum(p.stat().st_size for p in args.bundle.rglob("*") if p.is_file())
    results: dict[str, dict[str, list[float]]] = {"bundle": {}, "pipeline": {}}
    try:
        run_child("bundle", args.bundle, "no-verify", off, old_reader)  # read every file once: page cache warm
        for kind in ("bundle", "pipeline"):
            times = results[kind]
            for _ in range(args.repeats):
                if kind == "bundle":
                    times.setdefault("before", []).append(run_child(kind, args.bundle, "before", off, old_reader))
                else:
                    times.setdefault("before", []).append(run_child(kind, args.bundle, "verify", off, old_reader))
                shutil.rmtree(cache, ignore_errors=True)
                times.setdefault("first start", []).append(run_child(kind, args.bundle, "verify", cached, old_reader))
                times.setdefault("later start", []).append(run_child(kind, args.bundle, "verify", cached, old_reader))
                times.setdefault("no verify", []).append(run_child(kind, args.bundle, "no-verify", cached, old_reader))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {"bundle_bytes": size, "repeats": args.repeats, "load_average": os.getloadavg(),
               "seconds": results}  # fmt: skip
    print(f"bundle: {size / 2**20:.0f} MiB; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for kind, label in (("bundle", "Bundle.open"), ("pipeline", "Pipeline.from_bundle (ort, cpu)")):
        for how, values in results[kind].items():
            print(f"{label:34s} {how:12s} median {statistics.median(values):6.3f} s  "
                  f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
