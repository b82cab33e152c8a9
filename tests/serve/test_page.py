"""serve/page.html: the page streams a completion in a real headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.mark.skipif(browser_paths() is None, reason="no Chromium and chromedriver on this machine (.ci/run "
                    "installs Debian's chromium and chromium-driver where apt can)")
def test_the_page_streams_a_completion_in_headless_chromium(url, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("tiny"))
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("<b>not bold</b> Once upon a time")
        max_tokens = driver.find_element(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("24")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "generate").text == "Generate"
                   and d.find_element(By.ID, "completion").text)
        assert "tokens/s" in driver.find_element(By.ID, "stats").text
        assert not driver.find_element(By.ID, "key-box").is_displayed()  # this server asks for no key
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "shown-prompt").text.startswith("<b>not bold</b>")  # text, not HTML
        assert not driver.find_elements(By.CSS_SELECTOR, "#output b")
        shot = Path(tmp_path) / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
    finally:
        driver.quit()
