"""Serving: the request path, start-up, the worker that owns everything a BentoML worker serves, the option
objects built from the settings for the layers below, and the BentoML seam."""
