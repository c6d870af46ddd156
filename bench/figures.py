"""The figures of BENCHMARKS.md besides the peers table, measured again in one run: `make bench`
runs this right after bench/peers.py, on the same machine (issue 14: "the async, cold-start and
batch figures there re-measured on the same run", and each target's ratio).

Each figure is one bench script run as it runs alone (the command is written next to its
table and reproduces it), with `--json` to hand its figures back; each has >= 3 runs or reps,
and its baseline (measured in the same run) or target. Run sizes are chosen to keep this part
near five minutes on 2 cores (see SIZES).

    .venv/bin/python bench/figures.py              # all, writes its block into BENCHMARKS.md
    .venv/bin/python bench/figures.py --quick      # small sizes, 1 run each, printed only
    .venv/bin/python bench/figures.py --only async,batching   # some of them, printed only

The block is written only when every script ran and succeeded (a partial or failed run is
printed, not written, so the block always holds one whole run).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import read_json, table, write_block  # noqa: E402
from _stack import ROOT, machine  # noqa: E402

# name -> (title, script, arguments of the full run, arguments of --quick)
SIZES: dict[str, tuple[str, str, list[str], list[str]]] = {
    "async": ("Async throughput", "async_throughput.py",
              ["--tasks", "5000", "--runs", "3"], ["--tasks", "400", "--runs", "1"]),
    "cold_start": ("Cold start, local runtime", "cold_start.py", ["--runs", "5"], ["--runs", "1"]),
    "batch": ("Batch throughput", "batch_throughput.py",
              ["--runs", "3"], ["--runs", "1", "--items", "500", "--identity-items", "5000"]),
    "batching": ("Adaptive request batching", "batching.py",
                 ["--reps", "3", "--seconds", "4", "--tasks", "800"],
                 ["--reps", "1", "--seconds", "1", "--tasks", "100"]),
    "tick": ("Controller tick over idle endpoints", "tick_cost.py",
             ["--endpoints", "200", "--ticks", "20", "--reps", "3"],
             ["--endpoints", "20", "--ticks", "5", "--reps", "1"]),
    "list": ("A page of endpoints", "list_endpoints.py",
             ["--endpoints", "1000", "--reps", "3", "--requests", "50"],
             ["--endpoints", "30", "--reps", "1", "--requests", "10"]),
    "slow": ("Many slow sync requests at once", "slow_concurrency.py",
             ["--concurrent", "500", "--reps", "3"], ["--concurrent", "40", "--reps", "1"]),
    "redis_memory": ("Redis after large sync requests", "big_payloads.py",
                     ["--memory", "300", "--reps", "3"], ["--memory", "20", "--reps", "1"]),
}
# What the full sizes leave out, said in the block.
SIZES_NOTE = (
    "async 5,000 tasks per run (the sections above used 10,000), batching 4 s per figure and 800 tasks "
    "for the replica alone, a page of endpoints 50 GETs per figure, Redis memory 300 sync requests of 1 MB "
    "per rep (the target names 1,000)"
)
SCRIPT_TIMEOUT_SECONDS = 600


def run_one(name: str, quick: bool) -> tuple[str, float, list[str]]:
    """Run one script; -> (its section of the block, seconds it took, the figures that missed
    their target)."""
    title, script, full, small = SIZES[name]
    command = [".venv/bin/python", f"bench/{script}", *(small if quick else full)]
    shown = shlex.join(command)
    print(f"== {name}: {shown}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        # The script's own table and progress go to our stderr: stdout is the block.
        process = subprocess.Popen([sys.executable, *command[1:], "--json", out.name], cwd=ROOT, stdout=sys.stderr)
        try:
            process.wait(SCRIPT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            # Ctrl-C, as a person would press it: the script stops the stacks it started (they
            # run in sessions of their own, so killing the script alone would leave them).
            process.send_signal(signal.SIGINT)
            process.wait(90)
            raise
        except KeyboardInterrupt:
            process.wait(90)  # it had the Ctrl-C too (same process group): let it stop its stacks
            raise
        took = time.monotonic() - started
        if process.returncode != 0:
            raise RuntimeError(f"{shown} exited {process.returncode} (its output is above)")
        figures, notes = read_json(out.name)
    lines = [f"### {title} (`bench/{script}`)", "", f"    {shown}", "", table(figures)]
    if notes:
        lines += [""] + [f"{note[0].upper()}{note[1:]}." for note in notes]
    return "\n".join(lines), took, [f.label for f in figures if f.met is False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run each: a sanity run, printed only")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(SIZES)} (printed only)")
    parser.add_argument("--write", default=str(ROOT / "BENCHMARKS.md"), help="'' to only print")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SIZES)
    unknown = [name for name in names if name not in SIZES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(SIZES)}")

    load_before = os.getloadavg()
    started = time.monotonic()
    sections, missed, failed = [], [], []
    for name in names:
        try:
            section, took, not_met = run_one(name, args.quick)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failed.append(name)
            section, took, not_met = f"### {SIZES[name][0]}\n\n**Failed**: {error}", 0.0, []
        sections.append(section)
        missed += not_met
        print(f"== {name}: {took:.0f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    head = [
        "## Same run as the peers: async, cold start, batch and the other targets (`bench/figures.py`)",
        "",
        "    make bench        # bench/peers.py --reps 3, then .venv/bin/python bench/figures.py",
        "",
        f"Written by the script on {time.strftime('%Y-%m-%d')}, after the peers table above in the same "
        f"`make bench`. Machine: {machine()}; load average (1 min) {load_before[0]:.1f} at the start, "
        f"{load_after[0]:.1f} at the end; {time.monotonic() - started:.0f} s in all. Each table is one run "
        "of the command above it (it reproduces the table alone): median and each run or rep; ratio = "
        "median / what the figure is held against (a baseline measured in the same run, or the target); "
        "\"met\" where issue 14 or an earlier issue gives a target. "
        + ("" if args.quick else f"Sizes kept small for `make bench`: {SIZES_NOTE}. ")
        + "The docker cold start needs a dockerd and is not part of it (`bench/cold_start.py --runtime docker`).",
        "",
        "Targets missed in this block: " + ("; ".join(missed) if missed else "none") + ".",
    ]
    block = "\n".join(head + [""] + ["\n\n".join(sections)])
    if args.quick:
        block = "QUICK RUN (small sizes, 1 run each): a sanity check, not a measurement.\n\n" + block
    print(block)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}; BENCHMARKS.md left as it was")
    if args.write and not args.quick and not args.only:
        write_block(Path(args.write), "figures.py", block)
        print(f"written into {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
