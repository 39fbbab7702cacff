#!/bin/sh
# The two roles slotpool connects as; run once by the postgres image when its volume is new.
#   slotpool_owner  owns the database and its schema; `slotpool migrate` connects as it
#                   (SLOTPOOL_MIGRATION_DATABASE_URL).
#   slotpool_app    the runtime role (DATABASE_URL); owns nothing, and gets its table
#                   privileges from `slotpool migrate`.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$OWNER_DB_PASSWORD" -v app_password="$APP_DB_PASSWORD" \
    -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE slotpool_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE slotpool_app LOGIN PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO slotpool_owner;
ALTER SCHEMA public OWNER TO slotpool_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO slotpool_app;
GRANT USAGE ON SCHEMA public TO slotpool_app;
SQL
