"""Routing: virtual models that choose a model per request, a solver, learned routers."""

__all__: list[str] = []
