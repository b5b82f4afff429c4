"""MLflow: the one place that imports it.

* :mod:`registry.tracking` — one MLflow run per training job: configuration as params
  and ``conf.yaml``, aggregate metrics, the per-series table and two plots, all logged
  from the driver in a handful of calls (never one call per series); and clean-up of
  runs a killed job left ``RUNNING``.
* :mod:`registry.pyfunc` — one "many-models" pyfunc for every series, logged as
  *models from code*: nothing is pickled; the fitted models travel as explicit JSON
  data in a ``models.parquet`` artifact.
* :mod:`registry.promotion` — the ``challenger``/``champion`` aliases, the promotion
  gate (challenger vs champion on the series they share) and rollback.

Artifact layout of a training run (experiment artifact root ``<lakehouse>/mlartifacts``
for local lakehouses)::

    conf.yaml                   the full config (secrets redacted)
    per_series.parquet          series_id, status, reason, model, metric, metric_value,
                                n_obs, end + the chosen model's mean backtest metrics
    per_series.json             the same as an MLflow table (small runs only)
    results.parquet             the engine's rows (TRAIN_RESULT), to finish a killed job
    plots/forecast_vs_actuals.png
    plots/error_distribution.png
    gate.json                   the promotion decision

The many-models pyfunc is an MLflow 3 logged model named ``model`` of that run (stored
under ``<artifact root>/models/<model_id>/artifacts``): ``MLmodel``,
``mmf_many_models.py`` (the models-from-code entry point) and
``artifacts/models.parquet`` (series_id, model, model_json, end, freq, status).
"""
