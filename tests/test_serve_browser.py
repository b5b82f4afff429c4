"""The forecast page in a real headless browser (Debian's chromium + chromedriver, driven by
Selenium) against ``mmf serve`` started as a real process on a loopback port.

A missing browser fails this test rather than skipping it: CI installs chromium and
chromium-driver (see ``.ci/run``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_serve_support import HORIZON, built, clean_env, free_port, stop, wait_for

CHROMIUM = os.environ.get("MMF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MMF_CHROMEDRIVER", "/usr/bin/chromedriver")
HISTORY_POINTS = 168  # what the page asks for


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    return built(tmp_path_factory)


@pytest.fixture(scope="module")
def served(lake, tmp_path_factory):
    """``mmf serve --conf FILE --port P`` as a child process."""
    tmp = tmp_path_factory.mktemp("page")
    conf = tmp / "serve.yaml"
    cfg = lake.config
    conf.write_text(
        yaml.safe_dump(
            {
                "lakehouse": cfg.lakehouse,
                "levels": list(cfg.levels),
                "serve": {"max_forecast_age_h": 0},  # the generated history ends in 2024
                "mlflow": {
                    "tracking_uri": cfg.mlflow.tracking_uri,
                    "registered_model": cfg.mlflow.registered_model,
                },
            }
        )
    )
    port = free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.cli",
            "serve",
            "--conf",
            str(conf),
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=tmp,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/ready", timeout=90, proc=proc)
    except AssertionError:
        stop(proc)
        log.close()
        raise AssertionError((tmp / "server.log").read_text()[-3000:]) from None
    yield url
    stop(proc)
    log.close()


def _browser(tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"browser test needs {', '.join(missing)}: install them with "
            "`apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("browser test needs selenium: pip install -e '.[dev]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,960",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_forecast_page_shows_a_series(served, lake, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    target, other = lake.usable[2], lake.usable[6]
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(served + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#series-list button"))
        # search by prefix, then pick the series from the filtered list
        search = driver.find_element(By.ID, "search")
        prefix = target[:-1]
        search.send_keys(prefix)
        wait.until(
            lambda d: (
                (
                    ids := [
                        b.get_attribute("data-id")
                        for b in d.find_elements(By.CSS_SELECTOR, "#series-list button")
                    ]
                )
                and all(i.startswith(prefix) for i in ids)
                and target in ids
            )
        )
        driver.find_element(By.CSS_SELECTOR, f'#series-list button[data-id="{target}"]').click()

        def rendered(d):
            title = d.find_element(By.ID, "series-title").text
            points = d.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point")
            metrics = d.find_elements(By.CSS_SELECTOR, "#metrics tr")
            return title == target and len(points) == HORIZON and metrics

        wait.until(rendered)
        assert driver.find_element(By.ID, "model-name").text == "seasonal_naive"
        assert driver.find_element(By.ID, "model-version").text == "1"
        assert driver.find_element(By.ID, "series-status").text == "ok"
        chart = driver.find_element(By.CSS_SELECTOR, "#chart svg")
        assert chart.get_attribute("data-forecast-points") == str(HORIZON)
        assert chart.get_attribute("data-history-points") == str(HISTORY_POINTS)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart svg polygon.band")) == len(
            lake.config.levels
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg path.history")
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg path.forecast")
        metric_names = [
            r.get_attribute("data-metric") for r in driver.find_elements(By.CSS_SELECTOR, "#metrics tr")
        ]
        assert {"mae", "rmse", "mase", "coverage_80"} <= set(metric_names)
        mase = driver.find_element(By.CSS_SELECTOR, '#metrics tr[data-metric="mase"] td:last-child').text
        assert mase not in ("", "–")
        assert "seasonal_naive" in driver.find_element(By.ID, "candidates").text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#portfolio-table tbody tr"))
        assert "series" in driver.find_element(By.ID, "portfolio-summary").text
        assert "champion mmf-many-models v1" in driver.find_element(By.ID, "champion").text
        assert not driver.find_element(By.ID, "message").is_displayed()
        assert driver.current_url.endswith(f"#series={target}")

        shot = tmp_path / "forecast_page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("MMF_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["MMF_SCREENSHOT_DIR"]) / shot.name)

        # an exact id and Enter selects that series
        search.clear()
        search.send_keys(other, Keys.ENTER)
        wait.until(
            lambda d: (
                d.find_element(By.ID, "series-title").text == other
                and len(d.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point")) == HORIZON
            )
        )
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_forecast_page_names_an_unknown_series(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(tmp_path)
    try:
        driver.get(served + "/#series=MTR-99999")
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "message").is_displayed())
        assert "MTR-99999" in driver.find_element(By.ID, "message").text
        assert driver.find_element(By.ID, "series-title").text == "MTR-99999"
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point") == []
    finally:
        driver.quit()
