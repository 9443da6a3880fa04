-- fastify-changefeed migration 001: from the scripts before migrations were kept to the least-privilege model.
--
-- Before: the trigger functions ran as the owner (SECURITY DEFINER), were executable by PUBLIC, and took their
-- channel and mode from the trigger's arguments. After: they run as the writer and one owner's function
-- (changefeed_announce) acts for them on installed tables only (sql/changefeed.sql). Apply this file, then
-- sql/changefeed.sql, then install again (the plugin does all three at start; by hand: SELECT * FROM
-- changefeed_watch(...) and changefeed_watch_events(...) as before). Idempotent; a new database passes through it.
-- (functions named with their schema until the search path is set: another role may have made functions in the schema)
DO $$
BEGIN
  IF pg_catalog.current_schema() IS NULL THEN
    RAISE EXCEPTION 'changefeed: no schema to install into: no schema of the search_path exists';
  END IF;
  PERFORM pg_catalog.set_config('search_path', pg_catalog.concat(pg_catalog.quote_ident(pg_catalog.current_schema()), ', pg_temp'), true);
END;
$$;

CREATE TABLE IF NOT EXISTS changefeed_migrations (
  name       text        PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- columns added by earlier versions of the script
ALTER TABLE IF EXISTS changefeed_patterns ADD COLUMN IF NOT EXISTS outbox boolean NOT NULL DEFAULT false;
ALTER TABLE IF EXISTS changefeed_outbox ADD COLUMN IF NOT EXISTS numbered_at timestamptz;
ALTER TABLE IF EXISTS changefeed_outbox ADD COLUMN IF NOT EXISTS tn text;

-- functions that are gone, or whose arguments or results changed (CREATE OR REPLACE cannot change those)
DROP FUNCTION IF EXISTS changefeed_outbox_append(text, jsonb);
DROP FUNCTION IF EXISTS changefeed_send(text, text);
DROP FUNCTION IF EXISTS changefeed_record(text, jsonb);
DROP FUNCTION IF EXISTS changefeed_reported(oid);
DROP FUNCTION IF EXISTS changefeed_install(text, text, text, boolean);
DROP FUNCTION IF EXISTS changefeed_watch(text, text, text, text[]);
DROP FUNCTION IF EXISTS changefeed_watch_events(text, text, text, text);
DO $$
BEGIN
  IF pg_catalog.pg_get_function_result(pg_catalog.to_regprocedure('changefeed_install(text, text, text, boolean, boolean)')) = 'void' THEN
    DROP FUNCTION changefeed_install(text, text, text, boolean, boolean);
  END IF;
  IF pg_catalog.pg_get_function_result(pg_catalog.to_regprocedure('changefeed_watch(text, text, text, text[], boolean)')) <> 'TABLE(tbl text, error text, granted integer)' THEN
    DROP FUNCTION changefeed_watch(text, text, text, text[], boolean);
  END IF;
  IF pg_catalog.pg_get_function_result(pg_catalog.to_regprocedure('changefeed_watch_events(text, text, text, text, boolean)')) = 'boolean' THEN
    DROP FUNCTION changefeed_watch_events(text, text, text, text, boolean);
  END IF;
  -- earlier event triggers knew neither ALTER TABLE nor GRANT
  IF EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_ddl' AND NOT 'GRANT' = ANY (evttags)) THEN
    DROP EVENT TRIGGER changefeed_on_ddl;
  END IF;
END;
$$;

-- What any role could make the old definer triggers do: outbox rows on channels no pattern names (never numbered,
-- never pruned).
DO $$
BEGIN
  IF to_regclass('changefeed_outbox') IS NOT NULL AND to_regclass('changefeed_patterns') IS NOT NULL THEN
    DELETE FROM changefeed_outbox o WHERE o.pos IS NULL AND NOT EXISTS (SELECT 1 FROM changefeed_patterns p WHERE p.channel = o.channel);
  END IF;
END;
$$;

-- The trigger functions are replaced by sql/changefeed.sql, which also takes EXECUTE on them from PUBLIC.
INSERT INTO changefeed_migrations (name) VALUES ('001_least_privilege') ON CONFLICT (name) DO NOTHING;
