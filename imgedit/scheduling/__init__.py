"""What runs when: the engine (one pipeline run at a time per worker), its jobs, what happens at each
denoising step, fusion of queued requests into one batch, and the concurrency a replica advertises.
"""
