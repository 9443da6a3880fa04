-- fastify-changefeed: capture triggers.
--
-- Plain, idempotent SQL: a DBA can read it and apply it by hand in one transaction (psql -1 -f sql/changefeed.sql),
-- and the plugin applies it at start when `capture.installTriggers` is on. Applying it twice changes nothing. It
-- installs into the first schema of the search path.
--
--   changefeed_notify()                      row trigger: sends one small signed NOTIFY per changed row
--   changefeed_install(schema, table, channel, inline, outbox)    puts the trigger on one table
--   changefeed_watch(schema, pattern, channel, inline_tables, outbox)
--                                            records a pattern and installs on every matching table now;
--                                            the event trigger below installs on matching tables created later
--   changefeed_watch_events(schema, events, streams, channel, outbox)
--                                            Marten's event store: appends and archived streams
--
-- Trust. Every NOTIFY the triggers send is signed (HMAC-SHA-256 with a key in changefeed_key), and the listener
-- drops what is not: any role may pg_notify on the channel, but only a write to a watched table makes a change the
-- listener believes. The trigger functions run as the owner of these objects (SECURITY DEFINER) with a pinned
-- search path, so writers need no rights on them, cannot read the key, and cannot call them directly; nothing here
-- is granted to PUBLIC.
--
-- Never the host's failure. A trigger that cannot announce a change warns and lets the write commit (notify mode);
-- the event trigger that installs on new tables never raises, so no role's CREATE TABLE fails because of it. A
-- partition is covered by its partitioned table's trigger and never gets one of its own. In outbox mode the change
-- is recorded in the writer's transaction: zero loss means a write that cannot be recorded does not commit.
--
-- Outbox mode (outbox = true): the trigger appends the change (the document always inline for inline tables,
-- whatever its size) to changefeed_outbox in the writer's transaction, and the NOTIFY only wakes the listener
-- (payload "outbox"). The listener that holds the channel's leadership numbers committed rows (pos) in an
-- order that keeps every entity's changes in commit order, publishes them, and records how far it published in
-- changefeed_outbox_state; a crash, a restart or a failover resumes from there and loses nothing.
--
-- NOTIFY payload (always < 8000 bytes): 64 hex characters of signature, then the JSON
--   {"s":schema,"t":table,"id":"<id as text>","op":"I"|"U"|"D","x":<txid>,"v":<mt_version or null>,
--    "ts":<epoch ms, clock_timestamp()>,"o":<current_setting('changefeed.origin') or null>,
--    "tn":<tenant_id, tables that have one>,"d":<data, inline tables only>}
-- A change in a partition is reported as a change of its partitioned table. Marten soft delete: an UPDATE that
-- sets mt_deleted to true is sent as "D"; one that clears it as "I".

-- Every function below runs with this search path (SET search_path FROM CURRENT): the schema it is installed in,
-- then pg_temp, so that no role's own objects, temporary tables included, can stand in for these.
DO $$
BEGIN
  IF current_schema() IS NULL THEN
    RAISE EXCEPTION 'changefeed: no schema to install into: no schema of the search_path exists';
  END IF;
  PERFORM set_config('search_path', format('%I, pg_temp', current_schema()), true);
END;
$$;

CREATE TABLE IF NOT EXISTS changefeed_patterns (
  schema_name   text   NOT NULL,
  pattern       text   NOT NULL,
  channel       text   NOT NULL,
  inline_tables text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (schema_name, pattern, channel)
);
ALTER TABLE changefeed_patterns ADD COLUMN IF NOT EXISTS outbox boolean NOT NULL DEFAULT false;

-- The signing key: 32 random bytes, and the HMAC pads derived from it once.
CREATE TABLE IF NOT EXISTS changefeed_key (
  one  boolean PRIMARY KEY DEFAULT true CHECK (one),
  key  bytea   NOT NULL,
  ipad bytea   NOT NULL,
  opad bytea   NOT NULL
);

CREATE OR REPLACE FUNCTION changefeed_hmac_pad(p_key bytea, p_byte int) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
  padded bytea := p_key || decode(repeat('00', 64 - length(p_key)), 'hex');
BEGIN
  FOR i IN 0..63 LOOP
    padded := set_byte(padded, i, get_byte(padded, i) # p_byte);
  END LOOP;
  RETURN padded;
END;
$$;

INSERT INTO changefeed_key (key, ipad, opad)
SELECT k, changefeed_hmac_pad(k, 54), changefeed_hmac_pad(k, 92)
FROM (SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex') AS k) random_key
ON CONFLICT (one) DO NOTHING;

CREATE TABLE IF NOT EXISTS changefeed_outbox (
  id         bigserial   PRIMARY KEY,
  channel    text        NOT NULL,
  s          text        NOT NULL,
  t          text        NOT NULL,
  eid        text        NOT NULL,
  x          bigint      NOT NULL,
  change     jsonb       NOT NULL,
  pos         bigint,
  created_at  timestamptz NOT NULL DEFAULT now(),
  -- retention counts from here: positions are given in this order, so pruning by it keeps `pruned` truthful
  numbered_at timestamptz
);
ALTER TABLE changefeed_outbox ADD COLUMN IF NOT EXISTS numbered_at timestamptz;
-- the tenant of the changed row (Marten conjoined tenancy), so a replay reads one tenant's entity
ALTER TABLE changefeed_outbox ADD COLUMN IF NOT EXISTS tn text;
CREATE INDEX IF NOT EXISTS changefeed_outbox_unnumbered ON changefeed_outbox (channel, id) WHERE pos IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS changefeed_outbox_position ON changefeed_outbox (channel, pos);
CREATE INDEX IF NOT EXISTS changefeed_outbox_entity ON changefeed_outbox (channel, eid, pos);

-- Per channel: the epoch (a new one when the state row is recreated, so old positions are not mistaken for new
-- ones), the last position given, the last position published, and the last position pruned.
CREATE TABLE IF NOT EXISTS changefeed_outbox_state (
  channel   text   PRIMARY KEY,
  epoch     text   NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 8),
  assigned  bigint NOT NULL DEFAULT 0,
  published bigint NOT NULL DEFAULT 0,
  pruned    bigint NOT NULL DEFAULT 0
);

-- The state row of a channel. One created anew (first use, or after a reset) starts a new epoch above every
-- position already in the outbox, so numbering goes on and old positions are never mistaken for new ones.
CREATE OR REPLACE FUNCTION changefeed_outbox_init(p_channel text) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
  INSERT INTO changefeed_outbox_state (channel, assigned, published, pruned)
  SELECT p_channel, m, m, m FROM (SELECT coalesce(max(pos), 0) AS m FROM changefeed_outbox WHERE channel = p_channel) last
  ON CONFLICT (channel) DO NOTHING;
$$;

-- Earlier versions appended through this function; the triggers now write the outbox themselves.
DROP FUNCTION IF EXISTS changefeed_outbox_append(text, jsonb);

-- Sends one signed change (or a note from the event trigger) on the channel. A NOTIFY that cannot be sent (a full
-- queue: some listener stopped reading) is the server's loss, never the writer's error.
CREATE OR REPLACE FUNCTION changefeed_send(p_channel text, p_body text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  k changefeed_key;
BEGIN
  SELECT * INTO k FROM changefeed_key;
  BEGIN
    PERFORM pg_notify(p_channel, encode(sha256(k.opad || sha256(k.ipad || convert_to(p_body, 'UTF8'))), 'hex') || p_body);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'changefeed: a change could not be announced on "%": %', p_channel, SQLERRM;
  END;
END;
$$;

-- Records one change in the outbox and wakes the listener (PostgreSQL folds identical NOTIFYs of a transaction;
-- a wake-up that cannot be sent is made up for by the listener's polling).
CREATE OR REPLACE FUNCTION changefeed_record(p_channel text, p_change jsonb) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO changefeed_outbox (channel, s, t, eid, tn, x, change)
  VALUES (p_channel, p_change->>'s', p_change->>'t', p_change->>'id', p_change->>'tn', (p_change->>'x')::bigint, p_change);
  BEGIN
    PERFORM pg_notify(p_channel, 'outbox');
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'changefeed: the listener could not be woken: %', SQLERRM;
  END;
END;
$$;

-- The table a change is reported under: the table itself, or for a partition its partitioned table (whose trigger
-- PostgreSQL cloned onto it). Read from the catalog, never from the trigger's arguments: anyone may put these
-- trigger functions on a table of their own (creating a partition needs that right), and must not be able to
-- make it speak for another table.
CREATE OR REPLACE FUNCTION changefeed_reported(p_relid oid, OUT sch text, OUT tbl text)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
  SELECT n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = (SELECT CASE WHEN relispartition THEN pg_partition_root(oid) ELSE oid END FROM pg_class WHERE oid = p_relid);
$$;

-- Trigger arguments: channel, inline, outbox, and the schema and table it was installed on (so a plain table is
-- reported without a catalog lookup; a partition, whose names differ, is looked up).
CREATE OR REPLACE FUNCTION changefeed_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  channel    text := TG_ARGV[0];
  inline     boolean := coalesce(TG_ARGV[1], 'false')::boolean;
  outbox     boolean := coalesce(TG_ARGV[2], 'false')::boolean;
  sch        text := TG_TABLE_SCHEMA;
  tbl        text := TG_TABLE_NAME;
  row_json   jsonb;
  old_json   jsonb;
  op         text;
  msg        jsonb;
  body       text;
  with_doc   text;
BEGIN
  IF TG_OP = 'DELETE' THEN
    row_json := to_jsonb(OLD);
    op := 'D';
  ELSE
    row_json := to_jsonb(NEW);
    op := CASE TG_OP WHEN 'INSERT' THEN 'I' ELSE 'U' END;
    IF TG_OP = 'UPDATE' AND row_json ? 'mt_deleted' THEN
      old_json := to_jsonb(OLD);
      IF coalesce((row_json->>'mt_deleted')::boolean, false) THEN
        -- already deleted before this update: nothing a watcher could see changed
        IF coalesce((old_json->>'mt_deleted')::boolean, false) THEN
          RETURN NULL;
        END IF;
        op := 'D';
      ELSIF coalesce((old_json->>'mt_deleted')::boolean, false) THEN
        op := 'I';
      END IF;
    ELSIF TG_OP = 'INSERT' AND coalesce((row_json->>'mt_deleted')::boolean, false) THEN
      RETURN NULL;
    END IF;
  END IF;

  IF TG_ARGV[3] IS DISTINCT FROM TG_TABLE_SCHEMA OR TG_ARGV[4] IS DISTINCT FROM TG_TABLE_NAME THEN
    SELECT r.sch, r.tbl INTO sch, tbl FROM changefeed_reported(TG_RELID) r;
  END IF;
  msg := jsonb_build_object(
    's',  sch,
    't',  tbl,
    'id', row_json->>'id',
    'op', op,
    'x',  txid_current(),
    'v',  row_json->>'mt_version',
    'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    'o',  nullif(current_setting('changefeed.origin', true), '')
  );
  IF row_json ? 'tenant_id' THEN
    msg := msg || jsonb_build_object('tn', row_json->>'tenant_id');
  END IF;
  IF outbox THEN
    IF inline AND op <> 'D' AND row_json ? 'data' THEN
      msg := jsonb_set(msg, '{d}', row_json->'data');
    END IF;
    PERFORM changefeed_record(channel, msg);
    RETURN NULL;
  END IF;
  body := msg::text;

  IF inline AND op <> 'D' AND row_json ? 'data' THEN
    with_doc := jsonb_set(msg, '{d}', row_json->'data')::text;
    IF octet_length(with_doc) < 7800 THEN
      body := with_doc;
    END IF;
  END IF;

  PERFORM changefeed_send(channel, body);
  RETURN NULL;
END;
$$;

DROP FUNCTION IF EXISTS changefeed_install(text, text, text, boolean);
-- Puts the trigger on one table; nothing on a partition, which its partitioned table's trigger covers. A partitioned
-- table's trigger (cloned by PostgreSQL onto every partition, now and later) is named changefeed_partitioned, an
-- ordinary table's changefeed_notify: two names, so that a table that has its own can still be attached as a
-- partition (the event trigger then drops its own).
CREATE OR REPLACE FUNCTION changefeed_install(p_schema text, p_table text, p_channel text, p_inline boolean, p_outbox boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  kind char;
  part boolean;
BEGIN
  SELECT c.relkind, c.relispartition INTO kind, part
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = p_schema AND c.relname = p_table;
  IF part THEN
    RETURN;
  END IF;
  IF kind = 'p' AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = format('%I.%I', p_schema, p_table)::regclass AND tgname = 'changefeed_notify') THEN
    -- earlier versions named it as on an ordinary table
    EXECUTE format('DROP TRIGGER changefeed_notify ON %I.%I', p_schema, p_table);
  END IF;
  EXECUTE format(
    'CREATE OR REPLACE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
    'FOR EACH ROW EXECUTE FUNCTION changefeed_notify(%L, %L, %L, %L, %L)',
    CASE kind WHEN 'p' THEN 'changefeed_partitioned' ELSE 'changefeed_notify' END,
    p_schema, p_table, p_channel, p_inline::text, p_outbox::text, p_schema, p_table);
END;
$$;

-- Installs on every table of p_schema whose name matches p_pattern (LIKE) and has an "id" column, partitions
-- aside. One row per table: `error` is null when the trigger is in place, else why not (the others go on).
DROP FUNCTION IF EXISTS changefeed_watch(text, text, text, text[]);
DO $$
BEGIN
  -- earlier versions returned only the table names
  IF pg_get_function_result(to_regprocedure('changefeed_watch(text, text, text, text[], boolean)')) = 'SETOF text' THEN
    DROP FUNCTION changefeed_watch(text, text, text, text[], boolean);
  END IF;
END;
$$;
CREATE OR REPLACE FUNCTION changefeed_watch(p_schema text, p_pattern text, p_channel text, p_inline_tables text[], p_outbox boolean DEFAULT false)
RETURNS TABLE (tbl text, error text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO changefeed_patterns (schema_name, pattern, channel, inline_tables, outbox)
  VALUES (p_schema, p_pattern, p_channel, coalesce(p_inline_tables, '{}'), p_outbox)
  ON CONFLICT (schema_name, pattern, channel) DO UPDATE SET inline_tables = excluded.inline_tables, outbox = excluded.outbox;
  IF p_outbox THEN
    PERFORM changefeed_outbox_init(p_channel);
  END IF;

  FOR tbl IN
    SELECT c.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema
      AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
      AND c.relname LIKE p_pattern
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped)
    ORDER BY c.relname
  LOOP
    error := NULL;
    BEGIN
      PERFORM changefeed_install(p_schema, tbl, p_channel, tbl = ANY (coalesce(p_inline_tables, '{}')), p_outbox);
    EXCEPTION WHEN OTHERS THEN
      error := SQLERRM;
    END;
    RETURN NEXT;
  END LOOP;
END;
$$;

-- Tables created later (Marten creates mt_doc_* tables on first use, under its own role): install as they appear,
-- and tell the server, which then knows the new type at once. After an ALTER TABLE: a table attached as a partition
-- loses its own trigger (its partitioned table's now covers it), a detached one gets its own again. It runs as the
-- owner of these objects, whoever runs the DDL, and never raises: a failure is a warning to the one who ran it and
-- a note to the server.
CREATE OR REPLACE FUNCTION changefeed_on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  cmd record;
  rel record;
  w   record;
BEGIN
  FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
    BEGIN
      -- the table; after an ALTER TABLE (an ATTACH or DETACH names the partitioned table) every table of its
      -- schema: the watched ones among them are few
      FOR rel IN
        SELECT c.oid, c.relname, n.nspname, c.relispartition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = cmd.objid OR (cmd.command_tag = 'ALTER TABLE' AND c.relkind IN ('r', 'p')
          AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = cmd.objid)
          AND EXISTS (SELECT 1 FROM changefeed_patterns p WHERE p.schema_name = n.nspname AND c.relname LIKE p.pattern))
      LOOP
        IF rel.relispartition THEN
          IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel.oid AND tgname = 'changefeed_notify' AND tgparentid = 0) THEN
            EXECUTE format('DROP TRIGGER changefeed_notify ON %I.%I', rel.nspname, rel.relname);
          END IF;
          CONTINUE;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = rel.oid AND a.attname = 'id' AND NOT a.attisdropped)
           OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel.oid AND tgname IN ('changefeed_notify', 'changefeed_partitioned')) THEN
          CONTINUE;
        END IF;
        FOR w IN SELECT * FROM changefeed_patterns WHERE schema_name = rel.nspname AND rel.relname LIKE pattern LOOP
          BEGIN
            PERFORM changefeed_install(rel.nspname, rel.relname, w.channel, rel.relname = ANY (w.inline_tables), w.outbox);
            PERFORM changefeed_send(w.channel, jsonb_build_object('ddl', 'installed', 's', rel.nspname, 't', rel.relname, 'x', txid_current(), 'ts', clock_timestamp())::text);
          EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'changefeed: no trigger on %.%: %', rel.nspname, rel.relname, SQLERRM;
            PERFORM changefeed_send(w.channel, jsonb_build_object('ddl', 'failed', 's', rel.nspname, 't', rel.relname, 'error', SQLERRM, 'x', txid_current(), 'ts', clock_timestamp())::text);
          END;
        END LOOP;
      END LOOP;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'changefeed: looking at a new or altered table failed: %', SQLERRM;
    END;
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'changefeed: looking at new tables failed: %', SQLERRM;
END;
$$;

-- An event trigger needs superuser (or, from PostgreSQL 17, a role allowed to create one). Without that
-- right the plugin still picks up new tables by re-scanning on an interval. Created by an earlier version for
-- CREATE TABLE only: it learns ALTER TABLE.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_ddl' AND NOT 'ALTER TABLE' = ANY (evttags)) THEN
    DROP EVENT TRIGGER changefeed_on_ddl;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_ddl') THEN
    CREATE EVENT TRIGGER changefeed_on_ddl ON ddl_command_end
      WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
      EXECUTE FUNCTION changefeed_on_ddl();
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'changefeed: no right to create an event trigger; new tables are found by re-scanning';
END;
$$;

-- Event streams (opt-in, capture.events): an event appended to Marten's mt_events is reported as a change of its
-- stream's aggregate. Payload: {"s","t","id":<stream id>,"op":"A","x","ts","o","tn","st":<mt_streams.type>,
-- "e":{"type":<event type>,"version":<version>,"data":<event data, when it fits>}}. Archiving copies a stream's
-- events into the archived partition (UseArchivedStreamPartitioning): those rows are not appends.
-- Trigger arguments: channel, streams table, outbox, and the schema and table reported.
CREATE OR REPLACE FUNCTION changefeed_event_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  channel      text := TG_ARGV[0];
  streams      text := TG_ARGV[1];
  outbox       boolean := coalesce(TG_ARGV[2], 'false')::boolean;
  sch          text := TG_TABLE_SCHEMA;
  tbl          text := TG_TABLE_NAME;
  row_json     jsonb := to_jsonb(NEW);
  tenant       text := row_json->>'tenant_id';
  stream_type  text;
  msg          jsonb;
  body         text;
  with_data    text;
BEGIN
  IF coalesce((row_json->>'is_archived')::boolean, false) THEN
    RETURN NULL;
  END IF;
  IF TG_ARGV[3] IS DISTINCT FROM sch OR TG_ARGV[4] IS DISTINCT FROM tbl THEN
    SELECT r.sch, r.tbl INTO sch, tbl FROM changefeed_reported(TG_RELID) r;
  END IF;
  EXECUTE format('SELECT type FROM %I.%I WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) LIMIT 1', sch, streams)
    INTO stream_type USING NEW.stream_id, tenant;
  msg := jsonb_build_object(
    's',  sch,
    't',  tbl,
    'id', NEW.stream_id::text,
    'op', 'A',
    'x',  txid_current(),
    'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    'o',  nullif(current_setting('changefeed.origin', true), ''),
    'tn', tenant,
    'st', stream_type,
    'e',  jsonb_build_object('type', NEW.type, 'version', NEW.version)
  );
  IF outbox THEN
    PERFORM changefeed_record(channel, jsonb_set(msg, '{e,data}', to_jsonb(NEW.data)));
    RETURN NULL;
  END IF;
  body := msg::text;
  with_data := jsonb_set(msg, '{e,data}', to_jsonb(NEW.data))::text;
  IF octet_length(with_data) < 7800 THEN
    body := with_data;
  END IF;
  PERFORM changefeed_send(channel, body);
  RETURN NULL;
END;
$$;

-- A stream archived (mt_archive_stream: an UPDATE of is_archived, or with archived-stream partitioning a copy of
-- the row into the archived partition) is one change of its aggregate: {"op":"R","id":<stream id>,"st":type,...}.
-- Trigger arguments: channel, outbox, and the schema and table reported.
CREATE OR REPLACE FUNCTION changefeed_stream_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  channel  text := TG_ARGV[0];
  outbox   boolean := coalesce(TG_ARGV[1], 'false')::boolean;
  row_json jsonb := to_jsonb(NEW);
  sch      text := TG_TABLE_SCHEMA;
  tbl      text := TG_TABLE_NAME;
  msg      jsonb;
BEGIN
  IF NOT coalesce((row_json->>'is_archived')::boolean, false)
     OR (TG_OP = 'UPDATE' AND coalesce((to_jsonb(OLD)->>'is_archived')::boolean, false)) THEN
    RETURN NULL;
  END IF;
  IF TG_ARGV[2] IS DISTINCT FROM sch OR TG_ARGV[3] IS DISTINCT FROM tbl THEN
    SELECT r.sch, r.tbl INTO sch, tbl FROM changefeed_reported(TG_RELID) r;
  END IF;
  msg := jsonb_build_object(
    's',  sch,
    't',  tbl,
    'id', row_json->>'id',
    'op', 'R',
    'x',  txid_current(),
    'v',  row_json->>'version',
    'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    'o',  nullif(current_setting('changefeed.origin', true), ''),
    'tn', row_json->>'tenant_id',
    'st', row_json->>'type'
  );
  IF outbox THEN
    PERFORM changefeed_record(channel, msg);
  ELSE
    PERFORM changefeed_send(channel, msg::text);
  END IF;
  RETURN NULL;
END;
$$;

-- Installs the event store's triggers (default mt_events and mt_streams). False when the event table is not there.
DROP FUNCTION IF EXISTS changefeed_watch_events(text, text, text, text);
CREATE OR REPLACE FUNCTION changefeed_watch_events(p_schema text, p_events text, p_streams text, p_channel text, p_outbox boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF to_regclass(format('%I.%I', p_schema, p_events)) IS NULL OR to_regclass(format('%I.%I', p_schema, p_streams)) IS NULL THEN
    RETURN false;
  END IF;
  EXECUTE format(
    'CREATE OR REPLACE TRIGGER changefeed_event_notify AFTER INSERT ON %I.%I '
    'FOR EACH ROW EXECUTE FUNCTION changefeed_event_notify(%L, %L, %L, %L, %L)',
    p_schema, p_events, p_channel, p_streams, p_outbox::text, p_schema, p_events);
  -- streams are archived from Marten 7 on (is_archived); an older store has nothing to archive
  IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(format('%I.%I', p_schema, p_streams))
             AND attname = 'is_archived' AND NOT attisdropped) THEN
    EXECUTE format(
      'CREATE OR REPLACE TRIGGER changefeed_stream_notify AFTER INSERT OR UPDATE OF is_archived ON %I.%I '
      'FOR EACH ROW EXECUTE FUNCTION changefeed_stream_notify(%L, %L, %L, %L)',
      p_schema, p_streams, p_channel, p_outbox::text, p_schema, p_streams);
  END IF;
  RETURN true;
END;
$$;

-- Nothing of this is anyone else's to use: the triggers run as the owner, and the owner (or whom it grants) reads.
-- The three trigger functions stay executable: creating a partition of a watched table clones their trigger, which
-- PostgreSQL allows only to a role that may execute them (and a trigger function cannot be called otherwise).
REVOKE ALL ON TABLE changefeed_patterns, changefeed_key, changefeed_outbox, changefeed_outbox_state FROM PUBLIC;
REVOKE ALL ON FUNCTION changefeed_hmac_pad(bytea, int), changefeed_outbox_init(text), changefeed_send(text, text),
  changefeed_record(text, jsonb), changefeed_reported(oid), changefeed_install(text, text, text, boolean, boolean),
  changefeed_watch(text, text, text, text[], boolean), changefeed_on_ddl(),
  changefeed_watch_events(text, text, text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION changefeed_notify(), changefeed_event_notify(), changefeed_stream_notify() TO PUBLIC;
