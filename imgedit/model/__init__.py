"""What runs on the device: the call specification, one adapter per model family, loading and options.

This layer knows diffusers and torch, and nothing of HTTP.
"""
