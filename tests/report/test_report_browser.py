"""The report in a real headless Chromium: every plot loads, and is drawn where the page puts it.

Chromium is Debian's (``/usr/bin/chromium``; CI installs it with
``scripts/install_chromium.sh``). A copy of the page gets a small script that, on
load, writes each image's state (complete, natural size, place on the page) into
the DOM, which ``--dump-dom`` prints; ``--screenshot`` of the same page is then
cut at those places and compared with the PNGs the page embeds.
"""

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from report_fake_run import PIXEL, soft_mask, write_fake_run

from cryorefine.io import write_mrc
from cryorefine.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 5000)  # width, height in CSS pixels (device scale factor 1)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} not found (install with: bash scripts/install_chromium.sh)",
)

_PROBE = """
<script>
window.addEventListener("load", () => {
  const found = [...document.querySelectorAll("img")].map((img) => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth,
            height: img.naturalHeight, left: box.left + window.scrollX,
            top: box.top + window.scrollY, shown_width: box.width, shown_height: box.height};
  });
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>
"""

_IMG = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([^"]+)">')


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The report of a fake run, its embedded PNGs, the probe's findings and the screenshot."""
    folder = tmp_path_factory.mktemp("browser")
    run = write_fake_run(folder, iterations=5)
    mask = folder / "mask.mrc"
    write_mrc(mask, soft_mask((0.0, 0.0, 0.0)), voxel_size_angst=PIXEL)
    page = write_report(run.root, folder / "report.html", mask=mask)
    text = page.read_text()
    embedded = {
        alt: mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        for alt, data in _IMG.findall(text)
    }
    probed = folder / "probed.html"
    probed.write_text(text.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(probed, folder / "profile", "--dump-dom", "--virtual-time-budget=5000").stdout
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.DOTALL)
    assert found is not None, f"the probe wrote nothing; Chromium printed:\n{dom[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    screenshot = folder / "report.png"
    _chromium(probed, folder / "profile", f"--screenshot={screenshot}")
    return embedded, images, mpimg.imread(screenshot)


def test_every_image_loads_with_its_embedded_size(rendered):
    embedded, images, _ = rendered
    assert len(images) == len(embedded) == 7
    for image in images:
        png = embedded[image["alt"]]
        assert image["complete"], image["alt"]
        assert image["width"] > 0, f"{image['alt']}: broken image"
        assert (image["height"], image["width"]) == png.shape[:2], image["alt"]
        # Shown at its natural size: one image pixel per screen pixel.
        assert (image["shown_height"], image["shown_width"]) == png.shape[:2], image["alt"]


def test_every_plot_is_on_the_screenshot_as_embedded(rendered):
    embedded, images, screenshot = rendered
    assert screenshot.shape[:2] == (WINDOW[1], WINDOW[0])
    for image in images:
        png = embedded[image["alt"]][..., :3]
        top, left = round(image["top"]), round(image["left"])
        height, width = png.shape[:2]
        assert top + height <= WINDOW[1], f"{image['alt']} lies below the window"
        shown = screenshot[top : top + height, left : left + width, :3]
        assert shown.std() > 0.05, f"{image['alt']}: blank region on the screenshot"
        # An unscaled, untagged (sRGB) PNG is copied to the screen; colour handling may move
        # a channel by a step or two of 1/255, so the mean difference stays below 2/255.
        assert np.abs(shown - png).mean() < 2.0 / 255.0, image["alt"]
