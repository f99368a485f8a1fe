"""End-of-run tables: measures printed with the precision their size needs (issue 19)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin

from geounet.cli import main
from geounet.cli.summary import significant


@pytest.mark.parametrize("value", [0.0249, 2.5e-7, 0.5, 7.0, 12.345, 999.96, 123_456.7, -0.0031])
def test_significant_keeps_three_digits_and_never_rounds_to_zero(value):
    text = significant(3)(value)
    shown = float(text.replace(",", ""))
    assert shown != 0 and math.copysign(1, shown) == math.copysign(1, value)
    assert shown == pytest.approx(value, rel=5e-3)            # 3 significant digits
    digits = text.replace(",", "").replace(".", "").lstrip("-0")
    assert len(digits) >= 3 or abs(value) >= 100


def test_significant_of_nothing():
    fmt = significant(3)
    assert fmt(0) == "0" and fmt(0.0) == "0"
    assert fmt(None) == fmt(math.nan) == "-"


def test_vectorize_table_shows_a_small_area(make_raster):
    # 1 mm pixels: 25 px of crack are 2.5e-5 m^2, which one decimal printed as 0.0.
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 10:15, 10:15] = 1
    path = make_raster(mask, transform=from_origin(500000.0, 5000000.0, 0.001, 0.001))
    result = CliRunner().invoke(main, ["vectorize", str(path), "-o",
                                       str(path.with_suffix(".gpkg"))])
    assert result.exit_code == 0, result.output
    lines = [line.split("\r")[-1] for line in result.stderr.splitlines()]  # after progress
    at = next(i for i, line in enumerate(lines) if "area m2" in line)
    header, row = lines[at], lines[at + 2]
    area = row.split()[header.split().index("area")]
    assert float(area) == pytest.approx(25e-6, rel=5e-3)
