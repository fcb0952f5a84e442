"""The formula generator: deterministic, covers the constructs of real papers, real-like lengths, real mixing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from texocr.data.formulas import (
    CONSTRUCTS,
    REAL_LENGTH_HIST,
    FormulaGenerator,
    FormulaPool,
    read_formulas,
)
from texocr.errors import TexocrError
from texocr.latex import normalize


@pytest.fixture(scope="module")
def formulas() -> list[str]:
    g = FormulaGenerator(seed=3)
    return [g.formula(i) for i in range(1500)]


def test_deterministic_per_seed_and_index() -> None:
    a, b, c = FormulaGenerator(5), FormulaGenerator(5), FormulaGenerator(6)
    assert [a.formula(i) for i in range(50)] == [b.formula(i) for i in range(50)]
    assert b.formula(17) == a.formula(17)  # index alone decides, whatever was generated before
    assert sum(a.formula(i) != c.formula(i) for i in range(50)) > 45


def test_same_formula_in_another_process() -> None:
    code = "from texocr.data.formulas import FormulaGenerator; print(FormulaGenerator(9).formula(123))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == FormulaGenerator(9).formula(123)


def test_covers_constructs(formulas: list[str]) -> None:
    missing = [name for name, pat in CONSTRUCTS.items() if not any(re.search(pat, f) for f in formulas)]
    assert missing == []
    envs = sum("\\begin{" in f for f in formulas) / len(formulas)
    assert 0.04 < envs < 0.25


def test_lengths_like_real_data(formulas: list[str]) -> None:
    lengths = sorted(len(normalize(f).split()) for f in formulas)
    median = lengths[len(lengths) // 2]
    # real im2latex validation: median 52 tokens, 10th percentile 27, 90th 97
    assert 35 <= median <= 70
    assert lengths[len(lengths) // 10] >= 12
    assert lengths[9 * len(lengths) // 10] <= 140
    assert sum(REAL_LENGTH_HIST) == 8475


def test_balanced_and_normalizable(formulas: list[str]) -> None:
    from texocr.data.render import check_formula

    for f in formulas[:300]:
        assert check_formula(f) is None, f  # balanced braces and environments, nothing forbidden
        assert normalize(f), f


# Rarer tokens of the real TRAIN formulas (im2latex spellings): TRAIN has each in at least ~0.2 % of its
# formulas, so 3,000 generated formulas must write each a few times, and none wildly often.
RARE_TOKENS = [
    "\\operatorname*", "!", "\\hspace", "\\mid", "\\big", "\\Big", "\\bigg", "\\Bigg", "\\perp",
    "\\displaystyle", "\\textstyle", "\\stackrel", "\\forall", "\\not", "\\imath", "\\mathit", "--",
    "\\triangle", "'", "\\wp", "\\parallel", "\\bullet", "\\bot",
]


@pytest.fixture(scope="module")
def many() -> list[str]:
    g = FormulaGenerator(seed=11)
    return [g.formula(i) for i in range(3000)]


def test_writes_rare_real_tokens(many: list[str]) -> None:
    tokens = [set(normalize(f, "light").split()) for f in many]  # as written (standard makes `\operatorname* { l i m }` `\lim`)
    share = {t: sum(t in ts for ts in tokens) / len(many) for t in RARE_TOKENS}
    assert [t for t, s in share.items() if s * len(many) < 3] == []  # every one is written
    assert [t for t, s in share.items() if s > 0.05] == []  # at realistic (small) rates
    # as real formulas write them: the `\big` family mostly bare, sometimes as `\bigl .. \bigr` pairs
    assert any("\\Big (" in f or "\\Big [" in f for f in many) and any("\\Bigl" in f for f in many)
    assert any(re.search(r"\\operatorname\* \{ l i m \} _ \{", normalize(f, "light")) for f in many)
    assert any(re.search(r"\\frac \{ [^{}]+ \} \{ (\w|\( [^{}]+ \)) ! \}", normalize(f)) for f in many)
    assert any(re.search(r"\\stackrel \{ [^{}]+ \} \{ [^{}]+ \}", f) for f in many)
    assert any(re.search(r", \\hspace\{[0-9.]+(cm|mm|pt|em)\}", f) for f in many)


def test_rare_constructs_are_valid_latex(many: list[str]) -> None:
    from texocr.data.render import check_formula
    from texocr.latex import validate

    rare = [f for f in many if set(normalize(f, "light").split()) & set(RARE_TOKENS)]
    assert len(rare) > 300
    for f in rare:
        assert check_formula(f) is None, f
        assert validate(f) == [], f  # balanced, \left/\right and scripts well-formed, every command known


def test_read_formulas_jsonl_and_lines(tmp_path) -> None:
    j = tmp_path / "labels.jsonl"
    j.write_text(json.dumps({"latex": "a + b", "image": "x.png"}) + "\n\n" + json.dumps({"latex": "c"}) + "\n")
    assert read_formulas(j) == ["a + b", "c"]
    t = tmp_path / "f.txt"
    t.write_text("x^2\n\n\\frac{1}{2}\n")
    assert read_formulas(t) == ["x^2", "\\frac{1}{2}"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(TexocrError, match="bad.jsonl:1"):
        read_formulas(bad)
    with pytest.raises(TexocrError, match="cannot read"):
        read_formulas(tmp_path / "missing.txt")


def test_pool_mixes_real_at_ratio() -> None:
    real = [f"r_{{{i}}}" for i in range(10)]
    pool = FormulaPool(seed=1, real=real, real_ratio=0.3)
    origins = [pool.formula(i)[1] for i in range(2000)]
    share = origins.count("real") / len(origins)
    assert 0.25 < share < 0.35
    assert all(pool.formula(i)[0] in real for i in range(200) if pool.formula(i)[1] == "real")
    assert FormulaPool(seed=1, real=real, real_ratio=0.3).formula(77) == pool.formula(77)
    assert {FormulaPool(seed=1).formula(i)[1] for i in range(50)} == {"generated"}
    with pytest.raises(TexocrError):
        FormulaPool(real=real, real_ratio=1.5)
