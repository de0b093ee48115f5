"""The compare report opens from disk in headless Chromium with every image loaded.

Chromium is Debian's `chromium` package, installed by `make test` (root + apt). The
check page is a copy of report.html in the same directory with one inline script
appended that, after the load event, writes each image's `complete && naturalWidth > 0`
into the DOM; `--dump-dom` returns it. The report itself carries no script at all.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _compare_helpers import known_models, real_world_clips, world_prompts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files", "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000"]

CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const pre = document.createElement('pre'); pre.id = 'img-check'; pre.textContent = JSON.stringify(imgs);
  document.body.appendChild(pre);
});</script>"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    from duogen.eval.compare import compare

    out = tmp_path_factory.mktemp("report")
    prompts = world_prompts()
    compare(known_models(prompts), prompts, out, n=2, seed=0, real=real_world_clips(16))
    return out


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=60)


def test_report_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<script" not in page.lower()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs, "the report references no files"
    for ref in refs:
        assert not re.match(r"^[a-z]+:", ref) and not ref.startswith("/"), f"non-relative reference {ref}"
        assert (report_dir / ref).is_file(), f"missing {ref}"


def _loaded_images(report_dir: Path, tmp: Path, page: str) -> list[dict]:
    """Open `page` (HTML text) from inside report_dir in Chromium -> [{src, ok}] per image."""
    check = report_dir / "_check.html"
    check.write_text(page.replace("</body>", CHECK + "</body>"))
    proc = _chromium(tmp, "--dump-dom", check.as_uri())
    check.unlink()
    m = re.search(r'<pre id="img-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"chromium did not run the check (rc {proc.returncode}): {proc.stderr[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_the_check_sees_a_missing_image(report_dir, tmp_path):
    page = (report_dir / "report.html").read_text().replace('src="gifs/', 'src="missing/', 1)
    images = _loaded_images(report_dir, tmp_path, page)
    assert [i["src"] for i in images if not i["ok"]] == ["missing/render/p000.gif"]


def test_report_renders_with_every_image_loaded(report_dir, tmp_path):
    images = _loaded_images(report_dir, tmp_path, (report_dir / "report.html").read_text())
    # one GIF per (model, prompt) plus the accuracy plot
    assert len(images) >= 2 * len(world_prompts()) + 1
    bad = [i["src"] for i in images if not i["ok"]]
    assert not bad, f"images that did not load: {bad}"

    shot = report_dir / "screenshot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1600", (report_dir / "report.html").as_uri())
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 1600)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50, "the screenshot is blank"
