"""Metrics against hand-computed examples (every expected number is worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from PIL import Image, ImageDraw

from texocr import metrics as M


def test_exact_match_uses_normalized_tokens():
    preds = [r"\frac{a}{b}", "x^2", r"a \over b", "y"]
    refs = [r"\frac { a } { b }", "x ^ { 2 }", r"\frac{a}{b}", "z"]
    # spacing only; braces only; \over rewritten by normalize; wrong
    assert M.exact_match(preds, refs) == pytest.approx(3 / 4)


def _lev(a: list[str], b: list[str]) -> int:
    """Textbook dynamic-programming Levenshtein, to check the library's."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_token_distance_agrees_with_dynamic_programming():
    cases = [("x^3", "x^2"), ("a+b+c", "a+b"), (r"\frac{1}{3}+x", r"\frac12"), ("", "a b"), (r"\sqrt{x", r"\sqrt x")]
    for p, r in cases:
        assert M.token_distance(p, r) == _lev(M.tokens(p), M.tokens(r)), (p, r)


def test_edit_score_by_hand():
    # x ^ { 3 } vs x ^ { 2 }: 5 tokens each, 1 substitution; a + b + c (5) vs a + b (3): 2 deletions, max len 5
    assert M.edit_score(["x^3", "a+b+c"], ["x^2", "a+b"]) == pytest.approx(1 - (1 + 2) / (5 + 5))
    assert M.edit_score(["x"], ["x"]) == 1.0
    assert M.edit_score(["a b"], ["c d"]) == 0.0


def test_cer_by_hand():
    # spaces removed: "x^{3}" vs "x^{2}": 1 of 5 characters; "ab" vs "abc": 1 of 3
    assert M.cer(["x^3", "ab"], ["x^2", "abc"]) == pytest.approx(2 / 8)
    # "\alpha\beta" (11 chars) predicted as "a": the a of alpha kept, 10 deletions
    assert M.cer(["a"], [r"\alpha\beta"]) == pytest.approx(10 / 11)
    assert M.cer(["a b c d e f g"], ["a"]) == 1.0  # 6 insertions on 1 character: clipped


def test_expression_rates_agree_with_direct_count():
    refs = ["a+b", "a+b", "a+b", r"\frac{1}{2}"]
    preds = ["a+b", "a-b", "a", r"\frac{1}{3}+x"]
    dists = [_lev(M.tokens(p), M.tokens(r)) for p, r in zip(preds, refs)]
    assert dists == [0, 1, 2, 3]  # last: 1 substitution + 2 insertions
    for k in range(4):
        assert M.expression_rate(preds, refs, k) == sum(d <= k for d in dists) / 4
    m = M.compute_metrics(preds, refs)
    assert (m["exact_match"], m["exprate_le1"], m["exprate_le2"]) == (0.25, 0.5, 0.75)


def test_bleu_by_hand_and_against_sacrebleu():
    # one pair, 6 tokens vs 6: "a b c d e f" vs "a b c d e g"
    # p1 = 5/6, p2 = 4/5, p3 = 3/4, p4 = 2/3, equal lengths so BP = 1
    expected = math.exp((math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)) / 4)
    assert M.bleu4(["a b c d e f"], ["a b c d e g"]) == pytest.approx(expected)
    # brevity penalty: hypothesis "a b c d" (4) vs reference "a b c d e f" (6): p_n = 1, BP = exp(1 - 6/4)
    assert M.bleu4(["a b c d"], ["a b c d e f"]) == pytest.approx(math.exp(1 - 6 / 4))

    refs = [r"\frac{a}{b}+c^{2}", r"\sum_{i=1}^{n} x_i", r"\alpha \beta \gamma \delta"]
    preds = [r"\frac{a}{b}+c^{3}", r"\sum_{i=0}^{n} x_i", r"\alpha \beta \gamma \delta"]
    tok = lambda s: " ".join(M.tokens(s))
    ref_bleu = sacrebleu.corpus_bleu([tok(p) for p in preds], [[tok(r) for r in refs]],
                                     tokenize="none", smooth_method="none").score / 100
    assert M.bleu4(preds, refs) == pytest.approx(ref_bleu)
    assert 0 < M.bleu4(preds, refs) < 1
    assert M.bleu4(refs, refs) == pytest.approx(1.0)
    assert M.bleu4(["x^2"], ["x^{2}"]) == pytest.approx(1.0)  # normalized before scoring


def test_valid_rate():
    assert M.valid_rate([r"\frac{a}{b}", r"\frac{a}{b", "x^{"]) == pytest.approx(1 / 3)
    assert M.valid_rate([]) == 0.0


def test_compute_metrics_keys_and_ranges():
    m = M.compute_metrics(["a+b", "c", r"\frac{x"], ["a+b", "d", r"\frac{x}{y}"])
    assert set(m) == set(M.METRIC_KEYS)
    assert m["n"] == 3
    for k, v in m.items():
        if k != "n":
            assert 0.0 <= v <= 1.0, k
    assert m["valid_rate"] == pytest.approx(2 / 3)
    # the corpus edit score agrees with the standalone function
    assert m["edit_score"] == pytest.approx(M.edit_score(["a+b", "c", r"\frac{x"], ["a+b", "d", r"\frac{x}{y}"]))


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        M.exact_match(["a"], ["a", "b"])


def test_empty_inputs_are_zero_not_nan():
    m = M.compute_metrics([], [])
    assert m["n"] == 0 and all(v == 0.0 for k, v in m.items() if k != "n")


def test_token_confusions():
    conf = M.token_confusions(["x^3", "y^3", "a"], ["x^2", "y^2", "a+b"])
    assert conf[0] == ("2", "3", 2)  # reference 2 read as 3, twice
    assert ("+", "", 1) in conf and ("b", "", 1) in conf  # deletions
    assert M.token_confusions(["a+b"], ["a"]) == [("", "+", 1), ("", "b", 1)]  # insertions


# ---------------------------------------------------------------- image match


def _draw(boxes, size=(60, 30)):
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for box in boxes:
        d.rectangle(box, fill="black")
    return img


def test_images_match_ignores_position_and_blank_columns():
    a = _draw([(5, 5, 10, 20), (14, 8, 18, 12)])
    b = _draw([(20, 5, 25, 20), (32, 8, 36, 12)], size=(80, 40))  # same glyphs, moved, wider gap, bigger canvas
    taller = _draw([(5, 5, 10, 20), (14, 4, 18, 12)])  # second glyph 4 px taller
    extra = _draw([(5, 5, 10, 20), (14, 8, 18, 12), (22, 8, 26, 12)])  # one more glyph
    assert M.images_match(a, b)
    assert not M.images_match(a, taller)
    assert not M.images_match(a, extra)
    blank = Image.new("RGB", (20, 20), "white")
    assert M.images_match(blank, blank) and not M.images_match(blank, a)


class _BoxRenderer:
    """One box per normalized token, its height from the token: equal token streams draw equal images.

    Formulas containing `BAD` do not render (None), like a renderer refusing input.
    """

    def render_batch(self, formulas):
        out = []
        for f in formulas:
            if "BAD" in f:
                out.append(None)
                continue
            heights = [3 + sum(map(ord, t)) % 15 for t in M.tokens(f)]
            out.append(_draw([(4 + 6 * i, 5, 7 + 6 * i, 5 + h) for i, h in enumerate(heights)], size=(400, 30)))
        return out


def test_image_match_with_a_renderer():
    r = _BoxRenderer()
    # match; mismatch; prediction does not render (mismatch); reference does not render (not judged)
    preds, refs = ["x^2", "y", "BAD", "a"], ["x^{2}", "z", "q", "BAD"]
    assert M.image_match_flags(preds, refs, r) == [True, False, False, None]
    assert M.image_match(preds, refs, r) == pytest.approx(1 / 3)
    assert M.compute_metrics(["x^2"], ["x^{2}"], renderer=r)["image_match"] == 1.0


@pytest.fixture(scope="module")
def renderer():
    try:
        from texocr.data.render import available_renderers, get_renderer
    except ImportError:
        pytest.skip("no renderer module")
    if not available_renderers():
        pytest.skip("no renderer installed")
    return get_renderer("auto")


def test_image_match_with_the_real_renderer(renderer):
    preds = ["x^2", r"\frac12", r"\alpha+\beta", r"\int_0^1 f(x)\,dx"]
    refs = ["x^{2}", r"\frac{1}{2}", r"\alpha-\beta", r"\sum_{i=1}^{n} i"]
    assert M.image_match_flags(preds, refs, renderer) == [True, True, False, False]


def test_prepare_tokens_in_worker_processes_gives_the_serial_tokens(monkeypatch) -> None:
    """Thousands of formulas are normalized in spawned worker processes before the metrics read them; the tokens
    (and so every metric) are those of the serial path."""
    from texocr import metrics

    formulas = [f"\\frac{{a_{i}}}{{b^{i % 7}}} + x^{{{i}}}" for i in range(2100)] + ["", "\\sqrt2"]
    monkeypatch.setattr(metrics, "_TOKENS", {})
    metrics.prepare_tokens(formulas, workers=2)
    parallel = {s: metrics._TOKENS[s] for s in formulas}
    monkeypatch.setattr(metrics, "_TOKENS", {})
    assert all(list(parallel[s]) == metrics.tokens(s) for s in formulas)
    assert parallel["\\sqrt2"] == ("\\sqrt", "{", "2", "}")


def test_bleu_counted_in_worker_processes_is_sacrebleus_corpus_bleu() -> None:
    """`bleu4` with a pool sums sacrebleu's statistics over slices counted in other processes: the same score as
    one `corpus_bleu` over every pair (slices of 500, so several are summed here)."""
    import sacrebleu

    from texocr import metrics

    refs = [f"\\frac{{a_{i}}}{{b^{i % 7}}} + x^{{{i % 13}}}" for i in range(1600)]
    preds = [r if i % 3 else r.replace("+", "-", 1) + " y" * (i % 4) for i, r in enumerate(refs)]
    with metrics.metric_pool(10**6, workers=2) as pool:
        assert pool is not None
        parallel = metrics.bleu4(preds, refs, pool=pool)
    hyps = [" ".join(metrics.tokens(p)) for p in preds]
    lines = [" ".join(metrics.tokens(r)) for r in refs]
    whole = sacrebleu.corpus_bleu(hyps, [lines], tokenize="none", smooth_method="none", force=True).score / 100
    assert parallel == pytest.approx(whole, rel=1e-12) and parallel == pytest.approx(metrics.bleu4(preds, refs))
    assert 0.3 < parallel < 1
