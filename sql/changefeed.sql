-- fastify-changefeed: capture triggers.
--
-- Plain, idempotent SQL: a DBA can read it and apply it by hand in one transaction (psql -1 -f sql/changefeed.sql),
-- and the plugin applies it at start when `capture.installTriggers` is on. Applying it twice changes nothing. It
-- installs into the first schema of the search path. A database that has an earlier version applies the files of
-- sql/migrations/ first, in order (the plugin does, and records them in changefeed_migrations).
--
--   changefeed_notify()                 row trigger of document tables
--   changefeed_event_notify()           row trigger of Marten's event table (an appended event)
--   changefeed_stream_notify()          row trigger of Marten's stream table (a stream archived)
--   changefeed_statement_notify()       statement trigger: a watched table (or a partition of one) truncated; Marten's
--                                       tenant database registry changed
--   changefeed_announce(relid, change)  the one function that acts with this schema's owner's rights for a caller
--   changefeed_install(schema, table, channel, inline, outbox)    puts the trigger on one table
--   changefeed_watch(schema, pattern, channel, inline_tables, outbox)
--                                       records a pattern and installs on every matching table now; the event
--                                       trigger below installs on matching tables created later
--   changefeed_watch_events(schema, events, streams, channel, outbox)
--                                       Marten's event store: appends and archived streams
--   changefeed_watch_registry(schema, table, channel)
--                                       Marten's table of tenant databases (MasterTableTenancy): the server is told
--                                       when it changes
--
-- Privileges (sql/README.md has the whole model). The trigger functions run as the writer (SECURITY INVOKER): they
-- read the changed row with the writer's own rights and call changefeed_announce, which alone runs as the owner of
-- these objects. It takes no identifier from its caller: the relation is an oid, which it looks up in
-- changefeed_tables (the tables installed here); the channel, the schema and table, the transaction id and the
-- time come from there and from the server, never from the caller; it executes no dynamic SQL and converts nothing
-- the caller made. Nothing that runs with the owner's rights is granted to PUBLIC (only changefeed_pass, which runs
-- as its caller, is callable by all). EXECUTE on changefeed_announce is granted, when a table is
-- installed, to the roles that may write it; EXECUTE on the trigger functions to the roles that own a watched table
-- (creating a partition clones the trigger). A role that writes no watched table can do nothing with any of it.
-- Every function searches pg_catalog and pg_temp only and names this script's objects with their schema: the schema
-- installed into may be one where other roles create objects (Marten's role creates its tables in it), and an
-- overload of theirs must never run in place of pg_catalog's with the owner's rights or a writer's.
--
-- Trust. Every NOTIFY changefeed_announce sends is signed (HMAC-SHA-256 with a key in changefeed_key, which only the
-- owner reads): any role may pg_notify on the channel, but only a write to a watched table makes a change the
-- listener believes. The payload carries the writer's transaction id, set here, so the listener can refuse a
-- signed payload sent again after the transaction was over (lib/capture/signature.ts).
--
-- Never the host's failure. A trigger that cannot announce a change warns and lets the write commit (notify mode; a
-- NOTIFY that would not fit in PostgreSQL's queue would fail the commit: changefeed_say sends none while it is half full);
-- the event trigger that installs on new tables never raises, so no role's CREATE TABLE fails because of it. A
-- partition is covered by its partitioned table's trigger and never gets one of its own. In outbox mode the change
-- is recorded in the writer's transaction: zero loss means a write that cannot be recorded does not commit.
--
-- Outbox mode: changefeed_announce appends the change (the document always inline for inline tables, whatever its
-- size) to changefeed_outbox in the writer's transaction, and the NOTIFY only wakes the listener (payload
-- "outbox"). The listener that holds the channel's leadership numbers committed rows (pos) in an order that keeps
-- every entity's changes in commit order, publishes them, and records how far it published in
-- changefeed_outbox_state; a crash, a restart or a failover resumes from there and loses nothing.
--
-- NOTIFY payload (always < 8000 bytes): 64 hex characters of signature, then the JSON
--   {"s":schema,"t":table,"id":"<id as text>","op":"I"|"U"|"D","x":<txid>,"v":<mt_version or null>,
--    "ts":<epoch ms, clock_timestamp()>,"o":<current_setting('changefeed.origin') or null>,
--    "tn":<tenant_id, tables that have one>,"d":<data, inline tables only>}
-- A change in a partition is reported as a change of its partitioned table. Marten soft delete: an UPDATE that
-- sets mt_deleted to true is sent as "D"; one that clears it as "I"; a DELETE of a row already soft-deleted is not
-- sent (its watchers were told by the update). A TRUNCATE is one change of the whole table, "op":"T", which names the
-- relation truncated ("ps", "pt": the table, or one of its partitions) and no row ("id":"").

-- Where it installs, and how the statements below find what they name: the schema (quoted, in the setting
-- changefeed.schema, which the function definitions below are written with), then pg_temp. Until the search path is
-- set, every function is named with its schema: another role may have made functions in the schema installed into.
DO $$
BEGIN
  IF pg_catalog.current_schema() IS NULL THEN
    RAISE EXCEPTION 'changefeed: no schema to install into: no schema of the search_path exists';
  END IF;
  PERFORM pg_catalog.set_config('changefeed.schema', pg_catalog.quote_ident(pg_catalog.current_schema()), true);
  -- the schema's name is written into the functions' text, string literals and format strings included
  IF pg_catalog.translate(pg_catalog.current_setting('changefeed.schema'), pg_catalog.concat('''$%', pg_catalog.chr(92)), '')
     OPERATOR(pg_catalog.<>) pg_catalog.current_setting('changefeed.schema') THEN
    RAISE EXCEPTION 'changefeed: cannot install into schema %: its name has a quote, a dollar, a percent sign or a backslash', pg_catalog.current_schema();
  END IF;
  PERFORM pg_catalog.set_config('search_path', pg_catalog.concat(pg_catalog.current_setting('changefeed.schema'), ', pg_temp'), true);
  -- the functions the triggers call by name, in a schema of their own that only the owner may create in (<schema>_changefeed)
  PERFORM pg_catalog.set_config('changefeed.private', pg_catalog.quote_ident(pg_catalog.concat(pg_catalog.current_schema(), '_changefeed')), true);
  IF pg_catalog.to_regnamespace(pg_catalog.current_setting('changefeed.private')) IS NULL
     AND NOT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') THEN
    -- a role that may not create a schema keeps them in the schema installed into, as before
    RAISE WARNING 'changefeed: no right to create schema %: the functions the triggers call stay in %, where a role that may create functions there can make every write to a watched table fail (grant CREATE on the database, or create the schema for this role)',
      pg_catalog.current_setting('changefeed.private'), pg_catalog.current_setting('changefeed.schema');
    PERFORM pg_catalog.set_config('changefeed.private', pg_catalog.current_setting('changefeed.schema'), true);
    RETURN;
  ELSIF pg_catalog.to_regnamespace(pg_catalog.current_setting('changefeed.private')) IS NULL THEN
    EXECUTE pg_catalog.concat('CREATE SCHEMA ', pg_catalog.current_setting('changefeed.private'));
  ELSIF (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
         WHERE n.oid OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.current_setting('changefeed.private'))::oid) OPERATOR(pg_catalog.<>) CURRENT_USER THEN
    RAISE EXCEPTION 'changefeed: schema % belongs to another role', pg_catalog.current_setting('changefeed.private');
  END IF;
  EXECUTE pg_catalog.concat('REVOKE ALL ON SCHEMA ', pg_catalog.current_setting('changefeed.private'), ' FROM PUBLIC');
  EXECUTE pg_catalog.concat('GRANT USAGE ON SCHEMA ', pg_catalog.current_setting('changefeed.private'), ' TO PUBLIC');
END;
$$;

CREATE TABLE IF NOT EXISTS changefeed_migrations (
  name       text        PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS changefeed_patterns (
  schema_name   text    NOT NULL,
  pattern       text    NOT NULL,
  channel       text    NOT NULL,
  inline_tables text[]  NOT NULL DEFAULT '{}',
  outbox        boolean NOT NULL DEFAULT false,
  PRIMARY KEY (schema_name, pattern, channel)
);

-- The tables installed here (partitioned tables stand for their partitions): what changefeed_announce accepts.
CREATE TABLE IF NOT EXISTS changefeed_tables (
  relid   oid     PRIMARY KEY,
  channel text    NOT NULL,
  inline  boolean NOT NULL,
  outbox  boolean NOT NULL
);

-- The signing key: 32 random bytes, and the HMAC pads derived from it once.
CREATE TABLE IF NOT EXISTS changefeed_key (
  one  boolean PRIMARY KEY DEFAULT true CHECK (one),
  key  bytea   NOT NULL,
  ipad bytea   NOT NULL,
  opad bytea   NOT NULL
);

CREATE TABLE IF NOT EXISTS changefeed_outbox (
  id          bigserial   PRIMARY KEY,
  channel     text        NOT NULL,
  s           text        NOT NULL,
  t           text        NOT NULL,
  eid         text        NOT NULL,
  x           bigint      NOT NULL,
  change      jsonb       NOT NULL,
  pos         bigint,
  created_at  timestamptz NOT NULL DEFAULT now(),
  -- retention counts from here: positions are given in this order, so pruning by it keeps `pruned` truthful
  numbered_at timestamptz,
  -- the tenant of the changed row (Marten conjoined tenancy), so a replay reads one tenant's entity
  tn          text
);
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

-- The functions. Each names what it uses of this script with its schema (@extschema@, replaced by the schema installed
-- into; @private@, by <schema>_changefeed) and searches pg_catalog and pg_temp only (SET search_path), so that nothing
-- another role made in that schema can stand in for a function or an operator of pg_catalog: PostgreSQL picks the
-- overload whose argument types fit best from every schema of the search path, and these functions run with the
-- rights of the owner (the event triggers, changefeed_announce) or of whoever writes a watched table (the trigger
-- functions). Calls of our own functions pass exactly their argument types, and those the triggers call live in
-- @private@, where no other role can add an overload that would make a call ambiguous.
DO $define$
BEGIN
  EXECUTE pg_catalog.replace(pg_catalog.replace($functions$
CREATE OR REPLACE FUNCTION @extschema@.changefeed_hmac_pad(p_key bytea, p_byte int) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  padded bytea := p_key || decode(repeat('00', 64 - length(p_key)), 'hex');
BEGIN
  FOR i IN 0..63 LOOP
    padded := set_byte(padded, i, get_byte(padded, i) # p_byte);
  END LOOP;
  RETURN padded;
END;
$$;

-- The state row of a channel. One created anew (first use, or after a reset) starts a new epoch above every
-- position already in the outbox, so numbering goes on and old positions are never mistaken for new ones.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_outbox_init(p_channel text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO @extschema@.changefeed_outbox_state (channel, assigned, published, pruned)
  SELECT p_channel, m, m, m FROM (SELECT coalesce(max(pos), 0) AS m FROM @extschema@.changefeed_outbox WHERE channel = p_channel) last
  ON CONFLICT (channel) DO NOTHING;
$$;

-- Sends a NOTIFY, unless PostgreSQL's queue of notifications is half full. PostgreSQL adds a transaction's NOTIFYs to
-- that queue at commit and fails the commit when it is full, which any role can bring about (a session that LISTENs
-- and then stays in a transaction holds every notification sent since): a NOTIFY of ours must never make a writer's
-- or another role's DDL fail. One left unsent is a warning (in outbox mode, a wake-up the listener's poll replaces).
-- Every role may call it: it runs as its caller and does what pg_notify does.
CREATE OR REPLACE FUNCTION @private@.changefeed_say(p_channel text, p_payload text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF pg_notification_queue_usage() >= 0.5 THEN
    RAISE WARNING 'changefeed: the NOTIFY queue is half full (a session that listens reads nothing): nothing sent on "%"', p_channel;
    RETURN false;
  END IF;
  PERFORM pg_notify(p_channel, p_payload);
  RETURN true;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'changefeed: nothing sent on "%": %', p_channel, SQLERRM;
  RETURN false;
END;
$$;

-- The signed form of a body: 64 hex characters of HMAC-SHA-256, then the body. For the owner's own functions only.
-- PL/pgSQL, so that its plan is kept for the session (an SQL function would be planned again at every row).
CREATE OR REPLACE FUNCTION @private@.changefeed_sign(p_body text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  k @extschema@.changefeed_key;
BEGIN
  SELECT * INTO k FROM @extschema@.changefeed_key;
  RETURN encode(sha256(k.opad || sha256(k.ipad || convert_to(p_body, 'UTF8'))), 'hex') || p_body;
END;
$$;

-- Announces one change of a watched table, for the trigger functions: signed on the table's channel (notify mode),
-- or appended to the outbox with a wake-up (outbox mode). It acts only for a relation installed here that carries
-- one of these triggers, only from inside a trigger, and only for a relation its caller's session has just written (a
-- row's change: rows of it inserted, updated or deleted, as PostgreSQL counts them for this transaction and those of
-- the session not yet reported, about a second; a TRUNCATE, or a statement on the table of tenant databases: a lock
-- on it that only a writer can take), so that a role that may write one watched table cannot announce changes of
-- another from a trigger of its own. What the server trusts (the channel, schema and table, the transaction, the
-- time) is set here. A NOTIFY that cannot be sent (a full queue) is the server's loss, never the writer's error.
CREATE OR REPLACE FUNCTION @private@.changefeed_announce(p_relid oid, p_change jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  reported oid;
  sch      name;
  tbl      name;
  w        @extschema@.changefeed_tables;
  msg      jsonb;
  body     text;
BEGIN
  SELECT CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END INTO reported FROM pg_class c WHERE c.oid = p_relid;
  SELECT * INTO w FROM @extschema@.changefeed_tables WHERE relid = reported;
  IF NOT FOUND OR pg_trigger_depth() < 1 OR NOT EXISTS (
    SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND NOT tgisinternal
      AND tgfoid IN ('@extschema@.changefeed_notify()'::regprocedure, '@extschema@.changefeed_event_notify()'::regprocedure, '@extschema@.changefeed_stream_notify()'::regprocedure,
        '@extschema@.changefeed_statement_notify()'::regprocedure)
  ) THEN
    RAISE WARNING 'changefeed: relation % is not watched; nothing announced', p_relid;
    RETURN;
  END IF;
  -- a row's check is an expression without a subquery, which PL/pgSQL evaluates without starting the executor: it
  -- runs at every row
  IF p_change ? 'op' AND p_change->>'op'::text <> 'T' THEN
    -- without counts (track_counts off) a row's change is taken as its trigger says
    IF pg_stat_get_xact_tuples_inserted(p_relid) + pg_stat_get_xact_tuples_updated(p_relid) + pg_stat_get_xact_tuples_deleted(p_relid) = 0
        AND current_setting('track_counts')::boolean THEN
      RAISE WARNING 'changefeed: relation % was not written in this session; nothing announced', p_relid::regclass;
      RETURN;
    END IF;
  ELSIF NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'relation' AND l.relation = p_relid AND l.pid = pg_backend_pid() AND l.granted
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')) THEN
    RAISE WARNING 'changefeed: relation % was not written in this session; nothing announced', p_relid::regclass;
    RETURN;
  END IF;
  SELECT n.nspname, c.relname INTO sch, tbl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = reported;
  -- the notes of the event triggers are theirs alone; a change of Marten's table of tenant databases is one, and
  -- only a relation carrying that trigger sends it
  msg := (p_change - ARRAY['s', 't', 'x', 'ts', 'ddl', 'error', 'fresh']) || jsonb_build_object(
    's', sch, 't', tbl, 'x', txid_current(), 'ts', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint);
  IF p_change->>'ddl'::text = 'registry' THEN
    IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_relid AND tgname = 'changefeed_registry'
        AND tgfoid = '@extschema@.changefeed_statement_notify()'::regprocedure::oid) THEN
      msg := msg || jsonb_build_object('ddl', 'registry');
    END IF;
  END IF;
  IF NOT w.inline THEN
    msg := msg - 'd';
  END IF;
  IF w.outbox THEN
    INSERT INTO @extschema@.changefeed_outbox (channel, s, t, eid, tn, x, change)
    VALUES (w.channel, sch, tbl, coalesce(msg->>'id', ''), msg->>'tn', (msg->>'x')::bigint, msg);
    PERFORM @private@.changefeed_say(w.channel, 'outbox'::text);
    RETURN;
  END IF;
  body := msg::text;
  IF octet_length(body) >= 7800 THEN
    -- too large to ride inline: the server reads the document (or the event data) itself
    body := (msg - 'd' #- '{e,data}')::text;
  END IF;
  PERFORM @private@.changefeed_say(w.channel, @private@.changefeed_sign(body));
END;
$$;

-- For the trigger functions: announces the change, or, where the writing role may not (a role given write rights on
-- a watched table after it was installed), warns and tells the server on the trigger's channel, unsigned: the
-- server then grants the rights it finds missing and tells the table's watchers to refetch. The write commits.
-- Every role may call it (any role may write a watched table it was given rights on): it runs as its caller and
-- does nothing its caller could not do itself.
CREATE OR REPLACE FUNCTION @private@.changefeed_pass(p_relid oid, p_channel text, p_change jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF has_function_privilege('@private@.changefeed_announce(oid, jsonb)', 'EXECUTE') THEN
    PERFORM @private@.changefeed_announce(p_relid, p_change);
    RETURN;
  END IF;
  RAISE WARNING 'changefeed: role % may not announce changes of %; the server is told', current_user, p_relid::regclass;
  IF p_channel IS NOT NULL THEN
    PERFORM @private@.changefeed_say(p_channel, jsonb_build_object('unannounced', p_relid, 'role', current_user)::text);
  END IF;
END;
$$;

-- Trigger argument: the channel (for changefeed_pass's note only; changefeed_announce takes the channel from
-- changefeed_tables).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  row_json jsonb;
  old_json jsonb;
  op       text;
  msg      jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN
    row_json := to_jsonb(OLD);
    -- Marten's hard delete of a soft-deleted document: its watchers were told of the delete by the update
    IF coalesce((row_json->>'mt_deleted')::boolean, false) THEN
      RETURN NULL;
    END IF;
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
  msg := jsonb_build_object(
    'id', row_json->>'id',
    'op', op,
    'v',  row_json->>'mt_version',
    'o',  nullif(current_setting('changefeed.origin', true), '')
  );
  IF row_json ? 'tenant_id' THEN
    msg := msg || jsonb_build_object('tn', row_json->>'tenant_id');
  END IF;
  IF op <> 'D' AND row_json ? 'data' THEN
    msg := msg || jsonb_build_object('d', row_json->'data');
  END IF;
  PERFORM @private@.changefeed_pass(TG_RELID, TG_ARGV[0], msg);
  RETURN NULL;
END;
$$;

-- Event streams (opt-in, capture.events): an event appended to Marten's mt_events is reported as a change of its
-- stream's aggregate. Payload: {"s","t","id":<stream id>,"op":"A","x","ts","o","tn","st":<mt_streams.type>,
-- "e":{"type":<event type>,"version":<version>,"data":<event data, when it fits>}}. Archiving copies a stream's
-- events into the archived partition (UseArchivedStreamPartitioning): those rows are not appends.
-- Trigger arguments: channel, and the stream table (in the event table's schema), which the writer reads.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_event_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  row_json    jsonb := to_jsonb(NEW);
  tenant      text := row_json->>'tenant_id';
  stream_type text;
BEGIN
  IF coalesce((row_json->>'is_archived')::boolean, false) THEN
    RETURN NULL;
  END IF;
  EXECUTE format('SELECT type FROM %I.%I WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) LIMIT 1', TG_TABLE_SCHEMA, TG_ARGV[1])
    INTO stream_type USING NEW.stream_id, tenant;
  PERFORM @private@.changefeed_pass(TG_RELID, TG_ARGV[0], jsonb_build_object(
    'id', NEW.stream_id::text,
    'op', 'A',
    'o',  nullif(current_setting('changefeed.origin', true), ''),
    'tn', tenant,
    'st', stream_type,
    'e',  jsonb_build_object('type', NEW.type, 'version', NEW.version, 'data', row_json->'data')
  ));
  RETURN NULL;
END;
$$;

-- A stream archived (mt_archive_stream: an UPDATE of is_archived, or with archived-stream partitioning a copy of
-- the row into the archived partition) is one change of its aggregate: {"op":"R","id":<stream id>,"st":type,...}.
-- Trigger argument: channel.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_stream_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  row_json jsonb := to_jsonb(NEW);
BEGIN
  IF NOT coalesce((row_json->>'is_archived')::boolean, false)
     OR (TG_OP = 'UPDATE' AND coalesce((to_jsonb(OLD)->>'is_archived')::boolean, false)) THEN
    RETURN NULL;
  END IF;
  PERFORM @private@.changefeed_pass(TG_RELID, TG_ARGV[0], jsonb_build_object(
    'id', row_json->>'id',
    'op', 'R',
    'v',  row_json->>'version',
    'o',  nullif(current_setting('changefeed.origin', true), ''),
    'tn', row_json->>'tenant_id',
    'st', row_json->>'type'
  ));
  RETURN NULL;
END;
$$;

-- TRUNCATE removes every row of a watched table, or of one of its partitions, without a row trigger firing: one
-- change of the table, which names the relation truncated (the server finds the tenant a partition holds). On Marten's
-- table of tenant databases (second argument 'registry') any change of it is a note that the server reads the table
-- again; nothing of the table's rows goes out. Trigger arguments: channel[, 'registry'].
CREATE OR REPLACE FUNCTION @extschema@.changefeed_statement_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF TG_ARGV[1] = 'registry' THEN
    PERFORM @private@.changefeed_pass(TG_RELID, TG_ARGV[0], jsonb_build_object('ddl', 'registry'));
  ELSE
    PERFORM @private@.changefeed_pass(TG_RELID, TG_ARGV[0], jsonb_build_object(
      'id', '',
      'op', 'T',
      'ps', TG_TABLE_SCHEMA,
      'pt', TG_TABLE_NAME,
      'o',  nullif(current_setting('changefeed.origin', true), '')
    ));
  END IF;
  RETURN NULL;
END;
$$;

-- Registers a table as installed and grants what its writers need: EXECUTE on changefeed_announce to every role
-- that may insert, update or delete in it (its owner, and the grantees; PUBLIC where PUBLIC may write it), and on
-- the trigger functions to its owner (a partition it creates clones the trigger). Returns how many roles were
-- granted EXECUTE on changefeed_announce now: more than none means a writer may have written unannounced before.
-- The event trigger registers in the transaction of whoever ran the DDL (after any GRANT, every watched table), which
-- its role may keep open: a table registered as it is takes no row lock, and granting waits for nobody. While another
-- transaction grants (or installs the script), this one grants nothing and warns: the server, told by the writer's
-- first unannounced change or at its next scan, grants then.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_register(p_relid oid, p_channel text, p_inline boolean, p_outbox boolean) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  writer  record;
  granted int := 0;
  owner   name := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = p_relid);
  missing text[] := '{}';
BEGIN
  IF owner IS NULL THEN
    RETURN 0;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM @extschema@.changefeed_tables t
                 WHERE t.relid = p_relid AND t.channel = p_channel AND t.inline = p_inline AND t.outbox = p_outbox) THEN
    INSERT INTO @extschema@.changefeed_tables (relid, channel, inline, outbox) VALUES (p_relid, p_channel, p_inline, p_outbox)
    ON CONFLICT (relid) DO UPDATE SET channel = excluded.channel, inline = excluded.inline, outbox = excluded.outbox;
  END IF;
  FOR writer IN
    SELECT DISTINCT w.grantee FROM (
      SELECT relowner AS grantee FROM pg_class WHERE oid = p_relid
      UNION ALL
      SELECT a.grantee FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = p_relid AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE')
    ) w
  LOOP
    IF NOT has_function_privilege(CASE writer.grantee WHEN 0 THEN 'public' ELSE pg_get_userbyid(writer.grantee)::text END, '@private@.changefeed_announce(oid, jsonb)', 'EXECUTE') THEN
      missing := missing || CASE writer.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(writer.grantee)::text) END;
    END IF;
  END LOOP;
  IF missing = '{}' AND has_function_privilege(owner, '@extschema@.changefeed_notify()', 'EXECUTE') THEN
    RETURN 0;
  END IF;
  -- two transactions granting on one function at once fail ("tuple concurrently updated"): one at a time
  IF NOT pg_try_advisory_xact_lock(hashtext('fastify-changefeed:install')::bigint) THEN
    RAISE WARNING 'changefeed: another transaction is granting; the writers of % are granted later', p_relid::regclass;
    RETURN 0;
  END IF;
  IF missing <> '{}' THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION @private@.changefeed_announce(oid, jsonb) TO %s', array_to_string(missing, ', '));
    granted := cardinality(missing);
  END IF;
  IF NOT has_function_privilege(owner, '@extschema@.changefeed_notify()', 'EXECUTE') THEN
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.changefeed_notify(), @extschema@.changefeed_event_notify(), @extschema@.changefeed_stream_notify() TO %I', owner);
  END IF;
  RETURN granted;
END;
$$;

-- Whether a relation has the named trigger, on the function, with these arguments (as this version installs it).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_triggered(p_relid oid, p_name text, p_function regprocedure, p_args text[]) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT EXISTS (
    SELECT 1 FROM pg_trigger
    WHERE tgrelid = p_relid AND tgname = p_name AND tgfoid = p_function
      AND tgargs = (SELECT string_agg(convert_to(a, 'UTF8') || decode('00', 'hex'), ''::bytea) FROM unnest(p_args) a)
  );
$$;

-- Weasel rebuilds a table whose partitioning changed by copying it aside (CREATE TABLE <name>_temp AS SELECT * FROM
-- <name>), dropping it, creating it anew, copying the rows back and dropping the copy. The copy (so named, and without
-- a primary key, which no table Marten makes lacks) is nobody's table; the table is not watched while its copy exists,
-- so that the rows copied back, which did not change, are not announced: the copy's DROP installs it
-- (changefeed_on_drop).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_rebuild_copy(p_relid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce((
    SELECT c.relkind = 'r' AND right(c.relname, 5) = '_temp'
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')
    FROM pg_class c WHERE c.oid = p_relid), false);
$$;

-- Whether a table is being rebuilt: its copy exists, made by the table's owner (the role that rebuilds it; a copy of
-- another role's making would keep the table from being watched).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_rebuilding(p_relid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT coalesce((
    SELECT @extschema@.changefeed_rebuild_copy(cp.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class cp ON cp.oid = to_regclass(format('%I.%I', n.nspname, c.relname || '_temp'))::oid AND cp.relowner = c.relowner
    WHERE c.oid = p_relid), false);
$$;

-- A TRUNCATE fires the statement triggers of the relation named and, when it is partitioned, of every partition;
-- a partition's own TRUNCATE only its own; and PostgreSQL clones no statement trigger onto a partition. So every
-- relation of an installed table's tree carries its own (a partition created later gets it from the event trigger).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_statement_triggers(p_relid oid, p_channel text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  part record;
BEGIN
  FOR part IN
    SELECT c.oid, c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND (c.oid = p_relid OR c.oid IN (SELECT relid FROM pg_partition_tree(p_relid)))
  LOOP
    IF NOT @extschema@.changefeed_triggered(part.oid, 'changefeed_truncate'::text, '@extschema@.changefeed_statement_notify()'::regprocedure, ARRAY[p_channel]) THEN
      EXECUTE format('CREATE OR REPLACE TRIGGER changefeed_truncate AFTER TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.changefeed_statement_notify(%L)',
        part.nspname, part.relname, p_channel);
    END IF;
  END LOOP;
END;
$$;

-- Puts the trigger on one table; nothing on a partition, which its partitioned table's trigger covers. A partitioned
-- table's trigger (cloned by PostgreSQL onto every partition, now and later) is named changefeed_partitioned, an
-- ordinary table's changefeed_notify: two names, so that a table that has its own can still be attached as a
-- partition (the event trigger then drops its own). Every relation of the table's tree gets the TRUNCATE trigger. A
-- table being rebuilt, or the copy of one, gets nothing. Returns the roles granted rights now (changefeed_register).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_install(p_schema text, p_table text, p_channel text, p_inline boolean, p_outbox boolean DEFAULT false)
RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  rel  oid := to_regclass(format('%I.%I', p_schema, p_table));
  kind char;
  part boolean;
BEGIN
  SELECT c.relkind, c.relispartition INTO kind, part FROM pg_class c WHERE c.oid = rel;
  IF rel IS NULL OR part OR @extschema@.changefeed_rebuild_copy(rel) OR @extschema@.changefeed_rebuilding(rel) THEN
    RETURN 0;
  END IF;
  -- a trigger in place is left alone: replacing it would lock the table against writers at every scan
  IF NOT @extschema@.changefeed_triggered(rel, CASE kind WHEN 'p' THEN 'changefeed_partitioned' ELSE 'changefeed_notify' END::text, '@extschema@.changefeed_notify()'::regprocedure, ARRAY[p_channel]) THEN
    EXECUTE format(
      'CREATE OR REPLACE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I.%I FOR EACH ROW EXECUTE FUNCTION @extschema@.changefeed_notify(%L)',
      CASE kind WHEN 'p' THEN 'changefeed_partitioned' ELSE 'changefeed_notify' END, p_schema, p_table, p_channel);
  END IF;
  PERFORM @extschema@.changefeed_statement_triggers(rel, p_channel);
  RETURN @extschema@.changefeed_register(rel, p_channel, p_inline, p_outbox);
END;
$$;

-- Installs on every table of p_schema whose name matches p_pattern (LIKE) and has an "id" column, partitions and
-- rebuild copies aside. One row per table: `error` is null when the trigger is in place, else why not (the others go on);
-- `granted`, the roles given rights now. Forgets the installed tables that were dropped.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_watch(p_schema text, p_pattern text, p_channel text, p_inline_tables text[], p_outbox boolean DEFAULT false)
RETURNS TABLE (tbl text, error text, granted int)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO @extschema@.changefeed_patterns (schema_name, pattern, channel, inline_tables, outbox)
  VALUES (p_schema, p_pattern, p_channel, coalesce(p_inline_tables, '{}'), p_outbox)
  ON CONFLICT (schema_name, pattern, channel) DO UPDATE SET inline_tables = excluded.inline_tables, outbox = excluded.outbox;
  IF p_outbox THEN
    PERFORM @extschema@.changefeed_outbox_init(p_channel);
  END IF;
  DELETE FROM @extschema@.changefeed_tables t WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relid);

  FOR tbl IN
    SELECT c.relname
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_schema
      AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
      AND c.relname LIKE p_pattern
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped)
      AND NOT @extschema@.changefeed_rebuild_copy(c.oid)
    ORDER BY c.relname
  LOOP
    error := NULL;
    granted := 0;
    BEGIN
      granted := @extschema@.changefeed_install(p_schema, tbl, p_channel, tbl = ANY (coalesce(p_inline_tables, '{}')), p_outbox);
    EXCEPTION WHEN OTHERS THEN
      error := SQLERRM;
    END;
    RETURN NEXT;
  END LOOP;
END;
$$;

-- Installs on a table of a watched schema whose name matches a watched pattern, as the event triggers meet them, and
-- tells the server (a signed note; `p_note`: more of it), which then knows the new type at once. Never raises: a
-- failure is a warning to the one who ran the DDL and a note to the server.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_adopt(p_relid oid, p_note jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  rel record;
  w   record;
BEGIN
  SELECT c.relname, n.nspname INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_relid;
  IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = p_relid AND a.attname = 'id' AND NOT a.attisdropped) THEN
    RETURN;
  END IF;
  FOR w IN SELECT * FROM @extschema@.changefeed_patterns WHERE schema_name = rel.nspname AND rel.relname LIKE pattern LOOP
    BEGIN
      PERFORM @extschema@.changefeed_install(rel.nspname::text, rel.relname::text, w.channel, rel.relname = ANY (w.inline_tables), w.outbox);
      PERFORM @private@.changefeed_say(w.channel, @private@.changefeed_sign((jsonb_build_object('ddl', 'installed', 's', rel.nspname, 't', rel.relname, 'x', txid_current()) || p_note)::text));
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'changefeed: no trigger on %.%: %', rel.nspname, rel.relname, SQLERRM;
      BEGIN
        PERFORM @private@.changefeed_say(w.channel, @private@.changefeed_sign(jsonb_build_object('ddl', 'failed', 's', rel.nspname, 't', rel.relname, 'error', SQLERRM, 'x', txid_current())::text));
      EXCEPTION WHEN OTHERS THEN
        NULL;
      END;
    END;
  END LOOP;
END;
$$;

-- Tables created later (Marten creates mt_doc_* tables on first use, under its own role): install as they appear
-- (changefeed_adopt). After an ALTER TABLE: a table attached as a partition loses its own trigger (its partitioned
-- table's now covers it), a detached one gets its own again, and one with a new owner is registered again. A
-- partition of an installed table, new or attached, gets its TRUNCATE trigger. A table being rebuilt, and its copy,
-- are left alone (changefeed_rebuild_copy). After a GRANT on tables, every watched table's writers are registered.
-- An event trigger fires on DDL only: no role can call it. It runs as the owner of these objects, to put the trigger
-- on a table another role created; it acts only on tables of the watched schemas whose names match a watched
-- pattern (and on partitions of installed tables), with names read from the catalog, and never raises.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  cmd record;
  rel record;
  w   @extschema@.changefeed_tables;
BEGIN
  FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE lower(object_type) = 'table' LOOP
    -- rights on tables were granted (the command names no table): a new writer of a watched table gets the right to
    -- announce its changes before its first write
    IF cmd.command_tag = 'GRANT' THEN
      BEGIN
        PERFORM @extschema@.changefeed_register(t.relid, t.channel, t.inline, t.outbox) FROM @extschema@.changefeed_tables t WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.relid);
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'changefeed: granting the writers of watched tables failed: %', SQLERRM;
      END;
      CONTINUE;
    END IF;
    BEGIN
      -- the table; after an ALTER TABLE (an ATTACH or DETACH names the partitioned table) its partitions and every
      -- table of its schema: the watched ones among them are few
      FOR rel IN
        SELECT c.oid, c.relname, n.nspname, c.relispartition
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = cmd.objid OR (cmd.command_tag = 'ALTER TABLE' AND c.relkind IN ('r', 'p')
          AND (c.oid IN (SELECT relid FROM pg_partition_tree(cmd.objid))
            OR (c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = cmd.objid)
              AND EXISTS (SELECT 1 FROM @extschema@.changefeed_patterns p WHERE p.schema_name = n.nspname AND c.relname LIKE p.pattern))))
      LOOP
        IF rel.relispartition THEN
          IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel.oid AND tgname = 'changefeed_notify' AND tgparentid = 0) THEN
            EXECUTE format('DROP TRIGGER changefeed_notify ON %I.%I', rel.nspname, rel.relname);
          END IF;
          SELECT * INTO w FROM @extschema@.changefeed_tables WHERE relid = pg_partition_root(rel.oid);
          IF FOUND THEN
            PERFORM @extschema@.changefeed_statement_triggers(rel.oid, w.channel);
          END IF;
          CONTINUE;
        END IF;
        IF @extschema@.changefeed_rebuild_copy(rel.oid) OR @extschema@.changefeed_rebuilding(rel.oid) THEN
          CONTINUE;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel.oid AND tgname IN ('changefeed_notify', 'changefeed_partitioned')) THEN
          -- installed already; its owner may have changed
          PERFORM @extschema@.changefeed_register(t.relid, t.channel, t.inline, t.outbox) FROM @extschema@.changefeed_tables t WHERE t.relid = rel.oid;
          CONTINUE;
        END IF;
        PERFORM @extschema@.changefeed_adopt(rel.oid, '{}'::jsonb);
      END LOOP;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'changefeed: looking at a new or altered table failed: %', SQLERRM;
    END;
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'changefeed: looking at new tables failed: %', SQLERRM;
END;
$$;

-- Tables dropped: a watched one is forgotten and the server told (it forgets the type whose table it was, unless the
-- table is being rebuilt). The copy of a rebuilt table dropped ends the rebuild: the table gets its trigger now, and
-- the note says which table that is ("oid") and whether it was made in this very transaction ("fresh": then no other
-- transaction can have written it unannounced). Like changefeed_on_ddl: the owner's, fired by DDL only, never raises.
CREATE OR REPLACE FUNCTION @extschema@.changefeed_on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  obj  record;
  w    @extschema@.changefeed_tables;
  base oid;
BEGIN
  FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' AND NOT is_temporary LOOP
    BEGIN
      DELETE FROM @extschema@.changefeed_tables WHERE relid = obj.objid RETURNING * INTO w;
      IF FOUND THEN
        PERFORM @private@.changefeed_say(w.channel, @private@.changefeed_sign(jsonb_build_object('ddl', 'dropped', 's', obj.schema_name, 't', obj.object_name, 'x', txid_current())::text));
      ELSIF right(obj.object_name, 5) = '_temp' THEN
        base := to_regclass(format('%I.%I', obj.schema_name, left(obj.object_name, -5)));
        IF base IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = base AND tgname IN ('changefeed_notify', 'changefeed_partitioned')) THEN
          PERFORM @extschema@.changefeed_adopt(base, jsonb_build_object('fresh', (SELECT xmin FROM pg_class WHERE oid = base)::text = (txid_current() % 4294967296)::text, 'oid', base::text));
        END IF;
      END IF;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'changefeed: looking at a dropped table failed: %', SQLERRM;
    END;
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'changefeed: looking at dropped tables failed: %', SQLERRM;
END;
$$;

-- Installs the event store's triggers (default mt_events and mt_streams; TRUNCATE triggers on their trees). Null when
-- the event table is not there, else the roles granted rights now (changefeed_register).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_watch_events(p_schema text, p_events text, p_streams text, p_channel text, p_outbox boolean DEFAULT false)
RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  events  oid := to_regclass(format('%I.%I', p_schema, p_events));
  streams oid := to_regclass(format('%I.%I', p_schema, p_streams));
  granted int;
BEGIN
  IF events IS NULL OR streams IS NULL THEN
    RETURN NULL;
  END IF;
  IF NOT @extschema@.changefeed_triggered(events, 'changefeed_event_notify'::text, '@extschema@.changefeed_event_notify()'::regprocedure, ARRAY[p_channel, p_streams]) THEN
    EXECUTE format(
      'CREATE OR REPLACE TRIGGER changefeed_event_notify AFTER INSERT ON %I.%I FOR EACH ROW EXECUTE FUNCTION @extschema@.changefeed_event_notify(%L, %L)',
      p_schema, p_events, p_channel, p_streams);
  END IF;
  PERFORM @extschema@.changefeed_statement_triggers(events, p_channel);
  granted := @extschema@.changefeed_register(events, p_channel, true, p_outbox);
  -- streams are archived from Marten 7 on (is_archived); an older store has nothing to archive
  IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = streams AND attname = 'is_archived' AND NOT attisdropped) THEN
    IF NOT @extschema@.changefeed_triggered(streams, 'changefeed_stream_notify'::text, '@extschema@.changefeed_stream_notify()'::regprocedure, ARRAY[p_channel]) THEN
      EXECUTE format(
        'CREATE OR REPLACE TRIGGER changefeed_stream_notify AFTER INSERT OR UPDATE OF is_archived ON %I.%I FOR EACH ROW EXECUTE FUNCTION @extschema@.changefeed_stream_notify(%L)',
        p_schema, p_streams, p_channel);
    END IF;
    PERFORM @extschema@.changefeed_statement_triggers(streams, p_channel);
    granted := granted + @extschema@.changefeed_register(streams, p_channel, false, p_outbox);
  END IF;
  RETURN granted;
END;
$$;

-- Marten's table of tenant databases (MasterTableTenancy: mt_tenant_databases): any change of it tells the server,
-- which reads it again and starts or stops capturing a tenant's database. The note carries nothing of the table (its
-- rows hold connection strings), and goes out as a NOTIFY in either mode. Null when the table is not there, else the
-- roles granted rights now (changefeed_register).
CREATE OR REPLACE FUNCTION @extschema@.changefeed_watch_registry(p_schema text, p_table text, p_channel text) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  rel oid := to_regclass(format('%I.%I', p_schema, p_table));
BEGIN
  IF rel IS NULL THEN
    RETURN NULL;
  END IF;
  IF NOT @extschema@.changefeed_triggered(rel, 'changefeed_registry'::text, '@extschema@.changefeed_statement_notify()'::regprocedure, ARRAY[p_channel, 'registry']) THEN
    EXECUTE format(
      'CREATE OR REPLACE TRIGGER changefeed_registry AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.changefeed_statement_notify(%L, %L)',
      p_schema, p_table, p_channel, 'registry');
  END IF;
  RETURN @extschema@.changefeed_register(rel, p_channel, false, false);
END;
$$;

-- Nothing of this is anyone else's to use: the owner (or whom it grants) calls; changefeed_register grants a watched
-- table's writers what they need.
REVOKE ALL ON FUNCTION @extschema@.changefeed_hmac_pad(bytea, int), @extschema@.changefeed_outbox_init(text), @private@.changefeed_sign(text), @private@.changefeed_say(text, text),
  @extschema@.changefeed_triggered(oid, text, regprocedure, text[]),
  @private@.changefeed_announce(oid, jsonb), @private@.changefeed_pass(oid, text, jsonb), @extschema@.changefeed_notify(), @extschema@.changefeed_event_notify(),
  @extschema@.changefeed_stream_notify(), @extschema@.changefeed_statement_notify(), @extschema@.changefeed_register(oid, text, boolean, boolean),
  @extschema@.changefeed_rebuild_copy(oid), @extschema@.changefeed_rebuilding(oid), @extschema@.changefeed_statement_triggers(oid, text),
  @extschema@.changefeed_install(text, text, text, boolean, boolean), @extschema@.changefeed_watch(text, text, text, text[], boolean),
  @extschema@.changefeed_adopt(oid, jsonb), @extschema@.changefeed_on_ddl(), @extschema@.changefeed_on_drop(),
  @extschema@.changefeed_watch_events(text, text, text, text, boolean), @extschema@.changefeed_watch_registry(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @private@.changefeed_pass(oid, text, jsonb), @private@.changefeed_say(text, text) TO PUBLIC;
$functions$, '@extschema@', pg_catalog.current_setting('changefeed.schema')), '@private@', pg_catalog.current_setting('changefeed.private'));
END;
$define$;

INSERT INTO changefeed_key (key, ipad, opad)
SELECT k, changefeed_hmac_pad(k, 54), changefeed_hmac_pad(k, 92)
FROM (SELECT pg_catalog.decode(pg_catalog.replace(pg_catalog.concat(pg_catalog.gen_random_uuid(), pg_catalog.gen_random_uuid()), '-', ''), 'hex') AS k) random_key
ON CONFLICT (one) DO NOTHING;

-- An event trigger needs superuser (or, from PostgreSQL 17, a role allowed to create one). Without that
-- right the plugin still picks up new tables by re-scanning on an interval.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_ddl') THEN
    CREATE EVENT TRIGGER changefeed_on_ddl ON ddl_command_end
      WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'GRANT')
      EXECUTE FUNCTION changefeed_on_ddl();
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'changefeed: no right to create an event trigger; new tables are found by re-scanning';
END;
$$;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'changefeed_on_drop') THEN
    CREATE EVENT TRIGGER changefeed_on_drop ON sql_drop WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION changefeed_on_drop();
  END IF;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'changefeed: no right to create an event trigger; dropped tables are found by re-scanning';
END;
$$;

-- The tables are no one else's to read or write (the functions' rights are set with them, above).
REVOKE ALL ON TABLE changefeed_migrations, changefeed_patterns, changefeed_tables, changefeed_key, changefeed_outbox, changefeed_outbox_state FROM PUBLIC;

