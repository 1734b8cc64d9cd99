"""bench/common.py: where results land, and the statistics the tables quote."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import common


def test_a_report_replaces_its_own_section_and_keeps_the_rest(tmp_path: Path) -> None:
    results = tmp_path / "benchmarks.md"
    results.write_text("# Benchmarks\n\nIntroduction.\n")
    common.report("first", "First", "| a |\n|---|\n| 1 |", results)
    common.report("second", "Second", "two", results)
    common.report("first", "First", "| a |\n|---|\n| 9 |", results)
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\nIntroduction.\n")
    assert text.count("<!-- bench:first -->") == 1 and "| 9 |" in text and "| 1 |" not in text
    assert text.index("<!-- bench:first -->") < text.index("<!-- bench:second -->")
    assert "```bash\n" in text  # the command that produced it


def test_without_a_file_a_report_only_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common.report("only", "Only", "body text", None)
    assert "body text" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_percentiles_interpolate() -> None:
    assert common.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert common.percentile(list(range(101)), 0.99) == 99


def test_photo_like_images_compress_like_photographs() -> None:
    """Noise keeps PNG from shrinking them to nothing: at least 1.5 bytes a pixel, as photographs take."""
    image = common.photo_like(256, 192)
    assert image.size == (256, 192) and image.mode == "RGB"
    assert len(common.png_bytes(image)) > 1.5 * 256 * 192
