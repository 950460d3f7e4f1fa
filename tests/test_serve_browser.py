"""The search page in a real browser: headless Chromium (Debian's chromium +
chromium-driver) driven by selenium against a real server on loopback.  The
grid must show the engine's own answer, with thumbnails that loaded."""
import os
import shutil

import pytest

from servekit import build_engine, query_images, require_serve

require_serve()
pytest.importorskip("selenium", reason="selenium is not installed (make test installs it)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                 else None)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver (make test's "
                "apt step does it)", allow_module_level=True)

import imgsearch as isx  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 20  # seconds: a shared machine may be slow to start a browser


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def grid_ids(driver):
    # read in one script: the grid is replaced wholesale when an answer arrives
    return driver.execute_script("return [...document.querySelectorAll('#grid .hit')].map(e => +e.dataset.id)")


def wait_for_grid(driver, want):
    WebDriverWait(driver, WAIT).until(lambda d: grid_ids(d) == want,
                                      message=f"the grid never showed {want}")
    # every thumbnail in the grid really loaded (decoded by the browser)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#grid .hit img')].every(i => i.complete && i.naturalWidth > 0)"),
        message="thumbnails did not load")


def test_upload_on_the_page_shows_the_engines_hits_and_click_searches_again(browser, tmp_path, rng):
    engine, path, labels = build_engine(str(tmp_path), rng)
    query_path, _ = query_images(str(tmp_path / "queries"), rng, n=2)[1]
    k = 5
    with isx.serve(engine, port=0, index_path=path, allow_add=True) as handle:
        browser.get(handle.url + "/")
        WebDriverWait(browser, WAIT).until(lambda d: "15 images" in d.find_element(By.ID, "info").text)
        assert browser.find_element(By.ID, "add-box").is_displayed()  # the server allows adding
        kbox = browser.find_element(By.ID, "k")
        kbox.clear()
        kbox.send_keys(str(k))
        browser.find_element(By.ID, "query-file").send_keys(query_path)
        want = [int(i) for i in engine.search(query_path, k=k).ids[0]]
        wait_for_grid(browser, want)
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .hit")
        first = engine.search(query_path, k=1)
        assert os.path.basename(first.paths[0][0]) in cards[0].text
        assert f"{float(first.distances[0, 0]):.4g}"[:4] in cards[0].text  # the distance is shown
        assert '"label"' in cards[0].find_element(By.CSS_SELECTOR, ".metadata").text
        # clicking a hit searches by it (its own entry left out)
        clicked = want[2]
        cards[2].click()
        again = engine.search_vectors(engine.index.get([clicked]), k=k + 1)
        wait_for_grid(browser, [int(i) for i in again.ids[0] if i != clicked][:k])
        assert "id " + str(clicked) in browser.find_element(By.ID, "status").text
        # a file that is not an image: the page says why
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image at all")
        browser.find_element(By.ID, "query-file").send_keys(str(bad))
        WebDriverWait(browser, WAIT).until(lambda d: "not a usable image" in d.find_element(By.ID, "status").text)
        assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
        # the add form: the image goes into the engine with its metadata, and the page says so
        new_path, new_bytes = query_images(str(tmp_path / "new"), rng, n=1)[0]
        browser.find_element(By.ID, "add-files").send_keys(new_path)
        browser.find_element(By.ID, "add-meta").send_keys('{"label": "from the page"}')
        browser.find_element(By.CSS_SELECTOR, "#add-form button").click()
        WebDriverWait(browser, WAIT).until(lambda d: "16 images" in d.find_element(By.ID, "info").text)
        assert "added 1 images" in browser.find_element(By.ID, "status").text and len(engine) == 16
        hit = engine.search(new_path, k=1)
        assert hit.distances[0, 0] == 0 and hit.metadata[0][0] == {"label": "from the page"}
