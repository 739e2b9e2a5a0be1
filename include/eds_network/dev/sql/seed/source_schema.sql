-- Demo source database of one hospital EDS (eds_network.seed.create_source_schema).
-- Schema omop holds the clinical tables (created from the DQD catalogue in Python, plus the change
-- column _updated_at); schema identity holds what never leaves the hospital: identities and the
-- opposition registry. Idempotent: both schemas are dropped and recreated.
DROP SCHEMA IF EXISTS omop CASCADE;
DROP SCHEMA IF EXISTS identity CASCADE;
CREATE SCHEMA omop;
CREATE SCHEMA identity;

-- Deletions, recorded by the AFTER DELETE triggers so that incremental extraction can propagate them.
CREATE TABLE omop._deleted (
    table_name text NOT NULL,
    row_id bigint,
    deleted_at timestamptz NOT NULL
);
CREATE INDEX _deleted_deleted_at_idx ON omop._deleted (deleted_at);

-- BEFORE UPDATE: move the change column, unless the UPDATE set it itself.
CREATE FUNCTION omop._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW._updated_at IS NOT DISTINCT FROM OLD._updated_at THEN
        NEW._updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

-- AFTER DELETE: TG_ARGV[0] names the key column (primary key, or person_id for DEATH).
CREATE FUNCTION omop._record_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO omop._deleted (table_name, row_id, deleted_at)
    VALUES (
        TG_TABLE_NAME,
        CASE WHEN TG_NARGS > 0 THEN (to_jsonb(OLD) ->> TG_ARGV[0])::bigint END,
        clock_timestamp()
    );
    RETURN OLD;
END
$$;

CREATE TABLE identity.patient (
    person_id bigint PRIMARY KEY,
    ipp text NOT NULL UNIQUE,
    nir text NULL,
    last_name text NOT NULL,
    first_name text NOT NULL,
    birth_date date NOT NULL,
    sex char(1) NOT NULL CHECK (sex IN ('M', 'F')),
    postcode text,
    address text,
    city text,
    phone text,
    email text
);

CREATE TABLE identity.opposition (
    person_id bigint PRIMARY KEY REFERENCES identity.patient (person_id),
    recorded_at timestamptz NOT NULL,
    channel text NOT NULL DEFAULT 'courrier'
);
