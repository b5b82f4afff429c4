"""Models-from-code entry point of the many-models pyfunc.

MLflow copies this file into the logged model and runs it at load time; it only names
the class. The fitted models themselves are data (``artifacts/models.parquet``, or a
reference bundle's rows of gold/models), so nothing is pickled and loading never
unpickles anything.
"""

import mlflow

from registry.pyfunc import ManyModels

mlflow.models.set_model(ManyModels())
