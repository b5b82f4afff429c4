"""The API's routes, one :class:`fastapi.APIRouter` per part: :mod:`.probes` (/health,
/ready), :mod:`.series` (series, forecasts, history, backtests, portfolio),
:mod:`.models` (/models/champion), :mod:`.predict` (/predict) and :mod:`.page` (the page,
its static files and the spec)."""
