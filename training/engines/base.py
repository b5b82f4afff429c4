"""The engine interface shared by the local and Spark engines."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import pyarrow as pa

from forecasting.config import Config

GroupFn = Callable[[pd.DataFrame, Any], pd.DataFrame]
ErrorFn = Callable[[str, str], pd.DataFrame]  # (group key, reason) -> result rows


class Engine:
    name = "base"

    @classmethod
    def from_config(cls, config: Config) -> Engine:
        """The engine as ``config`` sets it up (:func:`training.engines.get_engine`)."""
        raise NotImplementedError

    def map_groups(
        self,
        frame: pd.DataFrame,
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        raise NotImplementedError


def conform(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Exactly ``schema``'s columns, in order (a missing column is an error of ``fn``)."""
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"group function returned no column(s) {missing}; expected {schema.names}")
    return df[schema.names]
