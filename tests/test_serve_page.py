"""GET / (the page) in a real browser: headless Chromium through Selenium shows what the API answers.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver``; ``scripts/setup-env.sh dev``
installs them where they are missing and it runs as root with apt-get. The browser test is skipped
only where they cannot be installed that way (not root, or no apt-get); anywhere else a missing
browser is an error that says how to install it.
"""

from __future__ import annotations

import os
import shutil

import httpx
import numpy as np
import pytest

from seqrec.config import DataConfig
from seqrec.data.titles import item_titles
from seqrec.serving.app import create_app
from seqrec.serving.batcher import load_recommender
from tests.test_serve import CONFIG, history_of, inter, run_dir, running  # noqa: F401 - fixtures

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
INSTALLABLE = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def test_item_titles_from_movielens_files(tmp_path):
    (tmp_path / "movies.dat").write_text("10::Toy Story (1995)::Animation\n20::Heat (1995)::Action\n", encoding="latin-1")
    (tmp_path / "sas_to_original_items.txt").write_text("1 20\n2 10\n3 99\n")
    data = DataConfig(path=str(tmp_path / "log.txt"))
    titles = item_titles(data, np.array([0, 1, 2, 3, 4]))
    assert titles == [None, "Heat (1995)", "Toy Story (1995)", None, None]
    assert item_titles(DataConfig(path=None), np.array([0, 1])) is None
    assert item_titles(DataConfig(path=str(tmp_path / "elsewhere" / "log.txt")), np.array([0, 1])) is None


@pytest.fixture(scope="module")
def titled(run_dir):  # noqa: F811
    """The demo run with a made-up title per item, so that the page's titles can be checked."""
    recommender = load_recommender(run_dir)
    recommender.titles = [None] + [f"Film {raw} ({1950 + i})" for i, raw in enumerate(recommender.loaded.item_ids[1:])]
    return recommender


def test_items_endpoint_finds_ids_and_titles(titled):
    with running(create_app(titled)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/items", params={"q": "i7"}).json()[0] == {"id": "i7", "title": "Film i7 (1956)"}
        found = c.get("/items", params={"q": "film i1", "limit": 5}).json()
        assert len(found) == 5 and all(e["title"].lower().startswith("film i1") for e in found)
        assert len(c.get("/items").json()) == 20 and c.get("/items", params={"limit": 0}).status_code == 422
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<script" in page.text and "http" not in page.text.replace("http-equiv", "")  # no CDN, no URLs
        body = c.post("/recommend", json={"history": ["i1", "i2"], "k": 3}).json()
        assert body["titles"] == [f"Film {i} ({1950 + int(i[1:]) - 1})" for i in body["items"]]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        if not INSTALLABLE:
            pytest.skip("headless Chromium is not installed and cannot be here: installing Debian's chromium and "
                        "chromium-driver needs root and apt-get")
        pytest.fail("chromium/chromedriver missing: run `. scripts/setup-env.sh dev` (as root it installs Debian's "
                    "chromium and chromium-driver) or `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def shown_rows(driver, tbody: str) -> list[tuple[str, str, float]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{tbody} tr")
    return [(r.get_attribute("data-id"), r.find_element(By.CSS_SELECTOR, "td.name").text,
             float(r.find_element(By.CSS_SELECTOR, "td.score").text)) for r in rows]


def test_page_shows_what_the_api_answers(browser, titled, inter, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    history = history_of(inter, 4)[-6:]
    with running(create_app(titled)) as base, httpx.Client(base_url=base) as c:
        want = c.post("/recommend", json={"history": history, "k": 10}).json()
        browser.get(base + "/")
        wait = WebDriverWait(browser, 20)
        box = browser.find_element(By.ID, "item-input")
        for n, item in enumerate(history[:-1], start=1):  # typed ids, Enter adds each
            box.send_keys(item, Keys.ENTER)
            wait.until(lambda d, n=n: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == n)
        query = f"film {history[-1]} ("
        box.send_keys(query)  # the last one picked by its title from the suggestions
        # Once the list answers the whole query no later answer replaces it (older ones are dropped).
        wait.until(lambda d: d.find_element(By.ID, "suggestions").get_attribute("data-query") == query.strip())
        next(li for li in browser.find_elements(By.CSS_SELECTOR, "#suggestions li")
             if li.get_attribute("data-id") == history[-1]).click()
        entered = [li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#history li")]
        assert entered == history
        browser.find_element(By.ID, "recommend").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 10)
        rows = shown_rows(browser, "results")
        assert [r[0] for r in rows] == want["items"]
        assert [r[1].split("\n")[0].rsplit(" ", 1)[0] for r in rows] == want["titles"]
        np.testing.assert_allclose([r[2] for r in rows], want["scores"], atol=6e-5)

        first = browser.find_elements(By.CSS_SELECTOR, "#results tr")[0]
        first.click()  # its item-to-item neighbours
        neighbours = c.post("/similar", json={"item_id": want["items"][0], "k": 10}).json()
        wait.until(lambda d: [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "#similar tr")]
                   == neighbours["items"])
        assert want["items"][0] in browser.find_element(By.ID, "similar-of").text
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000

