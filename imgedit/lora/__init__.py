"""LoRA: where LoRAs come from, the registry of those requests may choose, and loading them on every worker.

Parsing the ``lora`` field of a request is the wire format's (:mod:`imgedit.api.lora`); everything
after it is here: sources and their loading (:mod:`.sources`), the registry that switches LoRAs between
runs (:mod:`.registry`), the command log the workers share (:mod:`.sync`) and what the load and unload
endpoints do (:mod:`.admin`).
"""
