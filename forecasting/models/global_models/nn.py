"""``global_nn``: one N-BEATS-style network for all series, with quantile outputs.

Input of one window ending at origin ``o`` of a series: its last ``input_size`` values
scaled by the series' own ``(loc, scale)``; the calendar of the first forecast step
(hour of day and day of week as sin/cos); and, when every series has it, the
temperature of the ``horizon`` forecast steps (scaled once for all series). Output:
``horizon x n_quantiles`` in the scaled unit, the quantiles being 0.5 and the bounds of
the configured levels (0.025, 0.1, 0.5, 0.9, 0.975 for levels 80 and 95), trained with
the pinball loss.

Network (generic N-BEATS blocks, Oreshkin et al. 2020): each block is an MLP of
``layers`` ReLU layers of width ``hidden`` over ``[residual input, context]`` that emits
a backcast (subtracted from the residual input) and a forecast (summed over blocks). The
forecast is added to the seasonal naive of the scaled input (the last season repeated),
so the blocks learn a correction of that strong baseline and few epochs suffice.

Training runs in PyTorch (:func:`build_module` here, trained data-parallel by
:mod:`training.deep`), inference in numpy from the exported weights: the many-models pyfunc forecasts without torch, and the
weights are plain arrays (``blocks.<b>.layers.<l>.weight`` ... as PyTorch names them).
Forecasts beyond ``horizon`` steps roll the median forward, block by block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forecasting.models.base import Param
from forecasting.models.global_models.common import (
    Forecasts,
    GlobalForecaster,
    GlobalWeights,
    Levels,
    Panel,
    Regressors,
    Spec,
    States,
    block_starts,
    calendar,
    future_temperatures,
    quantile_forecast,
    scaled_exog,
    series_scale,
    unpack_states,
)

N_CALENDAR = 4
PARAMETERS = (
    # steps of history as input; None = the longest season
    Param("input_size", int, None, within="[2, inf)", nullable=True),
    Param("hidden", int, 128, within="[1, inf)"),
    Param("blocks", int, 2, within="[1, inf)"),
    Param("layers", int, 2, within="[1, inf)"),
    Param("epochs", int, 10, within="[1, inf)"),
    Param("batch_size", int, 256, within="[1, inf)"),
    Param("lr", float, 1e-3, within="(0, 1)"),
    Param("windows_per_series", int, 64, within="[1, inf)"),
    # (loc, scale) from the last N points of the history; None = all
    Param("scale_tail", int, None, within="[2, inf)", nullable=True),
)
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}


def settings(params: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """Hyper-parameters with defaults filled in (``input_size`` resolved)."""
    out = {**DEFAULTS, **params}
    if out["input_size"] is None:
        out["input_size"] = max(2, spec.longest_season)
    return out


def architecture(
    params: dict[str, Any], spec: Spec, use_temperature: bool, n_exog: int = 1
) -> dict[str, Any]:
    """The weights' ``meta``: everything inference needs besides the arrays."""
    s = settings(params, spec)
    L, H = int(s["input_size"]), int(spec.horizon)
    return {
        "input_size": L,
        "horizon": H,
        "quantiles": list(spec.quantiles),
        "season": int(min(spec.seasonalities[0] if spec.seasonalities else 1, L)),
        "context": N_CALENDAR + (H * n_exog if use_temperature else 0),
        "hidden": int(s["hidden"]),
        "blocks": int(s["blocks"]),
        "layers": int(s["layers"]),
        "use_temperature": bool(use_temperature),
        "n_exog": int(n_exog) if use_temperature else 0,
        "t_loc": 0.0,
        "t_scale": 1.0,
        "scale_tail": s["scale_tail"],
        "freq": spec.freq,
    }


# -- samples --------------------------------------------------------------------------
def make_inputs(
    meta: dict[str, Any],
    y_last: np.ndarray,
    loc: np.ndarray,
    scale: np.ndarray,
    first_ts: np.ndarray,
    temps: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, ctx)`` for a batch: ``y_last`` (n, L) raw, ``loc``/``scale`` (n,),
    ``first_ts`` (n,) the first forecast step, ``temps`` (n, H) or None."""
    x = (np.asarray(y_last, dtype=float) - loc[:, None]) / scale[:, None]
    ctx = [calendar(first_ts)]
    if meta["use_temperature"]:
        scaled = scaled_exog(temps, meta)  # (n, H), or (n, H, k) for declared covariates
        ctx.append(scaled.reshape(len(scaled), -1))
    return x.astype(np.float32), np.concatenate(ctx, axis=1).astype(np.float32)


def build_samples(
    panel: Panel, meta: dict[str, Any], windows_per_series: int, seed: int
) -> dict[str, np.ndarray]:
    """Training windows drawn from every series (``windows_per_series`` origins each,
    without replacement, seeded): ``x`` (N, L), ``ctx`` (N, C), ``y`` (N, H) scaled."""
    L, H = meta["input_size"], meta["horizon"]
    rng = np.random.default_rng(seed)
    xs, cs, ys = [], [], []
    for i in range(len(panel)):
        y, ts = panel.y[i], panel.ts[i]
        n = len(y)
        if n < L + H:
            continue
        origins = np.arange(L, n - H + 1)
        if len(origins) > windows_per_series:
            origins = np.sort(rng.choice(origins, size=windows_per_series, replace=False))
        loc, scale = series_scale(y, meta.get("scale_tail"))
        idx = origins[:, None] + np.arange(-L, 0)[None, :]
        tgt = origins[:, None] + np.arange(H)[None, :]
        temps = panel.temperature[i][tgt] if meta["use_temperature"] else None
        k = len(origins)
        x, ctx = make_inputs(meta, y[idx], np.full(k, loc), np.full(k, scale), ts[origins], temps)
        xs.append(x)
        cs.append(ctx)
        ys.append(((y[tgt] - loc) / scale).astype(np.float32))
    if not xs:
        raise ValueError(
            f"no series has the {L + H} observations a training window needs (input_size + horizon)"
        )
    return {"x": np.concatenate(xs), "ctx": np.concatenate(cs), "y": np.concatenate(ys)}


# -- inference ------------------------------------------------------------------------
def forward(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], x: np.ndarray, ctx: np.ndarray
) -> np.ndarray:
    """The network in numpy: ``(n, H, Q)`` scaled quantiles (same maths as
    :func:`build_module`)."""
    H, Q, m = meta["horizon"], len(meta["quantiles"]), meta["season"]
    x = np.asarray(x, dtype=np.float32)
    ctx = np.asarray(ctx, dtype=np.float32)
    resid = x
    total = np.zeros((x.shape[0], H * Q), dtype=np.float32)
    for b in range(meta["blocks"]):
        h = np.concatenate([resid, ctx], axis=1)
        for j in range(meta["layers"]):
            h = np.maximum(
                h @ arrays[f"blocks.{b}.layers.{j}.weight"].T + arrays[f"blocks.{b}.layers.{j}.bias"], 0.0
            )
        if f"blocks.{b}.back.weight" in arrays:  # every block but the last
            resid = resid - (h @ arrays[f"blocks.{b}.back.weight"].T + arrays[f"blocks.{b}.back.bias"])
        total = total + h @ arrays[f"blocks.{b}.fore.weight"].T + arrays[f"blocks.{b}.fore.bias"]
    base = x[:, -m:][:, np.arange(H) % m]
    return total.reshape(-1, H, Q) + base[:, :, None]


def forecast_many(weights: GlobalWeights, states: States, X: Regressors, h: int, level: Levels) -> Forecasts:
    meta, arrays = weights.meta, weights.arrays
    L, H = meta["input_size"], meta["horizon"]
    loc, scale, hist, last = unpack_states(states, L)
    k = int(meta.get("n_exog", 1))
    temps = future_temperatures(X, h, H, "global_nn", k) if meta["use_temperature"] else None
    quantiles = []
    for done, first in block_starts(last, meta["freq"], h, H):
        block_t = temps[:, done : done + H] if temps is not None else None
        x, ctx = make_inputs(meta, hist[:, -L:], loc, scale, first, block_t)
        q = forward(meta, arrays, x, ctx)  # (n, H, Q) scaled
        q = np.sort(q, axis=2) * scale[:, None, None] + loc[:, None, None]
        quantiles.append(q)
        mid = meta["quantiles"].index(0.5)
        hist = np.concatenate([hist, q[:, :, mid]], axis=1)
    allq = np.concatenate(quantiles, axis=1)[:, :h, :]
    return [quantile_forecast(allq[i], meta["quantiles"], level) for i in range(len(states))]


class GlobalNN(GlobalForecaster):
    """Global N-BEATS-style MLP with quantile outputs (trained with PyTorch).

    Params (``model_params.global_nn``): ``input_size`` (default: the longest season,
    168 for hourly data), ``hidden`` (128), ``blocks`` (2), ``layers`` (2), ``epochs``
    (10), ``batch_size`` (256, the global batch across processes), ``lr`` (1e-3, Adam),
    ``windows_per_series`` (64 training windows drawn per series), ``scale_tail``
    (None: scale each series on its whole history).
    """

    name = "global_nn"
    description = "Global N-BEATS-style network across all series, quantile intervals (deep extra)."
    requires = ("torch",)
    extra = "deep"
    parameters = PARAMETERS
    forecast_many = staticmethod(forecast_many)


# -- the PyTorch twin (training, the MLflow PyTorch flavour) ----------------------------
def _module_class():
    import torch
    from torch import nn

    class NBeatsNet(nn.Module):
        """Generic N-BEATS blocks over ``[residual input, context]`` plus the seasonal
        naive of the input; output ``(n, H, Q)`` scaled quantiles. The last block has no
        backcast (nothing would use it, and DDP needs every parameter in the loss)."""

        def __init__(self, meta: dict[str, Any]) -> None:
            super().__init__()
            self.meta = dict(meta)
            L, C, hidden = meta["input_size"], meta["context"], meta["hidden"]
            H, Q = meta["horizon"], len(meta["quantiles"])
            blocks = []
            for b in range(meta["blocks"]):
                block = nn.Module()
                sizes = [L + C] + [hidden] * meta["layers"]
                block.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
                if b < meta["blocks"] - 1:  # the last block's backcast would feed nothing
                    block.back = nn.Linear(hidden, L)
                block.fore = nn.Linear(hidden, H * Q)
                blocks.append(block)
            self.blocks = nn.ModuleList(blocks)
            m = meta["season"]
            self.register_buffer("seasonal_index", torch.arange(H) % m + (L - m), persistent=False)

        def forward(self, x, ctx):
            H, Q = self.meta["horizon"], len(self.meta["quantiles"])
            resid = x
            total = None
            for block in self.blocks:
                h = torch.cat([resid, ctx], dim=1)
                for layer in block.layers:
                    h = torch.relu(layer(h))
                if hasattr(block, "back"):
                    resid = resid - block.back(h)
                f = block.fore(h)
                total = f if total is None else total + f
            base = x[:, self.seasonal_index]
            return total.reshape(-1, H, Q) + base.unsqueeze(-1)

    return NBeatsNet


def build_module(meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None):
    """An ``NBeatsNet`` for ``meta``, with ``arrays`` loaded when given (for the
    MLflow PyTorch flavour, and tests comparing it with the numpy inference)."""
    import torch

    module = _module_class()(meta)
    if arrays is not None:
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in arrays.items()}
        module.load_state_dict(state)
    return module
