"""The forecasting domain: pure, engine-free code.

Data contract, demo-data generator, per-series cleaning, models, metrics, backtest and
model choice. Nothing here imports Spark, MLflow or deltalake.
"""

__version__ = "0.1.0"
