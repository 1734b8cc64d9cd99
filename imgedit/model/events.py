"""What the model layer reports of its own work, for the worker to count: one :class:`Event` per kind.

The model layer knows nothing of metrics. It reports each event here; the
worker, once warm-up is over, has each call the metric it feeds
(:mod:`imgedit.serving.startup`). The extra ranks of an edit set nothing, so
that an event of one logical call counts once, however many ranks run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

Args = ParamSpec("Args")


class Event(Generic[Args]):
    """One kind of event: reported with :meth:`__call__`, observed by at most one callable (None: nobody)."""

    def __init__(self) -> None:
        self._observer: Callable[Args, None] | None = None

    def observe(self, observer: Callable[Args, None] | None) -> None:
        """Have ``observer`` called with every report from now on (None: stop)."""
        self._observer = observer

    def __call__(self, *args: Args.args, **kwargs: Args.kwargs) -> None:
        if self._observer is not None:
            self._observer(*args, **kwargs)


#: Every forward call of the denoiser an edit makes, once per logical call.
denoiser_call: Event[[]] = Event()
#: Every lookup of a kept encoding, with whether it was found.
encoding_lookup: Event[[bool]] = Event()
