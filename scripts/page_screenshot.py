"""Screenshot of the service's page (GET /) for docs/: a run served in-process, headless Chromium.

Usage:
    python scripts/page_screenshot.py RUN [--out docs/serve_page.png] [--items 2 ...]

Enters the given raw item ids (default: five items of the run) as a history, asks for the top 10 and
clicks the first result to show its neighbours, then saves a PNG. Needs the dev extra (selenium) and
Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import uvicorn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/serve_page.png"))
    parser.add_argument("--items", nargs="+", help="raw item ids of the history")
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from seqrec.serving.app import create_app
    from seqrec.serving.batcher import load_recommender

    recommender = load_recommender(args.run)
    items = args.items or [str(v) for v in recommender.loaded.item_ids[1:6].tolist()]
    server = uvicorn.Server(uvicorn.Config(create_app(recommender), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 30)
        box = driver.find_element(By.ID, "item-input")
        for n, item in enumerate(items, start=1):
            box.send_keys(item, Keys.ENTER)
            wait.until(lambda d, n=n: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == n)
        driver.find_element(By.ID, "recommend").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) > 0)
        driver.find_elements(By.CSS_SELECTOR, "#results tr")[0].click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar tr")) > 0)
        time.sleep(0.3)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
