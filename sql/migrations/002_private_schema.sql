-- fastify-changefeed migration 002: the functions the triggers call by name move to a schema of their own.
--
-- The triggers call changefeed_pass, which calls changefeed_announce, changefeed_sign and changefeed_say, by name.
-- In the schema installed into, where other roles may create functions (Marten's role creates its tables in
-- public), an overload with one more defaulted argument made every such call ambiguous: every write to a watched
-- table failed. They move, as they are (their grants with them), to <schema>_changefeed, which only the owner may
-- create in; sql/changefeed.sql then defines them there. A role that may not create a schema (CREATE on the
-- database) keeps them where they are, and the script says so. Idempotent; a new database passes through it.
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

DO $$
DECLARE
  private text := pg_catalog.quote_ident(pg_catalog.concat(pg_catalog.current_schema(), '_changefeed'));
  f       text;
BEGIN
  IF pg_catalog.to_regnamespace(private) IS NULL AND NOT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') THEN
    -- the script warns, and keeps them where they are
    RETURN;
  ELSIF pg_catalog.to_regnamespace(private) IS NULL THEN
    EXECUTE pg_catalog.concat('CREATE SCHEMA ', private);
  ELSIF (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
         WHERE n.oid OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(private)::oid) OPERATOR(pg_catalog.<>) CURRENT_USER THEN
    RAISE EXCEPTION 'changefeed: schema % belongs to another role', private;
  END IF;
  EXECUTE pg_catalog.concat('REVOKE ALL ON SCHEMA ', private, ' FROM PUBLIC');
  EXECUTE pg_catalog.concat('GRANT USAGE ON SCHEMA ', private, ' TO PUBLIC');
  FOREACH f IN ARRAY ARRAY['changefeed_announce(oid, jsonb)', 'changefeed_pass(oid, text, jsonb)', 'changefeed_sign(text)', 'changefeed_say(text, text)'] LOOP
    IF pg_catalog.to_regprocedure(pg_catalog.concat(pg_catalog.quote_ident(pg_catalog.current_schema()), '.', f)) IS NOT NULL
       AND pg_catalog.to_regprocedure(pg_catalog.concat(private, '.', f)) IS NULL THEN
      EXECUTE pg_catalog.concat('ALTER FUNCTION ', pg_catalog.quote_ident(pg_catalog.current_schema()), '.', f, ' SET SCHEMA ', private);
    END IF;
  END LOOP;
END;
$$;

INSERT INTO changefeed_migrations (name) VALUES ('002_private_schema') ON CONFLICT (name) DO NOTHING;
