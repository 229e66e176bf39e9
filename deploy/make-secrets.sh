#!/bin/sh
# Random secrets for compose.yaml, written once into deploy/secrets/ (or $MEDSTACK_SECRETS).
# The folder is 700 (no other host user gets in); the files are 644 because compose bind-mounts each
# one as it is and the services read them as their own non-root users (app 10001, flower, postgres).
# Existing files are kept, so re-running is safe; delete a file to rotate that secret (and restart).
#
#   deploy/make-secrets.sh              # then: docker compose --profile cpu up -d --wait
set -eu
dir=${MEDSTACK_SECRETS:-$(dirname "$0")/secrets}
mkdir -p "$dir"
chmod 700 "$dir"

random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

put() {  # put NAME VALUE: write unless present
    if [ -s "$dir/$1" ]; then echo "kept    $dir/$1"; else printf '%s' "$2" > "$dir/$1"; chmod 644 "$dir/$1"; echo "wrote   $dir/$1"; fi
}

put postgres_password "$(random)"
put redis_password "$(random)"
put flower_basic_auth "admin:$(random)"
# the URLs carry the passwords as they are now on disk
put database_url "postgresql+psycopg://medstack:$(cat "$dir/postgres_password")@postgres:5432/medstack"
put redis_url "redis://:$(cat "$dir/redis_password")@redis:6379/0"
# PACS profile (docs/pacs.md): the bundled Orthanc's password, and the DICOMweb servers jobs may name
put orthanc_password "$(random)"
put dicomweb_servers "{\"pacs\": {\"url\": \"http://orthanc:8042/dicom-web\", \"username\": \"medstack\", \"password\": \"$(cat "$dir/orthanc_password")\"}}"
# empty until `medstack keys create --name dicom-listener --scopes segmentation` (the listener waits for it)
[ -e "$dir/listener_api_key" ] || { : > "$dir/listener_api_key"; chmod 644 "$dir/listener_api_key"; echo "wrote   $dir/listener_api_key (empty: see compose.yaml)"; }
