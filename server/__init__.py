"""The FastAPI retrieval service and its embedding backends (never imports torch)."""
