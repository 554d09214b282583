"""The built site in a real browser: headless Chromium driven through selenium.

Every page is loaded over HTTP from localhost (and a few from disk, as file://): no
console error, no failed request, every image drawn with a size. The search box finds
the pages a reader looks for, the autograd graphs stay readable in dark mode, and the
layout holds on a phone. Screenshots of the gallery go to `_build/screenshots/` for
review. `make test` installs Chromium and its driver first (`make browser`).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / "_build" / "screenshots"
GALLERY_PAGES = {
    "two-layers": "auto_examples/learn/plot_1_two_layers_one_weight.html",
    "siamese": "auto_examples/learn/plot_3_siamese.html",
    "transformer": "auto_examples/learn/plot_2_tied_transformer.html",
    "gpu-step": "auto_examples/learn/plot_4_gpu_training_step.html",
}
DESKTOP = (1280, 800)
PHONE = (390, 844)  # CSS pixels of a common phone


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"none of {', '.join(names)} is installed: run `make browser` (it installs "
        "Debian's chromium and chromium-driver) or install Chromium and ChromeDriver."
    )


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser", "google-chrome")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    options.set_capability(
        "goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"}
    )
    service = Service(_find("chromedriver"))
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def _pages(html: Path) -> list[str]:
    return sorted(
        p.relative_to(html).as_posix()
        for p in html.rglob("*.html")
        if "_static" not in p.parts
    )


def _viewport(driver: Any, size: tuple[int, int], mobile: bool = False) -> None:
    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def _set_theme(driver: Any, mode: str) -> None:
    """pydata-sphinx-theme keeps the reader's choice in localStorage."""
    driver.execute_script(
        "localStorage.setItem('theme', arguments[0]);"
        "localStorage.setItem('mode', arguments[0]);"
        "document.documentElement.dataset.theme = arguments[0];"
        "document.documentElement.dataset.mode = arguments[0];",
        mode,
    )


def _load(driver: Any, url: str) -> list[str]:
    """Open ``url``; return its console errors and failed requests (none is good)."""
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    # Let lazy images load and late scripts run before reading the logs.
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const imgs = [...document.images];"
        "imgs.forEach(i => { i.loading = 'eager'; });"
        "Promise.all(imgs.map(i => i.decode().catch(() => null)))"
        ".then(() => setTimeout(done, 100));"
    )
    problems = [
        f"console {entry['level']}: {entry['message']}"
        for entry in driver.get_log("browser")
        if entry["level"] in {"SEVERE", "WARNING"}
    ]
    requests: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.responseReceived":
            status = params["response"]["status"]
            if status >= 400:
                problems.append(f"HTTP {status}: {params['response']['url']}")
        elif message["method"] == "Network.loadingFailed":
            where = requests.get(params["requestId"], params["requestId"])
            problems.append(f"failed request ({params['errorText']}): {where}")
    return problems


_IMAGE_SIZES = """
return [...document.querySelectorAll('article img, article svg, article object')]
  .filter(e => !e.parentElement.closest('svg'))
  .map(e => {
    const r = e.getBoundingClientRect();
    return {tag: e.tagName, src: e.getAttribute('src') || e.outerHTML.slice(0, 80),
            width: r.width, height: r.height,
            natural: e.tagName === 'IMG' ? e.naturalWidth : -1};
  });
"""


def _empty_images(driver: Any) -> list[str]:
    return [
        f"{image['tag']} {image['src']}: {image['width']}x{image['height']}"
        for image in driver.execute_script(_IMAGE_SIZES)
        if image["width"] <= 0 or image["height"] <= 0 or image["natural"] == 0
    ]


def _screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG in _build/screenshots/."""
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth,"
        " document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def test_every_page_loads_cleanly_over_http(driver: Any, site_url: str) -> None:
    _viewport(driver, DESKTOP)
    pages = _pages(Path(ROOT / "_build/html"))
    assert len(pages) >= 15
    problems = []
    for page in pages:
        problems += [f"{page}: {p}" for p in _load(driver, site_url + page)]
        problems += [f"{page}: empty image {p}" for p in _empty_images(driver)]
    assert not problems, "\n".join(problems)


def test_gallery_pages_open_from_disk(driver: Any, built_site: Path) -> None:
    _viewport(driver, DESKTOP)
    for page in ["index.html", "auto_examples/index.html", *GALLERY_PAGES.values()]:
        url = (built_site / page).as_uri()
        problems = _load(driver, url) + _empty_images(driver)
        assert not problems, f"{page} from disk:\n" + "\n".join(problems)
        styled = driver.execute_script(
            "return getComputedStyle(document.body).fontFamily"
        )
        assert "serif" in styled.lower()  # the theme's stylesheet applied
    # Links between pages point at files, so following one works from disk too.
    driver.find_element(By.CSS_SELECTOR, "article a.reference.internal").click()
    assert driver.current_url.startswith("file://")
    assert Path(driver.current_url[len("file://") :].split("#")[0]).exists()


def _search(driver: Any, site_url: str, query: str) -> list[str]:
    """Type ``query`` into the search box of the home page; return the result links."""
    _load(driver, site_url + "index.html")
    driver.find_element(By.CSS_SELECTOR, "button.search-button__button").click()
    box = WebDriverWait(driver, 10).until(
        lambda d: next(
            (e for e in d.find_elements(By.NAME, "q") if e.is_displayed()), None
        )
    )
    box.send_keys(query, Keys.ENTER)
    WebDriverWait(driver, 20).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#search-results .search-summary")
            and "Searching" not in d.find_element(By.ID, "search-results").text
        )
    )
    links = driver.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")
    return [str(a.get_attribute("href")) for a in links]


@pytest.mark.parametrize(
    ("query", "page"),
    [("siamese", "plot_3_siamese.html"), ("tied embedding", "plot_2_tied_transformer")],
)
def test_search_box_finds_the_page(
    driver: Any, site_url: str, query: str, page: str
) -> None:
    _viewport(driver, DESKTOP)
    results = _search(driver, site_url, query)
    assert results, f"no results for {query!r}"
    assert page in results[0], f"{query!r} gave first {results[0]!r} of {results}"


def _error_messages() -> list[tuple[str, str]]:
    """``(error text, page)`` for each row of the symptom index's error table.

    The rows are read from docs/symptoms.md, so a row added there is tested too: its
    first column is the error text, in backticks, and its last column links the page
    with ``{doc}``.
    """
    text = (ROOT / "docs" / "symptoms.md").read_text()
    table = text.split("## Error messages", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        error = re.match(r"\| `([^`]+)` \|", line)
        page = re.search(r"\{doc\}`/([^`]+)` \|$", line)
        if error and page:
            rows.append((error.group(1), f"{page.group(1)}.html"))
    return rows


ERROR_MESSAGES = _error_messages()


def test_the_symptom_index_has_error_messages() -> None:
    assert len(ERROR_MESSAGES) >= 8, ERROR_MESSAGES


@pytest.mark.parametrize(
    ("error", "page"),
    ERROR_MESSAGES,
    ids=[re.sub(r"\W+", "-", error)[:40].strip("-") for error, _ in ERROR_MESSAGES],
)
def test_search_box_finds_the_page_of_an_error_message(
    driver: Any, site_url: str, error: str, page: str
) -> None:
    """A reader pastes the error text: its page, or the index row linking it, is
    among the first five results."""
    _viewport(driver, DESKTOP)
    results = _search(driver, site_url, error)
    top = [link.split("?")[0].split("#")[0] for link in results[:5]]
    wanted = (f"/{page}", "/symptoms.html")
    assert any(link.endswith(wanted) for link in top), f"{error!r} gave {results[:5]}"


def test_the_symptom_index_gives_its_errors_the_width(
    driver: Any, site_url: str
) -> None:
    """No empty side navigation beside the index, and the quoted errors in a wide
    column; on a phone each row stacks, with nothing scrolling sideways."""
    _viewport(driver, DESKTOP)
    assert not _load(driver, site_url + "symptoms.html")
    sidebar = driver.find_element(By.CSS_SELECTOR, ".bd-sidebar-primary")
    assert not sidebar.is_displayed(), "an empty side navigation beside the index"
    error = driver.find_element(By.CSS_SELECTOR, "table.ws-symptoms td")
    assert error.rect["width"] >= 0.4 * DESKTOP[0], f"error column {error.rect}"
    _screenshot(driver, "symptoms")
    _viewport(driver, PHONE, mobile=True)
    try:
        assert not _load(driver, site_url + "symptoms.html")
        width, inner = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width <= inner, f"the index scrolls sideways on a phone: {width}px"
        error = driver.find_element(By.CSS_SELECTOR, "table.ws-symptoms td")
        assert error.rect["width"] >= 0.85 * PHONE[0], f"error cell {error.rect}"
        _screenshot(driver, "symptoms-phone")
    finally:
        _viewport(driver, DESKTOP)


def _contrast(light: float, dark: float) -> float:
    """WCAG contrast ratio of two relative luminances."""
    return (max(light, dark) + 0.05) / (min(light, dark) + 0.05)


def _luminance(rgb: tuple[int, ...]) -> float:
    def channel(c: int) -> float:
        c_ = c / 255
        return c_ / 12.92 if c_ <= 0.04045 else ((c_ + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def stroke_contrast(png: bytes) -> float:
    """Contrast of a drawn graph's lines and text against what is behind them.

    The background is the commonest colour. Lines and text are the grey pixels
    (Graphviz draws them black, or white once inverted for dark mode) that differ
    from it; the 95th percentile of their contrast leaves anti-aliasing out.
    """
    image = Image.open(io.BytesIO(png)).convert("RGB")
    counts = image.getcolors(image.width * image.height) or []
    background = _luminance(max(counts)[1])
    contrasts = sorted(
        _contrast(_luminance(rgb), background)
        for n, rgb in counts
        for _ in range(min(n, 1000))
        if max(rgb) - min(rgb) < 40 and abs(_luminance(rgb) - background) > 0.02
    )
    assert contrasts, "the image has no lines or text apart from its background"
    return contrasts[int(0.95 * (len(contrasts) - 1))]


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_autograd_graphs_are_readable(driver: Any, site_url: str, mode: str) -> None:
    _viewport(driver, DESKTOP)
    page = GALLERY_PAGES["two-layers"]
    _load(driver, site_url + page)
    _set_theme(driver, mode)
    _load(driver, site_url + page)
    assert driver.execute_script("return document.documentElement.dataset.theme") == (
        mode
    )
    graphs = driver.find_elements(By.CSS_SELECTOR, "img.ws-graphviz")
    assert graphs, "the page shows no autograd graph"
    for graph in graphs:
        driver.execute_script("arguments[0].scrollIntoView()", graph)
        time.sleep(0.1)
        contrast = stroke_contrast(graph.screenshot_as_png)
        assert contrast >= 4.5, f"{graph.get_attribute('src')}: {contrast:.1f}"
    _screenshot(driver, f"two-layers-{mode}")
    _set_theme(driver, "light")


def test_layout_holds_on_a_phone(driver: Any, site_url: str) -> None:
    _viewport(driver, PHONE, mobile=True)
    try:
        for name, page in {"index": "index.html", **GALLERY_PAGES}.items():
            assert not _load(driver, site_url + page)
            width, inner = driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert width <= inner, f"{page} scrolls sideways on a phone: {width}px"
            article = driver.find_element(By.TAG_NAME, "article").rect["width"]
            assert article >= 0.85 * PHONE[0], f"{page}: text column {article}px"
            _screenshot(driver, f"{name}-phone")
    finally:
        _viewport(driver, DESKTOP)


def test_screenshots_of_the_gallery(driver: Any, site_url: str) -> None:
    _viewport(driver, DESKTOP)
    for name, page in {"gallery": "auto_examples/index.html", **GALLERY_PAGES}.items():
        assert not _load(driver, site_url + page)
        width, height = Image.open(_screenshot(driver, name)).size
        assert DESKTOP[0] - 20 <= width <= DESKTOP[0]  # the page, less its scrollbar
        assert height >= DESKTOP[1]


def test_landing_page_shows_its_two_doors_in_one_screen(
    driver: Any, site_url: str
) -> None:
    _viewport(driver, DESKTOP)
    assert not _load(driver, site_url + "index.html")
    doors = driver.find_elements(By.CSS_SELECTOR, "article ul.ws-doors > li")
    assert len(doors) == 2  # Learn, Fix
    for door in doors:
        assert door.rect["y"] + door.rect["height"] <= DESKTOP[1]
        assert door.find_elements(By.CSS_SELECTOR, "a.reference.internal")
    _screenshot(driver, "index")
