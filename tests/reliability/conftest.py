"""Fixtures of the reliability suite. The uninterrupted reference run is computed once
per session and only read afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from reliability_support import (
    N_SERIES,
    mlflow_template,
    mmf,
    new_lake,
    registry_state,
    tables,
    write_conf,
    write_raw,
)


@dataclass
class Reference:
    raw: Path
    lake: Path
    conf: Path
    template: Path  # an empty, migrated MLflow store to start new lakehouses with
    tables: dict[str, pd.DataFrame]
    registry: dict


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted `mmf nightly` on the tiny data set, shared by the whole suite."""
    tmp = tmp_path_factory.mktemp("reference")
    raw = write_raw(tmp / "raw")
    template = mlflow_template(tmp / "template")
    lake = new_lake(tmp / "lake", template)
    conf = write_conf(tmp / "conf.yaml", lake, raw, workers=2)
    done = mmf("nightly", "--conf", str(conf))
    assert done.returncode == 0, done.stderr
    ref = Reference(raw, lake, conf, template, tables(lake), registry_state(lake))
    assert ref.registry["aliases"] == {"challenger": "1", "champion": "1"}
    assert len(ref.tables["gold/forecasts"]) == N_SERIES * 24
    return ref
