"""One router per resource: search and embed, the gallery, health and metrics."""
