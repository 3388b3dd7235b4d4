"""The FastAPI retrieval service: app factory, routes, middleware, resources, auth, error mapping (no torch)."""
