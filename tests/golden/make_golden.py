"""Write the golden files of serialization format 1: ``models_v1/<model>.json``.

Each file is ``model.to_dict()`` of a model fitted on a short, seeded series, plus
``expected``: the forecast that the fitted model gave (``h``, ``level``, the future
regressors ``X`` or ``None``, and the ``mean`` / ``lo-*`` / ``hi-*`` arrays).
``tests/test_models.py`` loads every file and checks that it still forecasts the same.

Run from the repository root when a model or the format changes on purpose (a new
format version goes to a new ``models_v<N>`` folder; old folders stay):

    .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from forecasting.generator import generate
from forecasting.models import MODELS, get_model

OUT = Path(__file__).parent / "models_v1"
H = 48
LEVEL = (80, 95)
DAYS = 15  # > 2 weeks, so mstl keeps its weekly season


def golden_series() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``y``, ``X`` (temperature, n x 1) and ``ts`` of ``DAYS`` days, and the ``H`` future
    temperatures."""
    readings = generate(n_series=1, days=DAYS + 2, freq="h", seed=11, clean=True).readings
    n = DAYS * 24
    y = readings["y"].to_numpy(dtype=float)[:n]
    temperature = readings["temperature"].to_numpy(dtype=float)[:, None]
    ts = readings["ts"].to_numpy()[:n]
    return y, temperature[:n], ts, temperature[n : n + H]


def main() -> None:
    y, X, ts, X_future = golden_series()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, cls in sorted(MODELS.items()):
        exog = cls.supports_exog
        model = get_model(name).fit(y, X=X if exog else None, ts=ts)
        future = X_future if exog else None
        forecast = model.predict(H, X=future, level=LEVEL)
        data = model.to_dict()
        data["expected"] = {
            "h": H,
            "level": list(LEVEL),
            "X": None if future is None else future.tolist(),
            **{key: values.tolist() for key, values in forecast.items()},
        }
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
