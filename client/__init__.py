"""Python client and the `reid` command line for the apnet-reid HTTP API (never imports server/)."""
