#!/bin/sh
# `medstack` inside the image (keys, export, valuation). Through the entrypoint, so that
# `docker compose exec gateway medstack keys create ...` also reads the *_FILE secrets.
exec medstack-entrypoint python -m medstack.cli "$@"
