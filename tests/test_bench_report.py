"""bench/_report.py: the generated blocks of BENCHMARKS.md (`make bench` writes two, the peers
table and bench/figures.py's) and the "met" column of their figures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _report import Figure, read_json, table, write_block, write_json  # noqa: E402


def test_a_block_is_replaced_in_place_and_the_rest_of_the_file_kept(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written\n")
    write_block(path, "peers.py", "peers, first run\n")
    write_block(path, "figures.py", "figures, first run")
    path.write_text(path.read_text() + "\nwritten by hand after the blocks\n")

    write_block(path, "peers.py", "peers, second run")

    assert path.read_text() == (
        "# Benchmarks\n\nhand-written\n\n"
        "<!-- bench/peers.py: start -->\npeers, second run\n<!-- bench/peers.py: end -->\n\n"
        "<!-- bench/figures.py: start -->\nfigures, first run\n<!-- bench/figures.py: end -->\n"
        "\nwritten by hand after the blocks\n"
    )


def test_a_figure_meets_its_target_by_the_ratio_of_its_median(tmp_path):
    batching = Figure("batching on", [4.0, 6.0, 5.5], "req/s", "batching off (same run)", 1.0, ">= 5")
    cold_start = Figure("cold start", [1.4, 1.7, 1.6], "s", "target 1.5 s", 1.5, "<= 1")
    no_target = Figure("batching off", [1.0, 1.2, 0.9], "req/s")
    assert (batching.ratio, batching.met) == (5.5, True)
    assert cold_start.met is False  # median 1.6 s
    assert (no_target.ratio, no_target.met) == (None, None)

    write_json(tmp_path / "figures.json", [batching, cold_start, no_target], ["a note"])
    figures, notes = read_json(tmp_path / "figures.json")
    assert (figures, notes) == ([batching, cold_start, no_target], ["a note"])
    rows = table(figures).splitlines()[2:]
    assert rows[0] == "| batching on | 5.5 req/s | 4, 6, 5.5 | batching off (same run) | 5.50 | >= 5 | yes |"
    assert rows[1].endswith("| 1.07 | <= 1 | **no** |")
    assert rows[2] == "| batching off | 1 req/s | 1, 1.2, 0.9 |  | - |  |  |"
