#!/usr/bin/env python3
"""A real browser on the chat page, for tests/chat_browser.rs: headless
Chromium (Debian's chromium and chromium-driver) driven by selenium.

    chat_browser.py URL SCREENSHOT.png

Steps, each announced on stdout (one line, flushed) so that the Rust test,
which plays a TCP member and owns the server, can act in between:

    joined LINE      the page shows its own `* guestN joined`
    sent             typed `hello from chromium` and pressed Enter
    saw LINE         the page shows a line containing `from tcp` (the test
                     sends it after it has received ours)
    shot             a phone-sized screenshot saved
    lost             after the test stops the server: the page says so
    reconnected      after the test starts it again: connected, joined again

Exit 0 when every step happened within 20 s; 1 and the reason otherwise; 3
when selenium or chromium is not installed.
"""

import os
import shutil
import sys
import tempfile
import time

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:
    print("python3 module selenium is not installed (pip install selenium)", file=sys.stderr)
    sys.exit(3)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def say(what):
    print(what, flush=True)


def wait_for(what, cond, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    print(f"chat_browser: timed out waiting for {what}", file=sys.stderr)
    sys.exit(1)


def lines(driver):
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#lines li")]


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, shot = sys.argv[1], sys.argv[2]
    if not CHROMIUM or not DRIVER:
        print("chromium or chromedriver is not installed (Debian: chromium chromium-driver)", file=sys.stderr)
        sys.exit(3)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a browser
    profile = tempfile.mkdtemp(prefix="edgeloop-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=412,760"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(url)
        joined = wait_for("our own join", lambda: next((l for l in lines(driver) if l.endswith(" joined")), None))
        say(f"joined {joined}")
        box = driver.find_element(By.ID, "text")
        box.send_keys("hello from chromium" + Keys.ENTER)
        say("sent")
        saw = wait_for("the TCP member's line", lambda: next((l for l in lines(driver) if "from tcp" in l), None))
        say(f"saw {saw}")
        time.sleep(0.3)  # let the last line paint
        driver.save_screenshot(shot)
        say("shot")
        status = driver.find_element(By.ID, "status")
        wait_for("the page to say the connection is lost",
                 lambda: "lost" in status.get_attribute("class") and "connection lost" in status.text)
        say("lost")
        before = len([l for l in lines(driver) if l.endswith(" joined")])
        wait_for("a reconnection", lambda: status.text == "connected"
                 and len([l for l in lines(driver) if l.endswith(" joined")]) > before, timeout=30)
        say("reconnected")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
