"""`texocr.rewards`: the reward parts on known pairs (identical, typeset-identical, visibly different, invalid),
their combination from `train.reward_parts`, and the render pool's cache and timeout. The render-based checks
need latex + dvipng and are skipped without them."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image, ImageDraw

from texocr.data.render import RenderResult, tex_available
from texocr.errors import TexocrError
from texocr.rewards import (
    RenderPool,
    RewardFunction,
    edit_part,
    ink_iou,
    ink_profile,
    length_part,
    parse_reward_parts,
    tokens,
    valid_part,
)

needs_tex = pytest.mark.skipif(not tex_available(), reason="latex/dvipng not installed")
ALL_PARTS = {"image": 1.0, "valid": 0.25, "edit": 0.5, "length": 0.25}


# ---------------------------------------------------------------- parts without rendering


def test_reward_parts_parse_and_refuse():
    assert parse_reward_parts(["image:1", "valid:0.25", "edit"]) == {"image": 1.0, "valid": 0.25, "edit": 1.0}
    for bad, message in [(["imgae:1"], "unknown part 'imgae'"), (["edit", "edit:2"], "given twice"),
                         (["edit:x"], "not a number"), (["edit:-1"], ">= 0"), (["edit:0"], "no part")]:
        with pytest.raises(TexocrError, match=message):
            parse_reward_parts(bad)


def test_text_parts():
    ref = tokens(r"\frac{a}{b}")
    assert edit_part(tokens(r"\frac { a } { b }"), ref) == 1.0  # normalized tokens: the same formula
    assert 0 < edit_part(tokens(r"\frac{a}{c}"), ref) < 1
    assert edit_part([], []) == 1.0
    assert length_part(ref, ref) == 0.0 and length_part(tokens("x"), ref) == 0.0  # only excess costs
    assert length_part(ref + ref, ref) == -1.0 and -1.0 < length_part(ref + ["x"], ref) < 0
    assert valid_part(r"\frac{a}{b}") == 1.0
    assert valid_part(r"\frac{a}{") == 0.0 and valid_part("") == 0.0 and valid_part(r"\notacommand x") == 0.0


def _drawn(text: str, size: tuple[int, int] = (120, 40), at: tuple[int, int] = (4, 10)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text(at, text, fill="black")
    return im


def test_ink_iou_crops_scales_and_grades():
    a = ink_profile(_drawn("a+b=c"))
    assert a is not None and a.shape[0] == 32
    assert ink_iou(a, a) == 1.0
    assert ink_iou(a, ink_profile(_drawn("a+b=c", size=(300, 90), at=(150, 40)))) == 1.0  # margins do not count
    big = _drawn("a+b=c").resize((240, 80), Image.Resampling.NEAREST)  # twice the size: a common height
    assert ink_iou(a, ink_profile(big)) > 0.8
    assert ink_iou(a, ink_profile(_drawn("x"))) < 0.5
    assert ink_profile(Image.new("RGB", (50, 20), "white")) is None
    assert ink_iou(a, None) == 0.0


def test_reward_without_rendering():
    reward = RewardFunction({"valid": 0.25, "edit": 0.5, "length": 0.25})
    same, other, invalid = reward([r"\frac{a}{b}", "a+b", r"\frac{a}{"], [r"\frac { a } { b }"] * 3)
    assert same.total == reward.best == 0.75
    assert invalid.parts["valid"] == 0.0 and other.total > invalid.total
    with pytest.raises(TexocrError, match="RenderPool"):
        RewardFunction({"image": 1.0})


# ---------------------------------------------------------------- rendered


@pytest.fixture(scope="module")
def pool():
    if not tex_available():
        pytest.skip("latex/dvipng not installed")
    with RenderPool("tex", workers=2, timeout_s=5.0) as p:
        yield p


@needs_tex
def test_known_pairs(pool):
    reward = RewardFunction(ALL_PARTS, pool=pool)
    ref = r"a \le b + \frac { x } { 2 }"
    preds = {
        "identical": ref,
        "typeset_identical": r"a\leq b+\frac{x}{2}",
        "different": r"a < b + \frac { y } { 3 }",
        "invalid": r"a \le b + \frac { x } {",
    }
    got = dict(zip(preds, reward(list(preds.values()), [ref] * len(preds))))
    assert got["identical"].total == pytest.approx(reward.best)
    assert got["identical"].parts == {"image": 1.0, "valid": 1.0, "edit": 1.0, "length": 0.0}
    assert got["typeset_identical"].parts["image"] == got["identical"].parts["image"] == 1.0
    assert got["typeset_identical"].total == pytest.approx(reward.best)
    assert 0 < got["different"].parts["image"] < 0.9
    assert got["different"].total < got["identical"].total
    assert got["invalid"].parts["valid"] == 0.0 and got["invalid"].parts["image"] == 0.0
    assert got["invalid"].total == min(r.total for r in got.values())


@needs_tex
def test_reward_from_config_renders_with_its_timeout():
    from texocr.config import TrainConfig

    reward = RewardFunction.from_config(TrainConfig(reward_parts=["image:1"], reward_workers=1, reward_timeout_s=3.0))
    try:
        assert reward.weights == {"image": 1.0} and reward.pool is not None
        assert reward([r"x ^ { 2 }"], [r"x^2"])[0].total == 1.0
        assert [r.timeout_s for r in reward.pool.renderers] == [3.0]  # TeX kills a run that hangs after this
    finally:
        reward.close()


@needs_tex
def test_cache_renders_a_formula_once():
    with RenderPool("tex", workers=2, chunk=2) as p:
        formulas = [r"\alpha + 1", r"\beta ^ { 2 }", r"\gamma", r"\frac{1}{"]
        first = p.ink(formulas)
        assert [x is None for x in first] == [False, False, False, True]
        rendered = sum(r.rendered for r in p.renderers)
        assert rendered == 3 and p.stats["rendered"] == 3 and p.stats["failed"] == 1
        again = p.ink(formulas[::-1] + [r"\gamma"])  # nothing new: no renderer is called
        assert sum(r.rendered for r in p.renderers) == rendered
        assert sum(sum(r.failures.values()) for r in p.renderers) == 1
        assert p.stats["cache_hits"] == 4
        assert again[0] is None and (again[1] == first[2]).all() and (again[4] == first[2]).all()


class _SlowRenderer:
    """Draws any formula at once, except one containing `slow`, which takes `delay` seconds (a hung renderer)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls = delay, 0
        self.finished = threading.Event()

    def render_detailed(self, formulas: list[str], *, dpi: int = 200) -> list[RenderResult]:
        self.calls += 1
        if any("slow" in f for f in formulas):
            time.sleep(self.delay)
            self.finished.set()
        return [RenderResult(_drawn(f)) for f in formulas]


def test_timeout_gives_up_and_caches_the_late_result():
    slow = _SlowRenderer(delay=3.0)
    with RenderPool(workers=2, chunk=1, timeout_s=0.2, make_renderer=lambda: slow) as p:
        start = time.monotonic()
        inks = p.ink(["x", r"\slow"])
        waited = time.monotonic() - start
        assert inks[0] is not None and inks[1] is None
        assert p.stats["timeouts"] == 1
        assert waited < 2.5, f"waited {waited:.1f} s for a formula whose limit is {p._chunk_limit(1)} s"
        assert slow.finished.wait(5)
        time.sleep(0.2)  # the late result's callback
        calls = slow.calls
        late = p.ink([r"\slow"])[0]
        assert late is not None and slow.calls == calls  # cached when it came, not rendered again
