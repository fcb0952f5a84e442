"""Open report.html and the demo's index.html in headless Chromium: images load, at their natural size, and
no page scrolls sideways at 1,280 or 1,920 px (screenshots in /tmp/texocr_report_*.png for a look).

Skipped without the `playwright` package or Debian's /usr/bin/chromium (`apt-get install -y chromium`);
Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from texocr.config import EvalConfig
from texocr.evaluate import score, write_outputs
from texocr.infer import Prediction
from texocr.sample import Sample

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SCREENSHOT = Path("/tmp/report_screenshot.png")


class _Answers:
    """Gives a fixed list of answers in order: a report without a model."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    def predict(self, images, **kwargs):
        out, self.texts = self.texts[: len(images)], self.texts[len(images):]
        return [Prediction(t, score=-0.2, time_s=0.01, tokens=5, stop="end") for t in out]


def _renderer():
    """The best installed renderer; the test is skipped without one."""
    try:
        from texocr.data.render import available_renderers, get_renderer
    except ImportError:
        pytest.skip("no renderer module")
    if not available_renderers():
        pytest.skip("no renderer installed")
    return get_renderer("auto")


def _results(renderer, refs, preds_by_model):
    """One EvalResult per list of scripted predictions, on the references drawn by `renderer`."""
    images = renderer.render_batch(refs)
    samples = [Sample(im, ref, f"eq{i}") for i, (im, ref) in enumerate(zip(images, refs))]
    return [score(_Answers(preds), samples, EvalConfig(batch_size=2), renderer=renderer, keep_images=True)
            for preds in preds_by_model]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    refs = [r"\frac{a+b}{c}", r"x^{2}+y^{2}=z^{2}", r"\sum_{i=1}^{n} i", r"\sqrt{\alpha}", r"e^{i\pi}+1=0"]
    preds = [r"\frac{a+b}{c}", r"x^{2}+y^{3}=z^{2}", r"\sum_{i=0}^{n} i^2", r"\sqrt{\alpha", r"e^{i\pi}-1=0"]
    (res,) = _results(_renderer(), refs, [preds])
    out = tmp_path_factory.mktemp("report")
    write_outputs(out, [("scripted-model", None, res)], "five formulas")
    return out / "report.html"


def test_report_images_load_in_chromium(report):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri(), wait_until="load")
            state = page.evaluate("""() => {
                const info = cls => [...document.querySelectorAll('img.' + cls)]
                    .map(im => ({ok: im.complete && im.naturalWidth > 0, w: im.naturalWidth}));
                return {input: info('input'), rendered: info('rendered'),
                        rows: document.querySelectorAll('#samples tr.sample').length,
                        metrics: document.querySelectorAll('#metrics tr').length - 1,
                        dels: document.querySelectorAll('del').length};
            }""")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert state["rows"] == 5 and state["metrics"] >= 10
    assert len(state["input"]) == 5 and all(im["ok"] for im in state["input"]), state["input"]
    # every prediction renders here except the unclosed \sqrt, which the Recognizer would have repaired
    assert len(state["rendered"]) >= 4 and all(im["ok"] for im in state["rendered"]), state["rendered"]
    assert state["dels"] >= 3  # token diffs of the wrong predictions
    assert SCREENSHOT.stat().st_size > 10_000


LONG = "/home/someone/projects/texocr-experiments/runs/2026-12-02-handwriting-lora-r16-vision-language"
LAYOUT = """() => {
    const imgs = [...document.querySelectorAll('img')].map(im => ({
        cls: im.className || im.id, ok: im.complete && im.naturalWidth > 0,
        natural: [im.naturalWidth, im.naturalHeight], shown: [im.width, im.height]}));
    const cells = [...document.querySelectorAll('td,th')].map(c => c.getBoundingClientRect().right);
    return {scroll: document.documentElement.scrollWidth, width: window.innerWidth, imgs,
            right: Math.max(...cells), heads: [...document.querySelectorAll('#samples th')].map(t => t.textContent)};
}"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A two-model report.html headed by long absolute paths, and the demo's index.html with its loss curve."""
    from texocr import demo
    from texocr.train_callbacks import plot_loss

    renderer = _renderer()
    # report.html: formulas up to a long line (600 px drawn); index.html: the demo's short ones (3-19 tokens)
    refs = [r"\frac{a+b}{c}", r"x^{2}+y^{2}=z^{2}", r"\sum_{i=1}^{n} i", r"\sqrt{\alpha}",
            r"f(x)=a_{0}+a_{1}x+a_{2}x^{2}+a_{3}x^{3}+\cdots+a_{n}x^{n}"]
    after, before = _results(renderer, refs, [
        [r"\frac{a+b}{c}", r"x^{2}+y^{3}=z^{2}", r"\sum_{i=0}^{n} i^2", r"\sqrt{\alpha}", r"f(x)=a_{0}+a_{1}x"],
        [r"\frac{a}{c}", r"x^{2}=z^{2}", r"\sum i", r"\alpha", r"f(x)=a_{0}+a_{1}x+a_{2}x^{2}+\cdots+a_{n}x^{n}"]])
    out = tmp_path_factory.mktemp("pages")
    write_outputs(out / "eval", [(LONG + "/base-model", LONG + "/adapter", after), (LONG + "/base-model", None, before)],
                  LONG + "/test-set")
    (out / "train").mkdir()
    plot_loss([{"step": s, "loss": 3.0 / s} for s in range(1, 40)], out / "train" / "loss_curve.png")
    summary = {"case": "default", "description": "a test page", "n_test": 5, "steps": 39, "method": "lora",
               "threads": 2, "seconds": {"train": 60.0, "total": 90.0}}
    short = [r"x^{2}+1", r"\frac{a}{b}=c_{1}", r"\sqrt{x+y}\leq\alpha", r"e^{-t}\sin t"]
    after, before = _results(renderer, short, [short, [r"x^{2}", r"\frac{a}{b}", r"\sqrt{x}", r"e^{t}"]])
    demo.write_index(out, summary, before, after)
    return {"report": out / "eval" / "report.html", "index": out / "index.html"}


@pytest.mark.parametrize("width", [1280, 1920])
@pytest.mark.parametrize("name", ["report", "index"])
def test_pages_fit_the_window_with_images_at_natural_size(pages, name, width):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(pages[name].as_uri(), wait_until="load")
            state = page.evaluate(LAYOUT)
            page.screenshot(path=f"/tmp/texocr_{name}_{width}.png", full_page=True)
        finally:
            browser.close()
    assert state["scroll"] <= state["width"], f"scrolls sideways: {state['scroll']} > {state['width']} px"
    assert state["right"] <= state["width"], "a table column is cut off at the right edge"
    assert state["imgs"] and all(im["ok"] for im in state["imgs"]), state["imgs"]
    squeezed = [im for im in state["imgs"] if im["shown"] != im["natural"]]
    assert not squeezed, f"images not at their natural size: {squeezed}"
    if name == "index":
        assert any(im["cls"] == "curve" and im["natural"][0] >= 600 for im in state["imgs"])  # the loss curve
    else:
        assert state["heads"] == ["base-model + adapter", "base-model"]  # short headings, not the paths
