"""Serving: the request path, the engine that runs one call at a time, start-up, and the BentoML seam."""
