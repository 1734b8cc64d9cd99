"""Where the weights come from and how they load: sources, the loader, the weights plan, quantization,
the memory plan, and the BentoML model store.
"""
