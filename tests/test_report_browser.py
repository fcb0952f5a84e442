"""Open report.html in headless Chromium and check that its images really load (and screenshot it).

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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    try:
        from texocr.data.render import available_renderers, get_renderer
    except ImportError:
        pytest.skip("no renderer module")
    if not available_renderers():
        pytest.skip("no renderer installed")
    renderer = get_renderer("auto")
    refs = [r"\frac{a+b}{c}", r"x^{2}+y^{2}=z^{2}", r"\sum_{i=1}^{n} i", r"\sqrt{\alpha}", r"e^{i\pi}+1=0"]
    preds = [r"\frac{a+b}{c}", r"x^{2}+y^{3}=z^{2}", r"\sum_{i=0}^{n} i^2", r"\sqrt{\alpha", r"e^{i\pi}-1=0"]
    images = renderer.render_batch(refs)
    samples = [Sample(im, ref, f"eq{i}") for i, (im, ref) in enumerate(zip(images, refs))]
    res = score(_Answers(preds), samples, EvalConfig(batch_size=2), renderer=renderer, keep_images=True)
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
                        rows: document.querySelectorAll('#samples tr').length - 1,
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
