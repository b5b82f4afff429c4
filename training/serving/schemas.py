"""Request and response models of the REST API (pydantic), and the limits they enforce.

Values outside the documented ranges (a series id that does not match
:data:`SERIES_ID_PATTERN`, a horizon below 1, a page size above 1000) are answered with
400 and a message; a body that does not have the documented shape or types (strict: no
bool for an int, no list for a string, no NaN or infinity) with 422 (FastAPI's list of
validation errors); a body above :data:`MAX_BODY_BYTES` or with more than
:data:`MAX_SERIES` series with 413.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt

# Conservative on purpose: a series id never carries '/', '%', spaces or quotes, so it
# can never be read as a path, a URI or an expression wherever it ends up.
SERIES_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
PREFIX_PATTERN = r"^[A-Za-z0-9._:-]{0,128}$"
MODEL_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
STATUSES = ("ok", "fallback", "failed", "quarantined", "cold_start")
MAX_BODY_BYTES = 1_048_576  # 1 MiB
MAX_SERIES = 1000  # series per /predict request
MAX_PAGE = 1000  # series per /series page
MAX_HISTORY_POINTS = 5000
API_KEY_HEADER = "X-API-Key"

SeriesId = Annotated[
    str,
    Field(
        pattern=SERIES_ID_PATTERN,
        description="1 to 128 characters of A-Z a-z 0-9 . _ : -",
        examples=["MTR-00001"],
    ),
]
UtcTime = Annotated[
    str, Field(description="UTC time, ISO 8601 with a Z suffix", examples=["2024-01-22T00:00:00Z"])
]
Metric = float | None  # NaN and infinities travel as null
# a request's number: an int or a float, never a bool, never NaN or an infinity
Temperature = Annotated[float, Strict(), Field(allow_inf_nan=False)]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


# -- probes ----------------------------------------------------------------------------
class Health(_Out):
    status: str = Field(description="always `ok` while the process serves requests")


class Ready(_Out):
    ready: bool
    reason: str | None = Field(None, description="why the service is not ready (when ready is false)")
    champion_version: str | None = None
    forecasts_table_version: int | None = None
    forecasts_model_version: str | None = Field(
        None, description="model version the cached forecasts come from (the champion's once it has forecast)"
    )
    n_series: int | None = Field(None, description="series with a cached forecast")
    forecasts_cutoff: UtcTime | None = Field(
        None,
        description="the newest cutoff of the cached forecasts: older than serve.max_forecast_age_h "
        "hours makes the service not ready",
    )


class Error(_Out):
    detail: str


# -- model -----------------------------------------------------------------------------
class Champion(_Out):
    name: str = Field(description="registered model name")
    version: str = Field(description="registered model version that holds the champion alias")
    run_id: str | None = Field(None, description="MLflow run that trained it")
    silver_version: int | None = Field(None, description="silver/readings Delta version it was trained on")
    promoted_at: str | None = Field(None, description="UTC time it last became champion")
    metric: str | None = None
    metric_value: Metric = Field(None, description="mean backtest metric over its series")
    n_series: int | None = Field(None, description="series the many-models pyfunc holds")
    aliases: list[str] = []
    loaded_at: UtcTime = Field(description="when this process loaded the version")


# -- series ----------------------------------------------------------------------------
class SeriesItem(_Out):
    series_id: str
    status: str | None = Field(None, description="ok, fallback, failed or quarantined")
    reason: str | None = None
    model: str | None = Field(None, description="the chosen model")
    metric: str | None = None
    metric_value: Metric = None


class SeriesCounts(_Out):
    status: dict[str, int] = Field(default_factory=dict, description="series of the run by status")
    model: dict[str, int] = Field(default_factory=dict, description="series of the run by chosen model")


class SeriesPage(_Out):
    run_id: str = Field(description="the champion's training run (gold/selection rows of this run)")
    model_version: str
    total: int = Field(description="series matching the prefix and filters")
    items: list[SeriesItem]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` for the next page; null on the last page"
    )
    counts: SeriesCounts = Field(
        default_factory=SeriesCounts, description="the whole run's series by status and by model (unfiltered)"
    )


class Point(_Out):
    ts: UtcTime
    yhat: Metric
    lower: dict[str, Metric] = Field(description='lower bound per interval level (`"80"`, `"95"`)')
    upper: dict[str, Metric] = Field(description="upper bound per interval level")


class LiveAccuracy(_Out):
    """The series' latest live accuracy (gold/drift, ``mmf monitor``): its delivered
    forecasts scored against the actuals of the last ``monitoring.days`` days."""

    silver_version: int = Field(description="the silver/readings version whose actuals were scored")
    window_start: UtcTime | None = Field(None, description="first actual scored")
    window_end: UtcTime | None = Field(None, description="last actual scored")
    n: int = Field(description="forecast steps scored")
    mae: Metric
    mase: Metric = Field(
        description="scaled by the in-sample seasonal naive MAE up to each forecast's cutoff"
    )
    bias: Metric = Field(description="mean of yhat - y: positive means over-forecasting")
    coverage: dict[str, Metric] = Field(
        description='share of actuals inside each interval level (`"80"`, `"95"`)'
    )
    backtest_mase: Metric = Field(description="the forecasting model's backtest MASE")
    drifted: bool = Field(
        description="live MASE above monitoring.factor x backtest MASE on each of the last monitoring.min_days days"
    )


class Forecast(_Out):
    series_id: str
    model: str | None = Field(None, description="the model that produced the forecast")
    model_version: str = Field(description="registered model version that produced it")
    run_id: str | None = None
    cutoff: UtcTime | None = Field(None, description="last timestamp of the training data")
    created_at: UtcTime | None = None
    table_version: int = Field(description="gold/forecasts Delta version read")
    levels: list[int]
    points: list[Point]
    accuracy: LiveAccuracy | None = Field(
        None,
        description="live accuracy of the series' delivered forecasts (null until `mmf monitor` scored some)",
    )


class HistoryPoint(_Out):
    ts: UtcTime
    y: Metric
    is_filled: bool | None = None
    is_outlier: bool | None = None


class History(_Out):
    series_id: str
    silver_version: int = Field(description="silver/readings Delta version read")
    points: list[HistoryPoint]


class BacktestRow(_Out):
    model: str
    window: int
    cutoff: UtcTime | None
    metrics: dict[str, Metric]


class Backtest(_Out):
    series_id: str
    run_id: str
    status: str | None = None
    chosen_model: str | None = None
    metric: str | None = Field(None, description="the metric the model was chosen on")
    chosen: dict[str, Metric] = Field(description="the chosen model's metrics, mean over its windows")
    rows: list[BacktestRow] = Field(description="every candidate and window (gold/backtest)")


class BacktestForecastModel(_Out):
    model: str
    yhat: list[Metric] = Field(description="the point forecast of each step of the window")
    lower: dict[str, list[Metric]] = Field(description='lower bounds per interval level (`"80"`, `"95"`)')
    upper: dict[str, list[Metric]] = Field(description="upper bounds per interval level")


class BacktestForecastWindow(_Out):
    window: int = Field(description="0 = the oldest backtest window")
    cutoff: UtcTime | None = Field(description="the window's last training time")
    ts: list[UtcTime] = Field(description="the times of the window's forecast steps")
    y: list[Metric] = Field(description="the actuals of those steps")
    models: list[BacktestForecastModel] = Field(description="each stored candidate's forecast")


class BacktestForecasts(_Out):
    series_id: str
    run_id: str
    chosen_model: str | None = None
    table_version: int = Field(description="gold/backtest_forecasts Delta version read")
    levels: list[int]
    windows: list[BacktestForecastWindow] = Field(
        description="the backtest windows of the champion's run (gold/backtest_forecasts), oldest first"
    )


class PortfolioRow(_Out):
    level: str = Field(description="total, region or site")
    key: str
    day: str = Field(description="ISO date")
    yhat: Metric
    n_series: int | None
    lower: dict[str, Metric] = Field(
        default_factory=dict,
        description='lower bound per interval level (`"80"`, `"95"`) when gold/portfolio carries intervals',
    )
    upper: dict[str, Metric] = Field(default_factory=dict, description="upper bound per interval level")


class Portfolio(_Out):
    model_version: str
    table_version: int = Field(description="gold/portfolio Delta version read")
    levels: list[int] = Field(
        default_factory=list,
        description="interval levels of the rows (empty: no intervals in gold/portfolio)",
    )
    rows: list[PortfolioRow]
    method: str | None = Field(
        None,
        description="the reconciliation method when the totals are gold/hierarchy's coherent ones "
        "(then /hierarchy serves every level); null: plain sums of the series' forecasts",
    )


class HierarchyRow(_Out):
    node: str
    ts: str = Field(description="ISO 8601 time (UTC)")
    yhat: Metric = Field(description="coherent forecast (reconciled)")
    yhat_base: Metric = Field(description="the node's own forecast before reconciling")
    n_series: int | None
    lower: dict[str, Metric] = Field(default_factory=dict, description="lower bound per interval level")
    upper: dict[str, Metric] = Field(default_factory=dict, description="upper bound per interval level")


class Hierarchy(_Out):
    model_version: str
    delivery: int = Field(description="the forecast delivery the levels were reconciled for")
    method: str = Field(description="mint_shrink or bottom_up")
    table_version: int = Field(description="gold/hierarchy Delta version read")
    levels: list[int] = Field(default_factory=list, description="interval levels of the rows")
    level: str = Field(description="total, region, site or series")
    hierarchy_levels: list[str] = Field(description="the levels the table holds, top first")
    nodes: list[str] = Field(description="the nodes of the level (series: only the one asked for)")
    rows: list[HierarchyRow]


# -- scoring ---------------------------------------------------------------------------
class PredictItem(BaseModel):
    """One series to forecast. Types are strict: a JSON string for the id, a JSON integer
    for the horizon (`true`, `"3"` or `3.5` are refused, not converted) and finite
    JSON numbers for the temperatures."""

    model_config = ConfigDict(extra="forbid")

    series_id: Annotated[SeriesId, Strict()]
    horizon: StrictInt = Field(ge=1, description="steps after the series' training end: 1..serve.max_horizon")
    temperature: list[Temperature] | None = Field(
        None,
        description="future temperature for steps 1..horizon (exactly `horizon` values), for models that use it",
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: list[PredictItem] = Field(
        min_length=1, description=f"the series to forecast, each once (at most {MAX_SERIES})"
    )


class SeriesForecast(_Out):
    series_id: str
    model: str | None
    points: list[Point]


class Prediction(_Out):
    name: str = Field(description="registered model name")
    model_version: str = Field(description="the champion version that answered")
    run_id: str | None
    levels: list[int]
    forecasts: list[SeriesForecast]
