"""The ablation: what each remaining bespoke piece of the request path buys, measured by the gateway benchmark.

    .venv/bin/python benchmarks/ablation.py            # baseline and each piece swapped, ~10 minutes
    .venv/bin/python benchmarks/ablation.py --quick    # a smoke run of the harness

Runs `benchmarks/gateway.py` (scenarios 1 and 2: one client, and 16 clients, the provider answering at once)
once as the code is and once per piece of `benchmarks/ablate.py` swapped for its idiomatic counterpart, and
writes `benchmarks/results/ablation.md`: per piece its lines, the gateway's CPU per request at 16 clients and the
overhead p50 at one client, with and without it. A piece stays only if it buys at least 0.2 ms of CPU per
request, or is needed for a bar. Also the line counts of the request path's modules before (BEFORE_REVISION,
the hand-made runtime) and now.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEFORE_REVISION = "560db8a"  # the last commit of the hand-made runtime

# piece -> (what it is, where it lives, how many lines: a whole file, or the lines between two markers)
PIECES = {
    "lean_path": ("The lean ASGI path of the task endpoints", "runtime/asgi.py", None),
    "batches": ("Usage rows of concurrent calls in one transaction", "runtime/batches.py", None),
    "gc_tuning": (
        "The collector frozen after start-up, young threshold 20,000",
        "aditus/asgi.py",
        ("def _load_what_lives_as_long_as_the_process", "gc.set_threshold(YOUNG_GENERATION_THRESHOLD)"),
    ),
    "aiohttp_transport": (
        "The SDKs' aiohttp transport (with httpx2's error mapping)",
        "providers/clients/pool.py",
        ("def _transport_error", "def _aiohttp_session"),
    ),
}

# The request path: the runtime floor and the prepare / reserve / record workflows.
REQUEST_PATH_BEFORE = [
    "aditus/db.py",
    "aditus/task_handler.py",
    "aditus/aio.py",
    "tasks/services.py",
    "usage/services.py",
]
REQUEST_PATH_NOW = [
    "runtime/__init__.py",
    "runtime/asgi.py",
    "runtime/db.py",
    "runtime/threads.py",
    "runtime/batches.py",
    "runtime/aio.py",
    "tasks/services.py",
    "usage/services.py",
    "usage/windows.py",
]


def lines_of(path: str, markers: tuple[str, str] | None = None, revision: str | None = None) -> int:
    if revision is None:
        text = (ROOT / path).read_text()
    else:
        git = shutil.which("git") or "git"
        text = subprocess.run(  # noqa: S603 - argv built here, no shell
            [git, "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    lines = text.splitlines()
    if markers is None:
        return len(lines)
    start = next(number for number, line in enumerate(lines) if markers[0] in line)
    end = next(number for number, line in enumerate(lines) if markers[1] in line and number >= start)
    return end - start + 1


def verdict(buys: float) -> str:
    return "stays (buys >= 0.2 ms)" if buys >= 0.2 else "under 0.2 ms: goes, unless a bar needs it"


def run(piece: str, extra: list[str], workdir: Path) -> dict:
    output = workdir / f"ablation-{piece or 'baseline'}.md"
    argv = [sys.executable, str(ROOT / "benchmarks" / "gateway.py"), "--output", str(output), *extra]
    if piece:
        argv += ["--ablate", piece]
    else:
        argv += ["--overhead-only"]  # scenarios 1 and 2, as the ablated runs
    print(f"[ablation] {piece or 'baseline'}: {' '.join(argv)}", file=sys.stderr, flush=True)
    subprocess.run(argv, cwd=ROOT, check=True)  # noqa: S603 - argv built here, no shell
    raw = json.loads(output.with_suffix(".json").read_text())

    def median(samples: list[dict], target: str, key: str) -> float:
        return statistics.median(sample[key] for sample in samples if sample["target"] == target)

    one, many = raw["one_client"], raw["sixteen_clients"]
    cpu = statistics.median(
        sample["gateway_cpu_s"] * 1000 / sample["requests"] for sample in many if sample["target"] == "aditus"
    )
    return {
        "cpu_ms": cpu,
        "overhead_p50_ms": median(one, "aditus", "p50_ms") - median(one, "direct", "p50_ms"),
        "direct_rps_one": statistics.median(
            sample["requests"] / sample["duration_s"] for sample in one if sample["target"] == "direct"
        ),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Short runs (numbers are rough).")
    parser.add_argument("--pieces", default=",".join(PIECES), help="Comma-separated pieces (default: all).")
    args = parser.parse_args(argv)
    extra = ["--quick"] if args.quick else ["--duration", "8s", "--rounds", "2", "--warmup", "2s"]
    workdir = RESULTS / "ablation-runs"
    workdir.mkdir(parents=True, exist_ok=True)
    baseline = run("", extra, workdir)
    rows = []
    for piece in [part for part in args.pieces.split(",") if part]:
        what, path, markers = PIECES[piece]
        without = run(piece, extra, workdir)
        buys = without["cpu_ms"] - baseline["cpu_ms"]
        rows.append(
            f"| {piece} | {what} (`{path}`) | {lines_of(path, markers)} | {baseline['cpu_ms']:.2f} | "
            f"{without['cpu_ms']:.2f} | {buys:+.2f} | {baseline['overhead_p50_ms']:.2f} | "
            f"{without['overhead_p50_ms']:.2f} | {verdict(buys)} |"
        )
    before = {path: lines_of(path, revision=BEFORE_REVISION) for path in REQUEST_PATH_BEFORE}
    now = {path: lines_of(path) for path in REQUEST_PATH_NOW}
    report = [
        "# Ablation: what each bespoke piece of the request path buys",
        "",
        f"`.venv/bin/python benchmarks/ablation.py{' --quick' if args.quick else ''}`: `benchmarks/gateway.py`, "
        "scenarios 1 and 2, once as the code is and once per piece swapped for its idiomatic counterpart "
        "(`benchmarks/ablate.py`). Same machine, same run; direct at one client: "
        f"{baseline['direct_rps_one']:.0f} req/s.",
        "",
        "| Piece | What | Lines | CPU ms/req with (16 clients) | without | buys | overhead p50 ms with (1 client) "
        "| without | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Lines of the request path (runtime floor and the prepare / reserve / record workflows)",
        "",
        f"| Module before ({BEFORE_REVISION}) | Lines | Module now | Lines |",
        "|---|---|---|---|",
    ]
    for position in range(max(len(before), len(now))):
        left = list(before.items())[position] if position < len(before) else ("", "")
        right = list(now.items())[position] if position < len(now) else ("", "")
        report.append(f"| {left[0]} | {left[1]} | {right[0]} | {right[1]} |")
    report.append(f"| **total** | **{sum(before.values())}** | **total** | **{sum(now.values())}** |")
    (RESULTS / "ablation.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
