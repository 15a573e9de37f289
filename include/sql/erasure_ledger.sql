-- Erasure ledger: one row per step outcome of every erasure request, append-only.
-- Holds a keyed hash (HMAC-SHA256) of the subject id and a Fernet token of it for replays after a
-- restore: never the id or the email in clear. Idempotent: safe to run again.

CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.erasure_ledger (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id     text        NOT NULL CHECK (request_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{2,63}$'),
    subject_hash   text        NOT NULL CHECK (subject_hash ~ '^[0-9a-f]{64}$'),
    subject_token  text,
    status         text        NOT NULL
                   CHECK (status IN ('started', 'completed', 'failed', 'replayed', 'noop')),
    dry_run        boolean     NOT NULL,
    counts         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    reason         text,
    requested_by   text,
    requested_at   timestamptz,
    dag_id         text        NOT NULL,
    run_id         text        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS erasure_ledger_request_idx ON app.erasure_ledger (request_id, recorded_at);
CREATE INDEX IF NOT EXISTS erasure_ledger_status_idx ON app.erasure_ledger (status, recorded_at);

COMMENT ON TABLE app.erasure_ledger IS
    'Append-only record of right-to-erasure requests; subject ids only as HMAC and Fernet token';

-- Append-only for everyone, the table owner included: UPDATE, DELETE and TRUNCATE are refused.
CREATE OR REPLACE FUNCTION app.erasure_ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER IF EXISTS erasure_ledger_append_only ON app.erasure_ledger;
CREATE TRIGGER erasure_ledger_append_only
    BEFORE UPDATE OR DELETE ON app.erasure_ledger
    FOR EACH ROW EXECUTE FUNCTION app.erasure_ledger_refuse_change();

DROP TRIGGER IF EXISTS erasure_ledger_no_truncate ON app.erasure_ledger;
CREATE TRIGGER erasure_ledger_no_truncate
    BEFORE TRUNCATE ON app.erasure_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION app.erasure_ledger_refuse_change();

-- Erasure requests, registered before the DAG runs (python -m data_lifecycle.erasure.intake
-- register --user-id N): the DAG is triggered with the request id only, so the subject id never
-- enters dag_run.conf, the UI, the REST API or the metadata DB. The id is kept only sealed.
CREATE TABLE IF NOT EXISTS app.erasure_requests (
    request_id     text        PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{2,63}$'),
    subject_hash   text        NOT NULL CHECK (subject_hash ~ '^[0-9a-f]{64}$'),
    subject_token  text        NOT NULL,
    requested_by   text,
    requested_at   timestamptz NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

DROP TRIGGER IF EXISTS erasure_requests_append_only ON app.erasure_requests;
CREATE TRIGGER erasure_requests_append_only
    BEFORE UPDATE OR DELETE ON app.erasure_requests
    FOR EACH ROW EXECUTE FUNCTION app.erasure_ledger_refuse_change();

DROP TRIGGER IF EXISTS erasure_requests_no_truncate ON app.erasure_requests;
CREATE TRIGGER erasure_requests_no_truncate
    BEFORE TRUNCATE ON app.erasure_requests
    FOR EACH STATEMENT EXECUTE FUNCTION app.erasure_ledger_refuse_change();

-- The erasure DAGs' role: it may add and read ledger rows, nothing else on this table. Grant it to
-- the login role of the DAGs' connection (GRANT lifecycle_erasure TO <login role>).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lifecycle_erasure') THEN
        CREATE ROLE lifecycle_erasure NOLOGIN;
    END IF;
END;
$$;
GRANT USAGE ON SCHEMA app TO lifecycle_erasure;
REVOKE ALL ON app.erasure_ledger, app.erasure_requests FROM lifecycle_erasure;
GRANT SELECT, INSERT ON app.erasure_ledger, app.erasure_requests TO lifecycle_erasure;

-- The Data Lifecycle page's reader (see cleanup_role.sql): request ids, statuses and times only,
-- never the subject columns. Grant it to the page's login in this database too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lifecycle_report') THEN
        CREATE ROLE lifecycle_report NOLOGIN;
    END IF;
END;
$$;
GRANT USAGE ON SCHEMA app TO lifecycle_report;
REVOKE ALL ON app.erasure_ledger, app.erasure_requests FROM lifecycle_report;
GRANT SELECT (request_id, status, dry_run, requested_at, recorded_at) ON app.erasure_ledger TO lifecycle_report;
GRANT SELECT (request_id, requested_at) ON app.erasure_requests TO lifecycle_report;
