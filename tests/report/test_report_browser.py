"""The review report of a real tiny run, rendered by headless Chromium (Debian's `chromium`).

Checked from the rendered page: every chart and image decoded with a non-zero size, and the
per-class table values equal the registry version's metrics. A probe script (the only change
to the page: the report itself has no scripts, and its CSP allows inline scripts only for it)
writes its findings into the DOM, which `--dump-dom` prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape as html_unescape
from pathlib import Path

import pytest

from phase2.report.inputs import PER_CLASS_KEYS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({name: i.dataset.name, cls: i.className,
    complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}));
  const cells = [...document.querySelectorAll("#per-class-table td[data-metric]")].map(td => ({
    cls: td.dataset.class, model: td.dataset.model, metric: td.dataset.metric, value: td.dataset.value,
    text: td.textContent}));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, cells});
  document.body.appendChild(out);
});
</script>"""

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing under CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install -y --no-install-recommends chromium)")
    return CHROMIUM


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def test_report_renders_in_chromium(chromium, pipeline_run, tmp_path):
    run = pipeline_run
    html = run["layout"].report_html.read_text()
    probed = tmp_path / "probed.html"
    page = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probed.write_text(page.replace("</body>", PROBE + "</body>", 1))

    dom = _chromium(chromium, tmp_path / "profile-dom", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, "the probe did not run: " + dom.stdout[-500:]
    result = json.loads(
        match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    )

    # "What changed" since production's data: the dataset_changes task's summary, as the flow returned it.
    what_changed = re.search(r'<p id="what-changed">(.*?)</p>', dom.stdout, re.S)
    assert what_changed and html_unescape(what_changed.group(1)) == run["summary"]["what_changed"]

    images = result["images"]
    names = [i["name"] for i in images]
    for expected in (
        "Training curves per epoch",
        "Class counts per split, before and after rebalancing",
        "PR curve, val split",
        "Confusion matrix, val split",
        "Task run durations",
    ):
        assert expected in names
    # The promotion gate (test split, paired with production): each checked number with its 95%
    # interval and n, in the page as in the flow's summary, and the per-class chart with error bars.
    gate = run["summary"]["gate"]
    assert gate["split"] == "test" and gate["n_images"] > 0 and gate["checks"]
    assert "Promotion gate per class with 95% intervals" in names
    for metric, check in gate["checks"].items():
        row = re.search(rf'<tr data-gate-metric="{re.escape(metric)}">(.*?)</tr>', dom.stdout, re.S)
        assert row, metric
        cells = [html_unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
        low, high = check["ci95"]
        assert cells[1] == str(check["n"]) and cells[2] == f"{check['value']:.4f} [{low:.4f}, {high:.4f}]", cells
        if "delta_ci95" in check:
            low, high = check["delta_ci95"]
            assert cells[4] == f"{check['delta']:+.4f} [{low:+.4f}, {high:+.4f}]", cells
    tiles = json.loads((run["layout"].stage_dir("report") / "detections" / "detections.json").read_text())["tiles"]
    assert sum(i["cls"] == "tile" for i in images) == len(tiles) > 0
    # Label review: the worst images the review step drew, in its order, each with its score and issue.
    review = json.loads((run["layout"].stage_dir("label-review") / "label_review.json").read_text())
    assert [i["name"] for i in images if i["cls"] == "review-tile"] == [Path(r["image"]).name for r in review["shown"]]
    captions = re.findall(
        r'class="review-caption" data-rank="(\d+)" data-score="([\d.]+)" data-issue="([^"]*)"', dom.stdout
    )
    assert captions == [(str(r["rank"]), f"{r['score']:.4f}", r["issue"]) for r in review["shown"]]
    assert 0 < len(captions) <= review["settings"]["top_n"]
    shown_first = [r["minority"] and r["issue"] != "none" for r in review["shown"]]
    assert shown_first == sorted(shown_first, reverse=True)  # minority-class images with an issue first
    queue_csv = run["layout"].stage_dir("label-review") / "review_queue.csv"  # the full queue, in S3 too
    assert run["store"].get_bytes(run["layout"].stage_key("label-review", queue_csv.name))[0] == queue_csv.read_bytes()
    broken = [i for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0 and i["shown"] > 0)]
    assert not broken, broken

    # The table the reviewer reads holds exactly the registered version's numbers.
    cells = {(c["cls"], c["metric"]): c for c in result["cells"] if c["model"] == "new"}
    metrics = run["version"].metrics["val"]
    checked = 0
    for name, values in metrics["per_class"].items():
        for key in PER_CLASS_KEYS:
            cell = cells[(name, key)]
            if values[key] is None:
                assert cell["text"] == "–" and cell["value"] == ""
            else:
                assert float(cell["value"]) == values[key] and cell["text"] == f"{values[key]:.4f}"
                checked += 1
    assert checked > 0

    # A screenshot of the report itself (no probe) as a test artifact.
    screenshot = tmp_path / "report-screenshot.png"
    shot = _chromium(
        chromium,
        tmp_path / "profile-shot",
        "--window-size=1280,2400",
        "--hide-scrollbars",
        f"--screenshot={screenshot}",
        run["layout"].report_html.as_uri(),
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1280, 2400)
        assert len(image.convert("L").getcolors(1 << 16) or []) > 50  # not a blank page
