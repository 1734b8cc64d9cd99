"""The models page's table of what quality, input_fidelity and size=auto do per family agrees with the families."""

from __future__ import annotations

import re
from pathlib import Path

from imgedit.model.families import FAMILIES
from imgedit.model.families.flux2 import DISTILLED_STEPS
from imgedit.model.spec import QUALITY_STEP_SHARE

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
LEVELS = ("low", "medium", "high", "xhigh", "max")


def steps(default: int) -> str:
    return " / ".join(str(min(200, max(1, round(default * QUALITY_STEP_SHARE[level])))) for level in LEVELS)


def rows() -> dict[str, list[str]]:
    section = PAGE[PAGE.index("| Family | `quality` steps") :].split("\n\n", 1)[0]
    table = {}
    for line in section.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0].strip("`")] = cells[1:]
    return table


def test_every_family_has_a_row_with_its_steps_per_quality():
    table = rows()
    assert set(table) == {family.name for family in FAMILIES}
    for family in FAMILIES:
        quality = table[family.name][0]
        assert steps(family.defaults.steps) in quality, family.name
    assert f"distilled: {steps(DISTILLED_STEPS)}" in table["flux2-klein"][0]


def test_input_fidelity_is_described_where_a_family_has_a_knob_and_only_there():
    table = rows()
    for family in FAMILIES:
        described = table[family.name][1]
        if family.fidelity:
            levels = re.findall(r"(high|low) ([0-9.]+)", described)
            values = {
                level: next(value for value in vars(family.fidelity[level]).values() if value is not None)
                for level in ("high", "low")
            }
            assert {level: float(value) for level, value in levels} == values, family.name
        else:
            assert described == "no knob: ignored", family.name
