"""The web page at / in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
upload a generated clip, read the rendered top-k; with a window, the rendered timeline."""
from __future__ import annotations

import os
import shutil

import pytest

from support.colour import colour_model, coloured_video
from support.service import start, stop


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium, chromium-driver and selenium (.ci/run)")
        pytest.skip("no chromium/chromedriver/selenium here")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_the_page_uploads_a_clip_and_shows_top_k_and_timeline(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    model = colour_model(tmp_path / "colour.onnx")
    clip = coloured_video(tmp_path / "clip.mp4", [("green", 3.0)])
    long = coloured_video(tmp_path / "long.mp4", [("red", 10.0), ("blue", 8.0)])
    proc, addr = start([model])
    driver = browser()
    try:
        driver.get(f"http://{addr}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        assert "colour" in driver.find_element(By.ID, "model").text
        driver.find_element(By.ID, "video").send_keys(str(clip))
        driver.find_element(By.ID, "topk").clear()
        driver.find_element(By.ID, "topk").send_keys("2")
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.presence_of_element_located((By.ID, "predictions")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tr")[1:]
        assert len(rows) == 2 and rows[0].find_elements(By.TAG_NAME, "td")[0].text == "green"
        # a long video with a window: the segments table and the timeline chart
        driver.find_element(By.ID, "video").send_keys(str(long))
        driver.find_element(By.ID, "window").send_keys("4")
        driver.find_element(By.ID, "stride").send_keys("2")
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.presence_of_element_located((By.ID, "segments")))
        labels = [r.find_elements(By.TAG_NAME, "td")[2].text for r in driver.find_elements(By.CSS_SELECTOR,
                                                                                            "#segments tr")[1:]]
        assert labels == ["red", "blue"]
        assert driver.find_element(By.ID, "timeline").is_displayed()
        painted = driver.execute_script(
            "const c = document.getElementById('timeline'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) "
            "if (d[i]) n++; return n;")
        assert painted > 1000  # the chart was drawn
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
        stop(proc)


def test_the_page_takes_the_api_key(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = colour_model(tmp_path / "colour.onnx")
    clip = coloured_video(tmp_path / "clip.mp4", [("blue", 3.0)])
    key = "page-key-0123456789"
    proc, addr = start([model], "--api-key", key)
    driver = browser()
    try:
        driver.get(f"http://{addr}/")  # the page itself needs no key; what it fetches does
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#model option")
        driver.find_element(By.ID, "apikey").send_keys(key)
        driver.find_element(By.ID, "usekey").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "video").send_keys(str(clip))
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_elements(By.ID, "predictions") or d.find_elements(By.CSS_SELECTOR, "#result .error"))
        assert not driver.find_elements(By.CSS_SELECTOR, "#result .error"), driver.find_element(By.ID, "result").text
        rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tr")[1:]
        assert rows[0].find_elements(By.TAG_NAME, "td")[0].text == "blue"
    finally:
        driver.quit()
        stop(proc)
