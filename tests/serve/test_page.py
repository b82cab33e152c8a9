"""serve/page.html in a real headless Chromium: a streamed completion, a chat, a console without errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gptscratch.chat import ASSISTANT_END, CHAT_VOCAB_SIZE, decode_reply, render_prompt
from gptscratch.generate import generate
from gptscratch.serve import serving_in_thread
from gptscratch.serve.engine import Engine
from tests.helpers import assistant, tiny_model, user


def browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


needs_browser = pytest.mark.skipif(browser_paths() is None, reason="no Chromium and chromedriver on this machine "
                                   "(.ci/run installs Debian's chromium and chromium-driver where apt can)")


def chromium():
    """Headless Chromium that keeps its console's messages for `get_log("browser")`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium_path, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="module")
def chat_url():
    """A second server, on a tiny random chat model."""
    model = tiny_model(vocab_size=CHAT_VOCAB_SIZE)
    engine = Engine(model, max_batch=4).start()
    with serving_in_thread(engine, "tiny-chat") as base:
        yield base, model
    engine.stop()


@needs_browser
def test_the_page_streams_a_completion_in_headless_chromium(url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
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


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@needs_browser
def test_the_page_loads_with_no_error_in_the_browsers_console(url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model").text.startswith("tiny"))
        # the page declares its (empty) icon, and a browser that asks for /favicon.ico anyway gets no 404
        assert driver.execute_script("return document.querySelector('link[rel=icon]').href") == "data:,"
        driver.get(url + "/favicon.ico")
        assert console_errors(driver) == []
        driver.get(url + "/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model").text.startswith("tiny"))
        # a model without the chat tokens offers no chat mode
        assert not driver.find_element(By.ID, "mode-chat").is_enabled()
    finally:
        driver.quit()


@needs_browser
def test_the_chat_mode_streams_each_reply_and_a_new_chat_starts_over(chat_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, model = chat_url

    def reply_to(messages: list[dict]) -> str:
        ids = render_prompt(messages)
        out = generate(model, torch.tensor([ids]), 12, temperature=0.0, stop_token=ASSISTANT_END)
        return decode_reply(out[0, len(ids):].tolist())

    driver = chromium()
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "mode-chat").is_enabled())
        driver.find_element(By.ID, "mode-chat").click()
        assert not driver.find_element(By.ID, "prompt").is_displayed()
        for id_, value in (("max_tokens", "12"), ("temperature", "0")):
            field = driver.find_element(By.ID, id_)
            field.clear()
            field.send_keys(value)

        def say(text: str) -> None:
            box = driver.find_element(By.ID, "message")
            box.send_keys(text)
            driver.find_element(By.ID, "send").click()
            wait.until(lambda d: d.find_element(By.ID, "send").text == "Send"
                       and len(d.find_elements(By.CSS_SELECTOR, "#turns .turn")) % 2 == 0)

        first = "<b>Hello</b> there"
        say(first)
        turns = driver.find_elements(By.CSS_SELECTOR, "#turns .turn")
        assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"]
        assert turns[0].get_attribute("textContent") == first and not driver.find_elements(By.CSS_SELECTOR, "#turns b")
        answer = reply_to([user(first)])
        assert turns[1].get_attribute("textContent") == answer
        say("And then?")  # the second reply answers the whole conversation so far
        turns = driver.find_elements(By.CSS_SELECTOR, "#turns .turn")
        assert turns[3].get_attribute("textContent") == reply_to([user(first), assistant(answer), user("And then?")])
        assert driver.find_element(By.ID, "error").text == ""
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, "#turns .turn") == []
        say("Hi")  # a new chat forgets the old one
        turns = driver.find_elements(By.CSS_SELECTOR, "#turns .turn")
        assert len(turns) == 2 and turns[1].get_attribute("textContent") == reply_to([user("Hi")])
        assert console_errors(driver) == []
    finally:
        driver.quit()
