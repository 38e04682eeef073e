#!/bin/sh
# Make the cluster in $PGDATA when it has none ($POSTGRES_USER, $POSTGRES_PASSWORD,
# $POSTGRES_DB), then run postgres on $PGPORT, listening on $POSTGRES_LISTEN (default all).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (the password of $POSTGRES_USER)}"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --no-locale \
    --auth-local=trust --auth-host=scram-sha-256 > /dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres > /dev/null
  fi
  echo "edgedl-postgres: cluster made in $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi
exec postgres -D "$PGDATA" -p "$PGPORT" -c "listen_addresses=${POSTGRES_LISTEN:-*}" \
  -c unix_socket_directories=/tmp "$@"
