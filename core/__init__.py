"""MedStack's base layer: settings, database, artifact store, API keys, the Triton launcher and the
run folder. It imports nothing from ``services``, ``export``, ``workers``, ``gateway`` or the
``medstack`` application package (``tests/unit/test_layers.py`` enforces it)."""
