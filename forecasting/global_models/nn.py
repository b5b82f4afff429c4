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

from typing import Any, Sequence

import numpy as np

from forecasting.errors import ConfigError
from forecasting.global_models.common import (
    GlobalForecaster,
    GlobalWeights,
    Panel,
    Spec,
    calendar,
    future_exog,
    future_ts,
    quantile_forecast,
    series_scale,
)

N_CALENDAR = 4
DEFAULTS: dict[str, Any] = {
    "input_size": None,  # steps of history as input; None = the longest season
    "hidden": 128,
    "blocks": 2,
    "layers": 2,
    "epochs": 10,
    "batch_size": 256,
    "lr": 1e-3,
    "windows_per_series": 64,
    "scale_tail": None,  # (loc, scale) from the last N points of the history; None = all
}


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
    allowed_params = tuple(DEFAULTS)

    def validate_params(self, params: dict[str, Any]) -> None:
        for key in ("hidden", "blocks", "layers", "epochs", "batch_size", "windows_per_series"):
            v = params.get(key, DEFAULTS[key])
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"global_nn.{key}", v, "an integer >= 1")
        for key in ("input_size", "scale_tail"):
            v = params.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ConfigError(f"global_nn.{key}", v, "null or an integer >= 2")
        lr = params.get("lr", DEFAULTS["lr"])
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
            raise ConfigError("global_nn.lr", lr, "a learning rate between 0 and 1")

    @classmethod
    def forecast_many(cls, weights, states, X, h, level):
        return forecast_many(weights, states, X, h, level)


def settings(params: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """Hyper-parameters with defaults filled in (``input_size`` resolved)."""
    out = {**DEFAULTS, **params}
    if out["input_size"] is None:
        out["input_size"] = max(2, spec.longest_season)
    return out


def architecture(params: dict[str, Any], spec: Spec, use_temperature: bool) -> dict[str, Any]:
    """The weights' ``meta``: everything inference needs besides the arrays."""
    s = settings(params, spec)
    L, H = int(s["input_size"]), int(spec.horizon)
    return {
        "input_size": L,
        "horizon": H,
        "quantiles": list(spec.quantiles),
        "season": int(min(spec.seasonalities[0] if spec.seasonalities else 1, L)),
        "context": N_CALENDAR + (H if use_temperature else 0),
        "hidden": int(s["hidden"]),
        "blocks": int(s["blocks"]),
        "layers": int(s["layers"]),
        "use_temperature": bool(use_temperature),
        "t_loc": 0.0,
        "t_scale": 1.0,
        "scale_tail": s["scale_tail"],
        "freq": spec.freq,
    }


# -- samples --------------------------------------------------------------------------
def temperature_scaling(panel: Panel) -> tuple[float, float]:
    values = (
        np.concatenate([t for t in panel.temperature if t is not None])
        if panel.has_temperature
        else np.zeros(1)
    )
    loc, scale = float(np.mean(values)), float(np.std(values))
    return loc, (scale if scale > 1e-8 else 1.0)


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
        ctx.append((np.asarray(temps, dtype=float) - meta["t_loc"]) / meta["t_scale"])
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


def forecast_many(
    weights: GlobalWeights,
    states: Sequence[dict[str, Any]],
    X: Sequence[np.ndarray | None],
    h: int,
    level: Sequence[int],
) -> list[dict[str, np.ndarray]]:
    meta, arrays = weights.meta, weights.arrays
    L, H = meta["input_size"], meta["horizon"]
    n = len(states)
    loc = np.array([s["loc"] for s in states], dtype=float)
    scale = np.array([s["scale"] for s in states], dtype=float)
    hist = np.array([np.asarray(s["last_y"], dtype=float)[-L:] for s in states])
    last = np.array([np.datetime64(s["last_ts"], "us") for s in states])
    temps = None
    if meta["use_temperature"]:
        blocks = -(-h // H) * H
        temps = np.zeros((n, blocks))
        for i, xi in enumerate(X):
            t = future_exog(xi, h, "global_nn", True)
            temps[i, :h] = t
            temps[i, h:] = t[-1]  # past h the block is cut off anyway
    quantiles = []
    done = 0
    while done < h:
        first = np.array([future_ts(t, meta["freq"], np.array([done + 1]))[0] for t in last])
        block_t = temps[:, done : done + H] if temps is not None else None
        x, ctx = make_inputs(meta, hist[:, -L:], loc, scale, first, block_t)
        q = forward(meta, arrays, x, ctx)  # (n, H, Q) scaled
        q = np.sort(q, axis=2) * scale[:, None, None] + loc[:, None, None]
        quantiles.append(q)
        mid = meta["quantiles"].index(0.5)
        hist = np.concatenate([hist, q[:, :, mid]], axis=1)
        done += H
    allq = np.concatenate(quantiles, axis=1)[:, :h, :]
    return [quantile_forecast(allq[i], meta["quantiles"], level) for i in range(n)]


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
