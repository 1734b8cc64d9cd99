"""The OpenAI wire format: the field table, body parsing, responses, routes, keys and request ids.

Nothing here runs a model: this layer turns HTTP into :class:`~imgedit.api.parse.EditRequest`
values and results back into OpenAI-shaped answers.
"""
