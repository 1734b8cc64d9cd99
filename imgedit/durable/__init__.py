"""What outlives a connection: stored images behind signed links, background jobs, replayed answers, webhooks.

Everything here lives in the server's data directory (``IMGEDIT_DATA_DIR``): an
SQLite database that every worker of the server shares, the key that signs
links, and the image store when it is a directory. Nothing here knows HTTP
routes or the model; :mod:`imgedit.serving` ties it to both.
"""
