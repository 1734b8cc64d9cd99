"""What runs on the device: the pipeline protocol, the call specification, one module per model family,
the built-in tiny models, devices and acceleration options.

This layer knows diffusers and torch, and nothing of HTTP.
"""
