"""A small thread-safe LRU for what the service reads less often than every request."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class LRU:
    """Keeps the ``size`` values last asked for; values are built outside the lock (a
    race builds twice, harmlessly: a key always identifies the same content)."""

    def __init__(self, size: int) -> None:
        self.size, self._data, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = build()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value
