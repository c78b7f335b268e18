"""The QFLARE server: FastAPI app factory, routes, round coordinator."""
