"""The forecast page in a real headless browser (Debian's chromium + chromedriver, driven by
Selenium) against ``mmf serve`` started as a real process on a loopback port, over a
lakehouse built by the jobs with ids ``X1 … X12`` and two candidate models (the explorer:
natural order, sort by error, filters, history length, the candidates' backtest forecasts
overlaid on the actuals, portfolio chart, CSV export) and ``/docs``.

A missing browser fails this test rather than skipping it: CI installs chromium and
chromium-driver (see ``.ci/run``). The screenshots linked from the README are written by
these tests: ``MMF_SCREENSHOT_DIR=docs pytest tests/test_serve_browser.py``."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_serve_support import built_for_explorer, clean_env, free_port, stop, wait_for

from training.serving.listing import natural_key

CHROMIUM = os.environ.get("MMF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MMF_CHROMEDRIVER", "/usr/bin/chromedriver")
HISTORY_POINTS = 168  # the page's default history: 7 days of hourly readings


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    return built_for_explorer(tmp_path_factory)


@pytest.fixture(scope="module")
def selection(lake):
    return lake.lake.read("gold/selection").set_index("series_id")


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


def _wait(driver, seconds: float = 30):
    """A WebDriverWait that retries a condition whose element was re-rendered under it
    (the page redraws lists and charts as data arrives: a StaleElementReference there is
    "not yet", not a failure)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


def _choose(driver, select_id: str, value: str) -> None:
    """Select ``value`` in the ``<select>`` ``select_id``, found again when the page
    re-rendered it under the click (a stale element is "not yet")."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    def chosen(d) -> bool:
        Select(d.find_element(By.ID, select_id)).select_by_value(value)
        return True

    _wait(driver).until(chosen)


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
    downloads = tmp_path / "downloads"
    downloads.mkdir(exist_ok=True)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver


def _download(tmp_path, name: str, timeout: float = 20) -> list[dict[str, str]]:
    """The rows of the CSV file the page downloaded as ``name`` (removed once read)."""
    path = tmp_path / "downloads" / name
    deadline = time.monotonic() + timeout
    while not path.exists() or list(path.parent.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"{name} was not downloaded: {list(path.parent.iterdir())}"
        time.sleep(0.1)
    text = path.read_text()
    path.unlink()
    return list(csv.DictReader(io.StringIO(text)))


def _shot(element_or_driver, name: str, tmp_path) -> None:
    """A PNG screenshot, copied to ``MMF_SCREENSHOT_DIR`` when set (the README's images)."""
    shot = tmp_path / name
    saved = (
        element_or_driver.save_screenshot(str(shot))
        if hasattr(element_or_driver, "save_screenshot")
        else element_or_driver.screenshot(str(shot))
    )
    assert saved and shot.stat().st_size > 5_000
    if os.environ.get("MMF_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["MMF_SCREENSHOT_DIR"]) / name)


def _table_ids(driver, attr: str = "id") -> list[str]:
    """``data-<attr>`` of the series table's rows, read at once (the table is redrawn
    while the page loads)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#series-list tr')].map((r) => r.dataset[arguments[0]]);", attr
    )


def _svg_data(driver, box: str, *keys: str) -> list[str] | None:
    """The ``data-*`` fields ``keys`` of the chart in ``#box``, read in one script (the page
    redraws its charts as data arrives: an element handle can go stale between two
    reads); ``None`` while there is no chart."""
    return driver.execute_script(
        "const s = document.querySelector(`#${arguments[0]} svg[data-level]`);"
        "return s ? arguments[1].map((k) => s.dataset[k]) : null;",
        box,
        list(keys),
    )


def _select_values(driver, select_id: str) -> list[str]:
    """The option values of the ``<select>`` ``#select_id``, read at once."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} option`)].map((o) => o.value);", select_id
    )


def _no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def test_forecast_page_shows_a_series(served, lake, selection, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    target, other = lake.usable[2], lake.usable[6]
    horizon = lake.config.horizon
    driver = _browser(tmp_path)
    try:
        wait = _wait(driver)
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
            # the model name is the last thing drawn for the series picked (the chart and
            # title may still be the first series' while its forecast loads)
            model = d.find_element(By.ID, "model-name").text
            return (
                title == target
                and len(points) == horizon
                and metrics
                and model == selection.at[target, "model"]
            )

        wait.until(rendered)
        assert driver.find_element(By.ID, "model-version").text == "1"
        assert driver.find_element(By.ID, "series-status").text == "ok"
        chart = driver.find_element(By.CSS_SELECTOR, "#chart svg")
        assert chart.get_attribute("data-forecast-points") == str(horizon)
        assert chart.get_attribute("data-history-points") == str(HISTORY_POINTS)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chart svg polygon.band")) == len(
            lake.config.levels
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg path.history")
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg path.forecast")
        # the metrics table is drawn again when the live accuracy arrives: read it in a wait
        metric_names = wait.until(
            lambda d: [
                r.get_attribute("data-metric") for r in d.find_elements(By.CSS_SELECTOR, "#metrics tr")
            ]
        )
        assert {"mae", "rmse", "mase", "coverage_80"} <= set(metric_names)
        mase = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, '#metrics tr[data-metric="mase"] td:last-child').text
        )
        assert mase not in ("", "–")
        candidates = driver.find_element(By.ID, "candidates").text
        assert "seasonal_naive" in candidates and "weekly_naive" in candidates
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#portfolio-table tbody tr"))
        assert "series" in driver.find_element(By.ID, "portfolio-summary").text
        assert "champion mmf-many-models v1" in driver.find_element(By.ID, "champion").text
        assert not driver.find_element(By.ID, "message").is_displayed()
        assert driver.current_url.endswith(f"#series={target}")

        _shot(driver, "forecast_page.png", tmp_path)

        # an exact id and Enter selects that series
        search.clear()
        search.send_keys(other, Keys.ENTER)
        wait.until(
            lambda d: (
                d.find_element(By.ID, "series-title").text == other
                and len(d.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point")) == horizon
            )
        )
        _no_console_errors(driver)
    finally:
        driver.quit()


def test_forecast_page_names_an_unknown_series(served, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path)
    try:
        driver.get(served + "/#series=MTR-99999")
        _wait(driver).until(lambda d: d.find_element(By.ID, "message").is_displayed())
        assert "MTR-99999" in driver.find_element(By.ID, "message").text
        assert driver.find_element(By.ID, "series-title").text == "MTR-99999"
        assert driver.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point") == []
    finally:
        driver.quit()


def test_explorer_orders_sorts_filters_and_exports_the_series_table(served, lake, selection, tmp_path):
    from selenium.webdriver.common.by import By

    every = list(selection.index)
    natural = sorted(every, key=natural_key)
    assert natural[:3] == ["X1", "X2", "X3"] and natural != sorted(every)  # text order differs
    by_error = sorted(
        every, key=lambda s: (pd.isna(selection.at[s, "metric_value"]), selection.at[s, "metric_value"])
    )
    models = selection["model"].dropna()
    assert models.nunique() == 2, models.value_counts()  # both candidates are chosen somewhere
    model = models.value_counts().index[-1]
    driver = _browser(tmp_path)
    try:
        wait = _wait(driver)
        driver.get(served + "/")
        wait.until(lambda d: _table_ids(d) == natural)  # X1, X2, … X10, not X1, X10, X11 … X2

        _choose(driver, "sort", "error:asc")
        wait.until(lambda d: _table_ids(d) == by_error)
        errors = [float(e) for e in _table_ids(driver, "error") if e]
        np.testing.assert_allclose(errors, selection.loc[by_error[: len(errors)], "metric_value"])
        assert errors == sorted(errors) and len(errors) == len(lake.usable)
        assert driver.find_element(By.ID, "error-head").text == "error (mase)"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart svg .fc-point"))
        _shot(driver, "page_explorer.png", tmp_path)

        # filter by model (the counts come from the whole run), then by status
        _choose(driver, "filter-model", model)
        wanted = [s for s in by_error if selection.at[s, "model"] == model]
        wait.until(lambda d: _table_ids(d) == wanted)
        assert {c.text for c in driver.find_elements(By.CSS_SELECTOR, "#series-list td.model")} == {model}
        assert f"{model} ({len(wanted)})" in driver.find_element(By.ID, "filter-model").text

        driver.find_element(By.ID, "export-table").click()
        rows = _download(tmp_path, "series.csv")
        assert [r["series_id"] for r in rows] == wanted
        assert {r["model"] for r in rows} == {model} and {r["metric"] for r in rows} == {"mase"}
        np.testing.assert_allclose(
            [float(r["metric_value"]) for r in rows], selection.loc[wanted, "metric_value"]
        )

        _choose(driver, "filter-model", "")
        _choose(driver, "filter-status", "quarantined")
        wait.until(lambda d: _table_ids(d) == lake.quarantined)
        driver.find_element(By.ID, "export-table").click()
        rows = _download(tmp_path, "series.csv")
        assert [(r["series_id"], r["status"], r["model"]) for r in rows] == [
            (s, "quarantined", "") for s in lake.quarantined
        ]
        assert "negative_values" in rows[0]["reason"]
        _no_console_errors(driver)
    finally:
        driver.quit()


def test_history_length_redraws_and_the_series_exports_as_shown(served, lake, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    target = "X2"
    silver = lake.lake.read("silver/readings", filters=[("series_id", "=", target)]).sort_values("ts")
    gold = lake.lake.read("gold/forecasts", filters=[("series_id", "=", target)]).sort_values("ts")
    driver = _browser(tmp_path)

    def history_points(d):
        return int(d.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-history-points") or -1)

    try:
        wait = _wait(driver)
        driver.get(served + f"/#series={target}")
        wait.until(lambda d: history_points(d) == HISTORY_POINTS)  # 7 days by default
        history = Select(driver.find_element(By.ID, "history-length"))
        history.select_by_value("14")
        wait.until(lambda d: history_points(d) == 14 * 24)
        first = driver.find_element(By.CSS_SELECTOR, "#chart svg").get_attribute("data-history-from")
        assert first == (silver["ts"].iloc[-1] - pd.Timedelta(hours=14 * 24 - 1)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z"
        )
        history.select_by_value("all")
        wait.until(lambda d: history_points(d) == silver["y"].notna().sum())
        history.select_by_value("7")
        wait.until(lambda d: history_points(d) == HISTORY_POINTS)

        driver.find_element(By.ID, "export-series").click()
        rows = _download(tmp_path, f"{target}.csv")
        actual = [r for r in rows if r["kind"] == "actual"]
        forecast = [r for r in rows if r["kind"] == "forecast"]
        assert len(actual) == HISTORY_POINTS and len(forecast) == lake.config.horizon == len(gold)
        assert list(rows[0]) == ["series_id", "ts", "kind", "y", "yhat"] + [
            f"yhat_{side}_{lv}" for lv in sorted(lake.config.levels) for side in ("lower", "upper")
        ]
        tail = silver.tail(HISTORY_POINTS)
        assert [r["ts"] for r in actual] == list(tail["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        np.testing.assert_allclose([float(r["y"]) for r in actual], tail["y"])
        np.testing.assert_allclose([float(r["yhat"]) for r in forecast], gold["yhat"])
        for lv in lake.config.levels:
            np.testing.assert_allclose(
                [float(r[f"yhat_lower_{lv}"]) for r in forecast], gold[f"yhat_lower_{lv}"]
            )
            np.testing.assert_allclose(
                [float(r[f"yhat_upper_{lv}"]) for r in forecast], gold[f"yhat_upper_{lv}"]
            )
        assert {r["series_id"] for r in rows} == {target}
        _no_console_errors(driver)
    finally:
        driver.quit()


def test_candidate_overlays_from_the_stored_backtest_forecasts(served, lake, selection, tmp_path):
    """A series' candidates' backtest forecasts (gold/backtest_forecasts, every candidate
    kept) over the actuals of each window: a line per model, the chosen one's bands, a
    model hidden and shown again, another window, its errors, and the CSV."""
    from selenium.webdriver.common.by import By

    target = "X2"
    chosen = selection.at[target, "model"]
    gold = lake.lake.read("gold/backtest_forecasts", filters=[("series_id", "=", target)])
    windows = sorted(gold["window"].unique())
    assert len(windows) == lake.config.backtest.windows >= 2 and set(gold["model"]) == {
        "seasonal_naive",
        "weekly_naive",
    }
    driver = _browser(tmp_path)

    def overlay(d):
        found = d.find_elements(By.CSS_SELECTOR, "#overlay-chart svg[data-models]")
        return found[0] if found else None

    try:
        wait = _wait(driver)
        driver.get(served + f"/#series={target}")
        chart = wait.until(overlay)
        assert chart.get_attribute("data-window") == str(windows[-1])  # the latest window first
        assert set(chart.get_attribute("data-models").split(",")) == {"seasonal_naive", "weekly_naive"}
        lines = driver.find_elements(By.CSS_SELECTOR, "#overlay-chart path.cand")
        assert sorted(p.get_attribute("data-model") for p in lines) == ["seasonal_naive", "weekly_naive"]
        (bold,) = driver.find_elements(By.CSS_SELECTOR, "#overlay-chart path.cand.chosen")
        assert bold.get_attribute("data-model") == chosen
        assert len(driver.find_elements(By.CSS_SELECTOR, "#overlay-chart polygon.band")) == len(
            lake.config.levels
        )
        assert driver.find_elements(By.CSS_SELECTOR, "#overlay-chart path.actual")
        # the window's errors, as the page computes them from the rows it drew
        last = gold[gold["window"] == windows[-1]]
        for model, rows in last.groupby("model"):
            cell = driver.find_element(
                By.CSS_SELECTOR, f'#overlay-errors tr[data-model="{model}"] td:nth-child(2)'
            )
            assert float(cell.text.replace(",", "")) == pytest.approx(
                (rows["yhat"] - rows["y"]).abs().mean(), rel=1e-2
            )
        chosen_row = driver.find_element(By.CSS_SELECTOR, "#overlay-errors tr.chosen")
        assert chosen_row.get_attribute("data-model") == chosen
        driver.execute_script("document.getElementById('overlay').scrollIntoView()")
        _shot(driver.find_element(By.ID, "overlay"), "page_overlay.png", tmp_path)

        # hide the other model, then show it again; then the older window
        other = ({"seasonal_naive", "weekly_naive"} - {chosen}).pop()
        driver.find_element(By.CSS_SELECTOR, f'#overlay-models input[data-model="{other}"]').click()
        wait.until(lambda d: overlay(d).get_attribute("data-models") == chosen)
        driver.find_element(By.CSS_SELECTOR, f'#overlay-models input[data-model="{other}"]').click()
        wait.until(lambda d: len(overlay(d).get_attribute("data-models").split(",")) == 2)
        _choose(driver, "overlay-window", str(windows[0]))
        wait.until(lambda d: overlay(d).get_attribute("data-window") == str(windows[0]))

        driver.find_element(By.ID, "export-overlay").click()
        rows = _download(tmp_path, f"{target}-backtest-forecasts.csv")
        assert len(rows) == len(gold) == len(windows) * 2 * lake.config.horizon
        got = pd.DataFrame(rows).astype({"window": int, "y": float, "yhat": float})
        got = got.sort_values(["model", "window", "ts"], ignore_index=True)
        want = gold.sort_values(["model", "window", "ts"], ignore_index=True)
        assert list(got["model"]) == list(want["model"]) and set(got["run_id"]) == set(want["run_id"])
        np.testing.assert_allclose(got["y"], want["y"])
        np.testing.assert_allclose(got["yhat"], want["yhat"])
        for lv in lake.config.levels:
            np.testing.assert_allclose(got[f"yhat_upper_{lv}"].astype(float), want[f"yhat_upper_{lv}"])
        _no_console_errors(driver)
    finally:
        driver.quit()


def test_portfolio_chart_by_total_region_and_site(served, lake, tmp_path):
    from selenium.webdriver.common.by import By

    port = lake.lake.read("gold/portfolio")
    days = port.loc[port["level"] == "total", "day"].nunique()
    assert days >= 3  # a line, not a point
    driver = _browser(tmp_path)
    try:
        wait = _wait(driver)
        driver.get(served + "/")
        assert wait.until(lambda d: _svg_data(d, "portfolio-chart", "level", "lines")) == ["total", "1"]
        assert driver.find_elements(By.CSS_SELECTOR, '#portfolio-chart path.total[data-key="total"]')
        assert len(driver.find_elements(By.CSS_SELECTOR, "#portfolio-chart circle.pf-point")) == days
        # gold/portfolio carries no interval columns yet: no bands are drawn
        assert driver.find_elements(By.CSS_SELECTOR, "#portfolio-chart polygon") == []

        assert _select_values(driver, "portfolio-level") == ["total", "region", "site"]
        _choose(driver, "portfolio-level", "region")
        regions = sorted(port.loc[port["level"] == "region", "key"].unique())
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#portfolio-chart svg").get_attribute("data-lines")
                == str(len(regions))
            )
        )
        keys = [
            p.get_attribute("data-key")
            for p in driver.find_elements(By.CSS_SELECTOR, "#portfolio-chart path.part")
        ]
        assert keys == regions
        _shot(driver.find_element(By.ID, "portfolio"), "page_portfolio.png", tmp_path)

        driver.find_element(By.ID, "export-portfolio").click()
        rows = _download(tmp_path, "portfolio-v1.csv")
        assert len(rows) == len(port)
        totals = [r for r in rows if r["level"] == "total"]
        expected = port[port["level"] == "total"].sort_values("day")
        np.testing.assert_allclose([float(r["yhat"]) for r in totals], expected["yhat"])
        _no_console_errors(driver)
    finally:
        driver.quit()


def test_docs_is_swagger_ui_served_without_a_cdn(served, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path)
    try:
        driver.get(served + "/docs")
        _wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 8)
        paths = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/series", "/portfolio", "/predict"} <= paths
        scripts = [s.get_attribute("src") for s in driver.find_elements(By.TAG_NAME, "script")]
        assert scripts and all(src.startswith(served) for src in scripts)
        _no_console_errors(driver)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served_hierarchy(lake, tmp_path_factory):
    """A copy of the explorer's lakehouse and MLflow store with the hierarchy step run on
    its delivery (the shared one keeps its plain gold/portfolio), served by ``mmf serve``."""
    from forecasting.config import load_config
    from training.jobs import hierarchy as hierarchy_job
    from training.jobs.forecast import delivery_key
    from training.tables import Lakehouse

    tmp = tmp_path_factory.mktemp("hier-page")
    shutil.copytree(lake.root, tmp / "root")
    cfg = lake.config
    uri = cfg.mlflow.tracking_uri.replace(str(lake.root), str(tmp / "root"))
    hcfg = load_config(
        **{**cfg.to_dict(), "lakehouse": cfg.lakehouse.replace(str(lake.root), str(tmp / "root"))},
        **{"mlflow.tracking_uri": uri},
    )
    hlake = Lakehouse.from_config(hcfg)
    fc = hlake.read("gold/forecasts", columns=["model_version", "run_id", "silver_version"]).iloc[0]
    silver = int(fc["silver_version"])
    d = hierarchy_job.Delivery("1", fc["run_id"], delivery_key(silver, 1, hcfg.horizon), silver, hcfg.horizon)
    rep = hierarchy_job.hierarchy(hlake, hcfg, d)
    assert rep.n_nodes > 3, rep
    conf = tmp / "serve.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "lakehouse": hcfg.lakehouse,
                "levels": list(hcfg.levels),
                "serve": {"max_forecast_age_h": 0},
                "mlflow": {"tracking_uri": uri, "registered_model": hcfg.mlflow.registered_model},
            }
        )
    )
    port = free_port()
    log = open(tmp / "server.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "serve",
        "--conf",
        str(conf),
        "--port",
        str(port),
        "--no-access-log",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/ready", timeout=90, proc=proc)
    except AssertionError:
        stop(proc)
        log.close()
        raise AssertionError((tmp / "server.log").read_text()[-3000:]) from None
    yield url, hlake
    stop(proc)
    log.close()


def test_hierarchy_chart_shows_any_level_and_node(served_hierarchy, tmp_path):
    from selenium.webdriver.common.by import By

    url, hlake = served_hierarchy
    h = hlake.read("gold/hierarchy")
    steps = h.loc[h["level"] == "total", "ts"].nunique()

    def chart(d):
        return _svg_data(d, "hierarchy-chart", "level", "node", "points")

    driver = _browser(tmp_path)
    try:
        wait = _wait(driver)
        driver.get(url + "/")
        assert wait.until(chart) == ["total", "all", str(steps)]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#hierarchy-chart polygon.hier-band")) == 2  # 80, 95
        assert driver.find_elements(By.CSS_SELECTOR, '#hierarchy-chart path[data-key="coherent"]')
        assert driver.find_elements(By.CSS_SELECTOR, '#hierarchy-chart path[data-key="base"]')
        assert _select_values(driver, "hierarchy-level") == ["total", "region", "site", "series"]

        _choose(driver, "hierarchy-level", "site")
        sites = sorted(h.loc[h["level"] == "site", "node"].unique(), key=natural_key)
        wait.until(lambda d: (chart(d) or [None])[0] == "site")
        wait.until(lambda d: _select_values(d, "hierarchy-node") == sites)
        _choose(driver, "hierarchy-node", sites[-1])
        wait.until(lambda d: (chart(d) or [None, None])[1] == sites[-1])
        wait.until(lambda d: sites[-1] in d.find_element(By.ID, "hierarchy-summary").text)
        _shot(driver.find_element(By.ID, "hierarchy"), "page_hierarchy.png", tmp_path)

        _no_console_errors(driver)
        selected = wait.until(lambda d: d.execute_script("return state.selected"))
        _choose(driver, "hierarchy-level", "series")
        if selected in set(h.loc[h["level"] == "series", "node"]):
            wait.until(lambda d: (chart(d) or [None, None])[1] == selected)
        else:  # a quarantined series has no forecast: the page says so
            wait.until(lambda d: "no hierarchy" in d.find_element(By.ID, "hierarchy-summary").text)
    finally:
        driver.quit()
