"""The champion the service answers ``/predict`` with: the many-models pyfunc of the
registered version that holds the ``champion`` alias, loaded once per version."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from forecasting import contract as C
from forecasting.config import Config
from registry import pyfunc
from registry.aliases import champion_info
from training.serving import schemas as S
from training.serving.errors import ServeError, brief
from training.serving.render import prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    info: dict[str, Any]
    model: Any  # mlflow.pyfunc.PyFuncModel
    holds: (
        Callable[[list[str]], set[str]] | None
    )  # which of some ids the pyfunc holds (None: unknown, let it raise)
    n_series: int
    loaded_at: str

    @property
    def version(self) -> str:
        return str(self.info["version"])


def follow(
    config: Config, held: Champion | None, problems: list[str], errors: list[BaseException]
) -> Champion | None:
    """The champion after one look at the alias: ``held`` again (its tags refreshed) while
    the alias stays, the new version once it moves, None without an alias. A version that
    fails to load keeps ``held`` serving; what went wrong is added to ``problems`` (one
    line) and the exception to ``errors`` (for the server log)."""
    info = champion_info(config)
    if info is None:
        problems.append(
            f"no champion: registered model {config.mlflow.registered_model!r} has no champion alias "
            "yet (run `mmf train`, or `mmf promote VERSION`)"
        )
        return None
    if held is not None and held.version == str(info["version"]):
        return replace(held, info=info)  # tags (promoted_at) may have moved
    try:
        return load(config, info)
    except Exception as exc:  # noqa: BLE001 - keep the old champion serving
        problems.append(f"champion version {info['version']} failed to load: {brief(exc)}")
        errors.append(exc)
        return held


def load(config: Config, info: dict[str, Any]) -> Champion:
    """Load the pyfunc of the version ``info`` names, and pay its first predict here."""
    model = pyfunc.load_version(config, info["version"])
    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    holds = getattr(inner, "holds", None)
    n_series = int(getattr(inner, "n_series", 0) or 0)
    first = inner.first_series() if hasattr(inner, "first_series") else None
    if first is not None:  # the first predict pays one-off imports: pay it here, not in a request
        model.predict(pd.DataFrame({C.SERIES_ID: [first], "horizon": [np.int64(1)]}))
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    log.info("loaded champion %s version %s (%s series)", info["name"], info["version"], n_series)
    return Champion(info=info, model=model, holds=holds, n_series=n_series, loaded_at=now)


def check(champion: Champion, items: list[S.PredictItem], max_horizon: int) -> None:
    """400 for a series listed twice, a horizon above ``max_horizon`` or temperatures that
    do not cover the horizon; 404 for series the champion does not hold."""
    seen: set[str] = set()
    for item in items:
        if item.series_id in seen:
            raise ServeError(
                400, f"series_id {item.series_id!r} is listed more than once: list each series once"
            )
        seen.add(item.series_id)
        if item.horizon > max_horizon:
            raise ServeError(
                400,
                f"horizon {item.horizon} of series {item.series_id!r} is above serve.max_horizon {max_horizon}",
            )
        if item.temperature is not None and len(item.temperature) != item.horizon:
            raise ServeError(
                400,
                f"series {item.series_id!r}: {len(item.temperature)} temperature value(s) for horizon "
                f"{item.horizon}: give exactly one value per future step",
            )
    unknown = sorted(seen - champion.holds(sorted(seen))) if champion.holds is not None else []
    if unknown:
        listed = ", ".join(repr(s) for s in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ServeError(
            404,
            f"{len(unknown)} series unknown to champion version {champion.version}: {listed} "
            "(it holds the series with status ok or fallback at training)",
        )


def scoring_frame(items: list[S.PredictItem]) -> pd.DataFrame:
    """The pyfunc's input: one row per series (a horizon), or one per future step where
    temperatures are given."""
    sids: list[str] = []
    horizons: list[int] = []
    temps: list[float] = []
    for item in items:
        n = item.horizon if item.temperature is not None else 1
        sids += [item.series_id] * n
        horizons += [item.horizon] * n
        temps += list(item.temperature) if item.temperature is not None else [np.nan]
    frame = pd.DataFrame({C.SERIES_ID: sids, "horizon": np.asarray(horizons, dtype=np.int64)})
    if any(item.temperature is not None for item in items):
        frame["temperature"] = np.asarray(temps, dtype=float)
    return frame


def predict(champion: Champion, items: list[S.PredictItem], max_horizon: int, levels: list[int]) -> bytes:
    """Checked ``items`` -> the champion's forecasts as a Prediction body."""
    check(champion, items, max_horizon)
    try:
        out = champion.model.predict(scoring_frame(items))
    except MlflowException as exc:
        raise ServeError(400, exc.message) from None
    return prediction(out, champion.info, levels)
