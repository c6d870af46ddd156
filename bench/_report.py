"""What a benchmark reports and where it goes: figures with their baseline or target (the one
place a ratio and "target met" are worked out), their table, their JSON (`--json PATH` of the
scripts, read by bench/figures.py), and the one way a generated block is written into
BENCHMARKS.md (between `<!-- bench/NAME: start -->` and `<!-- bench/NAME: end -->`)."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path


@dataclasses.dataclass
class Figure:
    """One measured figure: its value in each run or rep, and what it is held against.

    `reference`: the baseline (measured in the same run) or the target, in the figure's unit;
    ratio = median / reference. `goal`: what the ratio must be for the target to be met,
    e.g. ">= 5" (batching on vs off) or "<= 1" (a time under its target); "" when none."""

    label: str
    values: list[float]
    unit: str
    against: str = ""
    reference: float | None = None
    goal: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        if not self.reference:
            return None
        return self.median / self.reference

    @property
    def met(self) -> bool | None:
        if not self.goal or self.ratio is None:
            return None
        sign, _, bound = self.goal.partition(" ")
        if sign == ">=":
            return self.ratio >= float(bound)
        if sign == "<=":
            return self.ratio <= float(bound)
        raise ValueError(f"goal {self.goal!r}: want '>= N' or '<= N'")


def fmt(value: float) -> str:
    if math.isinf(value):
        return "never"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    """Markdown: figure, median, each run, against what, ratio, target, met."""
    lines = [
        "| figure | median | each run | against | ratio | target (ratio) | met |",
        "| --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    for f in figures:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        met = {None: "", True: "yes", False: "**no**"}[f.met]
        lines.append(
            f"| {f.label} | {fmt(f.median)} {f.unit} | {', '.join(fmt(v) for v in f.values)} | {f.against} "
            f"| {ratio} | {f.goal} | {met} |"
        )
    return "\n".join(lines)


def write_json(path: str | Path, figures: list[Figure], notes: list[str] = ()) -> None:
    Path(path).write_text(json.dumps(
        {"figures": [dataclasses.asdict(f) for f in figures], "notes": list(notes)}, indent=1
    ))


def read_json(path: str | Path) -> tuple[list[Figure], list[str]]:
    data = json.loads(Path(path).read_text())
    return [Figure(**f) for f in data["figures"]], data["notes"]


def write_block(path: Path, name: str, body: str) -> None:
    """Put `body` between the block's markers in `path`, replacing what was there (the rest of
    the file is left as it is); appended at the end the first time."""
    start, end = f"<!-- bench/{name}: start -->", f"<!-- bench/{name}: end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text()
    if start in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
