"""MLflow: the one place that imports it. Modules, bottom to top (each imports only
those above it in this list, and :mod:`forecasting`):

* :mod:`registry.connection` — the tracking and registry URIs and the experiment.
* :mod:`registry.metrics` — a job's results summed up per series and per run (pandas
  only): the chosen models' backtest means and the run's aggregate metrics.
* :mod:`registry.plots` — the run's two plots (error distribution, forecasts vs
  actuals of a sample of series).
* :mod:`registry.runs` — one MLflow run per training job: its ``mmf.*`` tags, the
  configuration as params and ``conf.yaml``, the config hash, and reading a run back
  (``mmf reproduce``).
* :mod:`registry.results` — a job's results in its run, from the driver in a handful of
  calls (never one call per series): aggregate metrics, ``per_series.parquet``,
  ``results.parquet`` and the plots; ``results.parquet`` read back.
* :mod:`registry.recovery` — runs a killed job left: orphans marked ``FAILED``, a run
  found again and finished from its ``results.parquet``, or closed.
* :mod:`registry.global_models` — the global models' metrics, summaries, tuning trials
  (child runs) and the ``global_nn`` PyTorch copy.
* :mod:`registry.aliases` — the ``champion``/``challenger`` alias names and look-ups:
  a version that must exist, the champion and what its tags say.
* :mod:`registry.pyfunc` — one "many-models" pyfunc for every series, logged as
  *models from code*: nothing is pickled; the fitted models travel as explicit JSON
  data in a ``models.parquet`` artifact. Loading a version or the champion.
* :mod:`registry.promotion` — moving the aliases: the promotion gate (challenger vs
  champion scored on the same window after the champion's cutoff), promote and rollback.

Artifact layout of a training run (experiment artifact root ``<lakehouse>/mlartifacts``
for local lakehouses)::

    conf.yaml                   the full config (secrets redacted)
    per_series.parquet          series_id, status, reason, model, metric, metric_value,
                                n_obs, end + the chosen model's mean backtest metrics
    per_series.json             the same as an MLflow table (small runs only)
    results.parquet             the engine's rows (TRAIN_RESULT), to finish a killed job
    plots/forecast_vs_actuals.png
    plots/error_distribution.png
    gate.json                   the promotion decision (totals: metrics, common series, reason)
    gate_series.parquet         the gate's comparison per series (GATE_SERIES: window,
                                points, both metrics, why a series was left out)
    series_ids.json             the series subset (a job on some series only)
    global_models/<name>.json   a global model's params, fits and tuning summary

The many-models pyfunc is an MLflow 3 logged model named ``model`` of that run (stored
under ``<artifact root>/models/<model_id>/artifacts``): ``MLmodel``,
``mmf_many_models.py`` (the models-from-code entry point) and
``artifacts/models.parquet`` (series_id, model, model_json, end, freq, status, bucket;
sorted by bucket in row groups of at most 2,000 series, read lazily on load); a
*reference* bundle (``mlflow.bundle``) has no models.parquet: its ``MLmodel``'s
``model_config`` names the run's rows of gold/models at a pinned Delta version.
"""
