"""The operators' console: one server-rendered page (Jinja2) and a few static files, served by the API itself.

The page is a client of the public HTTP API like any other: its script sends the operator's key as X-API-Key to
the /v1 routes, so searches and erasures made from it are authorised (and audited) like every other request.
"""
