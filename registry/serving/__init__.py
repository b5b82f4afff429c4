"""The REST service and its page: forecasts and models handed to others over HTTP.

* :mod:`registry.serving.app` — the FastAPI app (:func:`~registry.serving.app.create_app`),
  its middleware (API key, body limit) and ``mmf serve``'s :func:`~registry.serving.app.run`.
* :mod:`registry.serving.state` — what the service holds in memory (the champion pyfunc,
  Gold forecasts pre-rendered per series) and the thread that follows the champion alias
  and the Delta table versions.
* :mod:`registry.serving.schemas` — request and response models and their limits.

Needs the ``serve`` extra (``pip install mmf[serve]``).
"""
