"""The REST service and its page: forecasts and models handed to others over HTTP.

* :mod:`training.serving.app` — the FastAPI app (:func:`~training.serving.app.create_app`),
  its middleware (API key, body limit) and ``mmf serve``'s :func:`~training.serving.app.run`.
* :mod:`training.serving.state` — what the service holds in memory (the champion pyfunc,
  Gold forecasts pre-rendered per series) and the thread that follows the champion alias
  and the Delta table versions.
* :mod:`training.serving.schemas` — request and response models and their limits.

Needs the ``serve`` extra (``pip install mmf[serve]``).
"""
