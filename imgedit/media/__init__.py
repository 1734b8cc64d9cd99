"""Pixels in and out: fetching URLs, decoding images and masks, sizes, and encoding the output.

No HTTP server types and no torch here: only bytes, Pillow images and sizes.
"""
