"""One edit on several ranks: the model-side plans, starting the ranks, and running each call in lockstep.

:mod:`.plans` checks a layout (``IMGEDIT_ULYSSES_DEGREE``, ``IMGEDIT_RING_DEGREE``, ``IMGEDIT_TP_DEGREE``)
and splits the denoiser with diffusers' parallelism; :mod:`.group` is rank 0's side of a worker's ranks;
:mod:`.main` is every other rank's process; :mod:`.lockstep` keeps them running the same call.
"""
