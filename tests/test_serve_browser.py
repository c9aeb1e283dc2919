"""The web page in a real browser (Debian's Chromium + chromedriver, headless): upload a photo, the
result appears at 4x, the before/after slider moves, the download gives the service's bytes."""
from __future__ import annotations

import shutil
import time

import httpx
import numpy as np
import pytest
from PIL import Image

selenium = pytest.importorskip("selenium")
pytest.importorskip("fastapi")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from serve_helpers import start_server  # noqa: E402
from test_runtime_toyengine import build_toy_engine  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (make test installs them)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=2)
    srv = start_server(engine, log=tmp_path_factory.mktemp("log") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture()
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def test_upload_compare_download(server, browser, tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 30, 3)) * 255).astype(np.uint8)).save(photo)
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    browser.find_element(By.ID, "steps").send_keys("2")
    browser.find_element(By.ID, "seed").clear()
    browser.find_element(By.ID, "seed").send_keys("7")
    browser.find_element(By.ID, "go").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.execute_script("return document.getElementById('output').naturalWidth") == 120)
    assert browser.execute_script("return document.getElementById('output').naturalHeight") == 96
    wait.until(lambda d: "done" in d.find_element(By.ID, "status").text)

    clip = browser.find_element(By.ID, "before-clip")
    assert clip.value_of_css_property("width") != "0px"
    before = browser.execute_script("return document.getElementById('before-clip').style.width")
    slider = browser.find_element(By.ID, "slider")
    slider.send_keys(Keys.HOME)
    assert browser.execute_script("return document.getElementById('before-clip').style.width") == "0%"
    for _ in range(30):
        slider.send_keys(Keys.ARROW_RIGHT)
    moved = browser.execute_script("return document.getElementById('before-clip').style.width")
    assert moved == "30%" and moved != before

    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "photo_x4.png"
    link.click()
    target = browser.downloads / "photo_x4.png"
    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    expected = httpx.post(server.url + "/v1/upscale", params={"steps": "2", "seed": "7", "color_fix": "none",
                                                             "format": "png"},
                          content=photo.read_bytes(), headers={"Content-Type": "image/png"}, timeout=60).content
    assert target.read_bytes() == expected


def test_error_is_shown(server, browser, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 30).until(lambda d: "error 415" in d.find_element(By.ID, "status").text)
    assert "not an image" in browser.find_element(By.ID, "status").text
