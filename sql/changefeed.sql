-- fastify-changefeed: capture triggers.
--
-- Plain, idempotent SQL: a DBA can read it and apply it by hand (psql -f sql/changefeed.sql), and the plugin
-- applies it at start when `capture.installTriggers` is on. Applying it twice changes nothing.
--
--   changefeed_notify()                      row trigger: sends one small JSON NOTIFY per changed row
--   changefeed_install(schema, table, channel, inline, outbox)    puts the trigger on one table
--   changefeed_watch(schema, pattern, channel, inline_tables, outbox)
--                                            records a pattern and installs on every matching table now;
--                                            the event trigger below installs on matching tables created later
--
-- Outbox mode (outbox = true): the trigger appends the change (the document always inline for inline tables,
-- whatever its size) to changefeed_outbox in the writer's transaction, and the NOTIFY only wakes the listener
-- (payload "outbox"). The listener that holds the channel's leadership numbers committed rows (pos) in an
-- order that keeps every entity's changes in commit order, publishes them, and records how far it published in
-- changefeed_outbox_state; a crash, a restart or a failover resumes from there and loses nothing.
--
-- NOTIFY payload (always < 8000 bytes):
--   {"s":schema,"t":table,"id":"<id as text>","op":"I"|"U"|"D","x":<txid>,"v":<mt_version or null>,
--    "ts":<epoch ms, clock_timestamp()>,"o":<current_setting('changefeed.origin') or null>,"d":<data, inline tables only>}
-- Marten soft delete: an UPDATE that sets mt_deleted to true is sent as "D"; one that clears it as "I".

CREATE TABLE IF NOT EXISTS changefeed_patterns (
  schema_name   text   NOT NULL,
  pattern       text   NOT NULL,
  channel       text   NOT NULL,
  inline_tables text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (schema_name, pattern, channel)
);
ALTER TABLE changefeed_patterns ADD COLUMN IF NOT EXISTS outbox boolean NOT NULL DEFAULT false;

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
LANGUAGE sql AS $$
  INSERT INTO changefeed_outbox_state (channel, assigned, published, pruned)
  SELECT p_channel, m, m, m FROM (SELECT coalesce(max(pos), 0) AS m FROM changefeed_outbox WHERE channel = p_channel) last
  ON CONFLICT (channel) DO NOTHING;
$$;

-- Appends one change to the outbox and wakes the listener (PostgreSQL folds identical NOTIFYs of a transaction).
-- It runs with its owner's rights and search path: an application role needs no rights on the outbox, and a
-- writer's own search_path cannot hide it.
CREATE OR REPLACE FUNCTION changefeed_outbox_append(p_channel text, p_change jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  INSERT INTO changefeed_outbox (channel, s, t, eid, x, change)
  VALUES (p_channel, p_change->>'s', p_change->>'t', p_change->>'id', (p_change->>'x')::bigint, p_change);
  PERFORM pg_notify(p_channel, 'outbox');
END;
$$;

CREATE OR REPLACE FUNCTION changefeed_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  channel    text := TG_ARGV[0];
  inline     boolean := coalesce(TG_ARGV[1], 'false')::boolean;
  outbox     boolean := coalesce(TG_ARGV[2], 'false')::boolean;
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
        op := 'D';
      ELSIF coalesce((old_json->>'mt_deleted')::boolean, false) THEN
        op := 'I';
      END IF;
    ELSIF TG_OP = 'INSERT' AND coalesce((row_json->>'mt_deleted')::boolean, false) THEN
      RETURN NULL;
    END IF;
  END IF;

  msg := jsonb_build_object(
    's',  TG_TABLE_SCHEMA,
    't',  TG_TABLE_NAME,
    'id', row_json->>'id',
    'op', op,
    'x',  txid_current(),
    'v',  row_json->>'mt_version',
    'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    'o',  nullif(current_setting('changefeed.origin', true), '')
  );
  IF outbox THEN
    IF inline AND op <> 'D' AND row_json ? 'data' THEN
      msg := jsonb_set(msg, '{d}', row_json->'data');
    END IF;
    PERFORM changefeed_outbox_append(channel, msg);
    RETURN NULL;
  END IF;
  body := msg::text;

  IF inline AND op <> 'D' AND row_json ? 'data' THEN
    with_doc := jsonb_set(msg, '{d}', row_json->'data')::text;
    IF octet_length(with_doc) < 7900 THEN
      body := with_doc;
    END IF;
  END IF;

  PERFORM pg_notify(channel, body);
  RETURN NULL;
END;
$$;

DROP FUNCTION IF EXISTS changefeed_install(text, text, text, boolean);
CREATE OR REPLACE FUNCTION changefeed_install(p_schema text, p_table text, p_channel text, p_inline boolean, p_outbox boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format(
    'CREATE OR REPLACE TRIGGER changefeed_notify AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
    'FOR EACH ROW EXECUTE FUNCTION changefeed_notify(%L, %L, %L)',
    p_schema, p_table, p_channel, p_inline::text, p_outbox::text);
END;
$$;

-- Installs on every table of p_schema whose name matches p_pattern (LIKE) and has an "id" column.
-- Returns the names of the tables it installed on.
DROP FUNCTION IF EXISTS changefeed_watch(text, text, text, text[]);
CREATE OR REPLACE FUNCTION changefeed_watch(p_schema text, p_pattern text, p_channel text, p_inline_tables text[], p_outbox boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
  t text;
BEGIN
  INSERT INTO changefeed_patterns (schema_name, pattern, channel, inline_tables, outbox)
  VALUES (p_schema, p_pattern, p_channel, coalesce(p_inline_tables, '{}'), p_outbox)
  ON CONFLICT (schema_name, pattern, channel) DO UPDATE SET inline_tables = excluded.inline_tables, outbox = excluded.outbox;
  IF p_outbox THEN
    PERFORM changefeed_outbox_init(p_channel);
  END IF;

  FOR t IN
    SELECT c.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema
      AND c.relkind IN ('r', 'p')
      AND c.relname LIKE p_pattern
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped)
    ORDER BY c.relname
  LOOP
    PERFORM changefeed_install(p_schema, t, p_channel, t = ANY (coalesce(p_inline_tables, '{}')), p_outbox);
    RETURN NEXT t;
  END LOOP;
END;
$$;

-- Tables created later (Marten creates mt_doc_* tables on first use): install as they appear.
CREATE OR REPLACE FUNCTION changefeed_on_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
  cmd record;
  w   record;
  tbl text;
  sch text;
BEGIN
  FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
    SELECT c.relname, n.nspname INTO tbl, sch
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = cmd.objid;
    IF tbl IS NULL OR NOT EXISTS (
      SELECT 1 FROM pg_attribute a WHERE a.attrelid = cmd.objid AND a.attname = 'id' AND NOT a.attisdropped
    ) THEN
      CONTINUE;
    END IF;
    FOR w IN SELECT * FROM changefeed_patterns WHERE schema_name = sch AND tbl LIKE pattern LOOP
      PERFORM changefeed_install(sch, tbl, w.channel, tbl = ANY (w.inline_tables), w.outbox);
    END LOOP;
  END LOOP;
END;
$$;

-- An event trigger needs superuser (or, from PostgreSQL 17, a role allowed to create one). Without that
-- right the plugin still picks up new tables by re-scanning on an interval.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_ddl') THEN
    CREATE EVENT TRIGGER changefeed_on_ddl ON ddl_command_end
      WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
      EXECUTE FUNCTION changefeed_on_ddl();
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'changefeed: no right to create an event trigger; new tables are found by re-scanning';
END;
$$;

-- Event streams (opt-in, capture.events): an event appended to Marten's mt_events is reported as a change of its
-- stream's aggregate. Payload: {"s","t","id":<stream id>,"op":"A","x","ts","o","st":<mt_streams.type>,
-- "e":{"type":<event type>,"version":<version>,"data":<event data, when it fits>}}
CREATE OR REPLACE FUNCTION changefeed_event_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  channel      text := TG_ARGV[0];
  streams      text := TG_ARGV[1];
  outbox       boolean := coalesce(TG_ARGV[2], 'false')::boolean;
  stream_type  text;
  msg          jsonb;
  body         text;
  with_data    text;
BEGIN
  EXECUTE format('SELECT type FROM %I.%I WHERE id = $1', TG_TABLE_SCHEMA, streams) INTO stream_type USING NEW.stream_id;
  msg := jsonb_build_object(
    's',  TG_TABLE_SCHEMA,
    't',  TG_TABLE_NAME,
    'id', NEW.stream_id::text,
    'op', 'A',
    'x',  txid_current(),
    'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    'o',  nullif(current_setting('changefeed.origin', true), ''),
    'st', stream_type,
    'e',  jsonb_build_object('type', NEW.type, 'version', NEW.version)
  );
  IF outbox THEN
    PERFORM changefeed_outbox_append(channel, jsonb_set(msg, '{e,data}', to_jsonb(NEW.data)));
    RETURN NULL;
  END IF;
  body := msg::text;
  with_data := jsonb_set(msg, '{e,data}', to_jsonb(NEW.data))::text;
  IF octet_length(with_data) < 7900 THEN
    body := with_data;
  END IF;
  PERFORM pg_notify(channel, body);
  RETURN NULL;
END;
$$;

-- Installs the event trigger on a Marten event table (default mt_events, streams in mt_streams).
DROP FUNCTION IF EXISTS changefeed_watch_events(text, text, text, text);
CREATE OR REPLACE FUNCTION changefeed_watch_events(p_schema text, p_events text, p_streams text, p_channel text, p_outbox boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF to_regclass(format('%I.%I', p_schema, p_events)) IS NULL THEN
    RETURN false;
  END IF;
  EXECUTE format(
    'CREATE OR REPLACE TRIGGER changefeed_event_notify AFTER INSERT ON %I.%I '
    'FOR EACH ROW EXECUTE FUNCTION changefeed_event_notify(%L, %L, %L)',
    p_schema, p_events, p_channel, p_streams, p_outbox::text);
  RETURN true;
END;
$$;
