-- Roles and catalogue database of the compose `eds-db` server (catalogue + warehouses + demo sources).
-- Run once by the postgres image's entrypoint (psql, as superuser eds_admin) on an empty data volume.
-- Passwords come from the Docker secrets mounted at /run/secrets, read with psql backquotes: no secret
-- is written in this file. The per-platform warehouse databases and per-base source databases
-- (eds_wh_<platform>, eds_src_<base>: one per connection of config/network.yaml) are created later
-- by deploy/airflow/provision.py in the airflow-init job, as eds_warehouse / eds_source (CREATEDB),
-- so adding a base to the network file needs no change here.
\set ON_ERROR_STOP on

\set catalogue_password `cat /run/secrets/eds_catalogue_db_password`
\set warehouse_password `cat /run/secrets/eds_warehouse_db_password`
\set source_password `cat /run/secrets/eds_source_db_password`

CREATE ROLE eds_catalogue LOGIN PASSWORD :'catalogue_password';
CREATE ROLE eds_warehouse LOGIN CREATEDB PASSWORD :'warehouse_password';
CREATE ROLE eds_source LOGIN CREATEDB PASSWORD :'source_password';

CREATE DATABASE eds_catalogue OWNER eds_catalogue;
REVOKE ALL ON DATABASE eds_catalogue FROM PUBLIC;

-- Every role reaches the maintenance database only to create its own databases.
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE postgres TO eds_warehouse, eds_source;
