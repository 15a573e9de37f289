-- The erasure role: what erase_user_data and replay_erasures may do in the application database,
-- and nothing more (run by a database owner or superuser, after dreamseed_schema.sql; the ledger
-- database gets its grants from erasure_ledger.sql). Idempotent: run it again after a schema change.
--
--   lifecycle_erasure         NOLOGIN. The privileges below, and INSERT/SELECT on the ledger.
--   lifecycle_erasure_login   LOGIN, member of lifecycle_erasure: the login of the
--                             `erasure_postgres` and `erasure_ledger` connections. No password
--                             here: set one from the secrets backend or use IAM auth.
--
-- Exactly the statements the shipped subject map (include/policies/erasure_subject_map.yaml) plans:
--   app.sessions, app.user_uploads,
--   app.student_progress, app.users   SELECT, DELETE            (targets with action delete)
--   app.app_logs                      SELECT; UPDATE (user_id, context) only (the masked columns)
--   app.erasure_ledger (own database) SELECT, INSERT; its triggers refuse UPDATE, DELETE, TRUNCATE
-- No INSERT anywhere in the application, no DDL, no TRUNCATE. A map change that adds a target or a
-- masked column needs a grant here too: the erasure checks every planned statement against the
-- role's privileges (has_table_privilege, has_column_privilege) before its first write and fails
-- naming what is missing, so it never stops half-way.

DO $$
BEGIN
    CREATE ROLE lifecycle_erasure NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
DO $$
BEGIN
    CREATE ROLE lifecycle_erasure_login LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
ALTER ROLE lifecycle_erasure NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE lifecycle_erasure_login LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT;
GRANT lifecycle_erasure TO lifecycle_erasure_login;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO lifecycle_erasure', current_database());
END;
$$;

-- Grants only where the tables exist (the role script also runs on a database without the schema).
DO $$
DECLARE
    t text;
BEGIN
    IF to_regnamespace('app') IS NULL THEN
        RETURN;
    END IF;
    -- Start from nothing on the application's tables, so a rerun also takes back old grants. The
    -- ledger and its intake table keep the grants of erasure_ledger.sql.
    FOR t IN
        SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
        WHERE schemaname = 'app' AND tablename NOT IN ('erasure_ledger', 'erasure_requests')
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM lifecycle_erasure', t);
    END LOOP;
    EXECUTE 'GRANT USAGE ON SCHEMA app TO lifecycle_erasure';
    FOREACH t IN ARRAY ARRAY['app.sessions', 'app.user_uploads', 'app.student_progress', 'app.users'] LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT, DELETE ON %s TO lifecycle_erasure', t);
        END IF;
    END LOOP;
    IF to_regclass('app.app_logs') IS NOT NULL THEN
        GRANT SELECT ON app.app_logs TO lifecycle_erasure;
        GRANT UPDATE (user_id, context) ON app.app_logs TO lifecycle_erasure;
    END IF;
END;
$$;
