#!/bin/sh
# Secrets as files: for every MEDSTACK_<NAME>_FILE=/path, export MEDSTACK_<NAME> with the file's content
# (trailing newline dropped), so passwords live in compose/Kubernetes secrets, never in the environment
# definition. A variable that is already set wins; a missing file stops the start with a message.
set -eu
for var in $(env | sed -n 's/^\(MEDSTACK_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
    file=$(printenv "${var}_FILE")
    if [ -n "$(printenv "$var" || true)" ]; then
        continue
    fi
    if [ ! -r "$file" ]; then
        echo "medstack-entrypoint: ${var}_FILE points at $file, which is missing or unreadable" >&2
        exit 78
    fi
    value=$(cat "$file")
    export "$var=$value"
    unset "${var}_FILE"
done
exec "$@"
