"""Upstream model-server protocols (one module each) and the HTTP client they share."""
