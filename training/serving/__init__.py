"""The REST service and its page: forecasts and models handed to others over HTTP.

* :mod:`training.serving.app` — :func:`~training.serving.app.create_app` puts the FastAPI
  app together, and ``mmf serve``'s :func:`~training.serving.app.run`.
* :mod:`training.serving.routes` — the routers: probes, series, models, predict, the page.
* :mod:`training.serving.security` — the API key (a FastAPI security dependency);
  :mod:`training.serving.middleware` — the body limit and the last-resort 500;
  :mod:`training.serving.handlers` — errors as responses (:mod:`training.serving.errors`:
  one line each); :mod:`training.serving.protocol` — uvicorn's configuration and the
  request read timeout.
* :mod:`training.serving.state` — what the service answers from, put together from
  :mod:`~training.serving.snapshot` (what a request reads),
  :mod:`~training.serving.refresher` (the thread that follows the champion alias and the
  Delta table versions), :mod:`~training.serving.champion` (the champion pyfunc),
  :mod:`~training.serving.timetravel` (older forecasts), :mod:`~training.serving.render`
  (rows to JSON bodies) and :mod:`~training.serving.cache`.
* :mod:`training.serving.schemas` — request and response models and their limits.

Needs the ``serve`` extra (``pip install mmf[serve]``).
"""
