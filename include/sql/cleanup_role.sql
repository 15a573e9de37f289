-- Least-privilege roles for the cleanup DAGs (run by a database owner or superuser, in the
-- application database, after dreamseed_schema.sql and erasure_ledger.sql). Idempotent.
--
--   lifecycle_cleanup            NOLOGIN. What the cleanup operators may do, and nothing more.
--   lifecycle_partition_owner    NOLOGIN. Owns app.student_progress and its partitions.
--   lifecycle_report             NOLOGIN. What the Data Lifecycle page reads: the audit and size
--                                tables, the inventory, and the ledger's request ids and times
--                                (never its subject columns). Grant it to the page's login.
--   lifecycle_cleanup_login      LOGIN, member of lifecycle_cleanup: the login of the
--                                `lifecycle_postgres` connection. No password here: set one from
--                                the secrets backend (ALTER ROLE ... PASSWORD) or use IAM auth.
--
-- What the cleanup role may do, by table (the tables of include/policies/lifecycle.yaml):
--   app.sessions, app.app_logs, app.users   SELECT, DELETE; UPDATE on the key column only
--   app.user_uploads                        SELECT, DELETE (rows deleted as children of users)
--   app.student_progress (partitioned)      SELECT, DELETE, and ownership through
--                                           lifecycle_partition_owner (premake, detach, drop)
--   app.cleanup_audit                       INSERT only: no SELECT, UPDATE or DELETE
--   app.cleanup_table_sizes, cleanup_s3_bytes  INSERT only (sizes recorded by the run summary)
--   app.s3_inventory                        SELECT, INSERT, DELETE (a rerun replaces its day)
--   app.erasure_ledger                      INSERT and SELECT only (its triggers refuse
--                                           UPDATE, DELETE and TRUNCATE for everyone)
--   catalogs and statistics                 read (pg_read_all_stats for vacuum progress)
-- Any other table: nothing. No DDL anywhere except on the partitioned parent it maintains.
--
-- Trade-offs, and why:
-- * SELECT ... FOR UPDATE, which locks a batch before it is deleted, needs UPDATE on at least
--   one column. The role gets UPDATE on the primary key column only; foreign keys (NO ACTION)
--   refuse changes to referenced keys. The operators never issue UPDATE.
-- * Detaching, dropping and creating partitions, and COMMENT ON a partition, require owning the
--   parent and the partition (there is no grantable privilege for them). The partitioned table
--   is therefore owned by lifecycle_partition_owner, of which the cleanup role is a member:
--   the cleanup role can alter or drop app.student_progress itself, and create tables in schema
--   app (CREATE on the schema, needed to create partitions). It owns no other table.
--   Partitions created by the premake task are owned by the login that ran it; run this script
--   again (it re-assigns every partition) or ALTER TABLE ... OWNER TO lifecycle_partition_owner.
-- * VACUUM needs ownership, or the MAINTAIN privilege on PostgreSQL 16+ (granted below when the
--   server has it). On PostgreSQL 15 VACUUM of a table the role does not own is skipped with a
--   warning: run the vacuum_analyze DAG with a connection whose login owns the tables, or make
--   that login a member of the owning role. app.student_progress is vacuumed through
--   lifecycle_partition_owner.

DO $$
BEGIN
    CREATE ROLE lifecycle_cleanup NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
DO $$
BEGIN
    CREATE ROLE lifecycle_partition_owner NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
DO $$
BEGIN
    CREATE ROLE lifecycle_cleanup_login LOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
ALTER ROLE lifecycle_cleanup NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE lifecycle_partition_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
ALTER ROLE lifecycle_cleanup_login LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT;
GRANT lifecycle_cleanup TO lifecycle_cleanup_login;
GRANT lifecycle_partition_owner TO lifecycle_cleanup;
GRANT pg_read_all_stats TO lifecycle_cleanup;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO lifecycle_cleanup', current_database());
END;
$$;

-- Start from nothing on every table of the schema, so a rerun also takes back old grants.
REVOKE ALL ON ALL TABLES IN SCHEMA app FROM lifecycle_cleanup;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA app FROM lifecycle_cleanup;
GRANT USAGE ON SCHEMA app TO lifecycle_cleanup;

-- Batched deletes: the target tables.
GRANT SELECT, DELETE ON app.sessions, app.app_logs, app.users TO lifecycle_cleanup;
GRANT UPDATE (id) ON app.sessions, app.app_logs, app.users TO lifecycle_cleanup;
-- Children deleted in the same batch as their parent.
GRANT SELECT, DELETE ON app.user_uploads, app.student_progress TO lifecycle_cleanup;

-- The audit table and the sizes the run summary records: append only.
GRANT INSERT ON app.cleanup_audit, app.cleanup_table_sizes, app.cleanup_s3_bytes TO lifecycle_cleanup;
-- The daily inventory: a rerun of a day deletes that day's rows of the bucket and writes them again.
GRANT SELECT, INSERT, DELETE ON app.s3_inventory TO lifecycle_cleanup;

-- The page's reader: read only, and of the ledger only what the page shows.
DO $$
BEGIN
    CREATE ROLE lifecycle_report NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END;
$$;
ALTER ROLE lifecycle_report NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO lifecycle_report', current_database());
END;
$$;
REVOKE ALL ON ALL TABLES IN SCHEMA app FROM lifecycle_report;
GRANT USAGE ON SCHEMA app TO lifecycle_report;
GRANT SELECT ON app.cleanup_audit, app.cleanup_table_sizes, app.cleanup_s3_bytes, app.s3_inventory
    TO lifecycle_report;

-- The erasure ledger (when installed): add and read entries.
DO $$
BEGIN
    IF to_regclass('app.erasure_ledger') IS NOT NULL THEN
        GRANT SELECT, INSERT ON app.erasure_ledger TO lifecycle_cleanup;
        GRANT SELECT (request_id, status, dry_run, requested_at, recorded_at) ON app.erasure_ledger
            TO lifecycle_report;
    END IF;
    IF to_regclass('app.erasure_requests') IS NOT NULL THEN
        GRANT SELECT (request_id, requested_at) ON app.erasure_requests TO lifecycle_report;
    END IF;
END;
$$;

-- The partitioned table and every partition belong to lifecycle_partition_owner.
GRANT USAGE, CREATE ON SCHEMA app TO lifecycle_partition_owner;
ALTER TABLE app.student_progress OWNER TO lifecycle_partition_owner;
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT relid FROM pg_partition_tree('app.student_progress'::regclass) WHERE relid <> 'app.student_progress'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO lifecycle_partition_owner', part);
    END LOOP;
END;
$$;

-- VACUUM without ownership: the MAINTAIN privilege exists from PostgreSQL 16 on.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        EXECUTE 'GRANT MAINTAIN ON app.sessions, app.app_logs, app.users, app.user_uploads TO lifecycle_cleanup';
    END IF;
END;
$$;
