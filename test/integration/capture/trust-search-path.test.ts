/**
 * The schema the SQL is installed in is one other roles may create objects in (Marten's role creates its tables in
 * `public`). Functions and operators are chosen by their argument types across every schema of the search path, so
 * an overload there that fits better than pg_catalog's (right(name, int) where pg_catalog has right(text, int), an
 * operator jsonb ->> jsonb for `x->>'id'`) would run instead of it, with the rights of whoever runs our code: the
 * owner of the changefeed objects in the event triggers and changefeed_announce, the writer in the row triggers. The
 * attacker here may create in `public` and owns a watched table; its decoys record who ran them.
 */
import t from 'tap'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'

const url = await freshDatabase(t, 'trust_path')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
const attacker = await role(t, url, 'trust_path_owner', ['public'])
const own = await attacker.client()
await own.query(martenTableSql('mt_doc_own'))
const { app, client } = await startApp(t, { databases: [{ name: 'ballr', url }], capture: { channel: 'trust:path' }, entities: { Team: { access: 'public', payload: 'full' } } })

/**
 * A decoy: records the role it runs as, then does what the function it stands in for does (or, standing in for one
 * of ours, nothing). The overloads of our functions fit calls that pass a literal or a name better than ours do.
 */
const decoy = (signature: string, returns: string, body: string): string => `
  CREATE FUNCTION public.${signature} RETURNS ${returns} LANGUAGE plpgsql AS $f$
  BEGIN
    INSERT INTO public.decoy_runs VALUES ('${signature.replace(/\(.*/, '')}', current_user);
    ${body}
  END $f$;`

t.test('overloads in the install schema never run in place of pg_catalog\'s, as anyone', async (t) => {
  await own.query(`CREATE TABLE public.decoy_runs (decoy text, who text);
    GRANT INSERT ON public.decoy_runs TO PUBLIC;
    ${decoy('right(r name, n integer)', 'text', 'RETURN pg_catalog.right(r::text, n);')}
    ${decoy('quote_ident(r name)', 'text', 'RETURN pg_catalog.quote_ident(r::text);')}
    ${decoy('format(f text, a name, b text)', 'text', 'RETURN pg_catalog.format(f, a, b);')}
    ${decoy('pg_partition_root(r oid)', 'regclass', 'RETURN pg_catalog.pg_partition_root(r::regclass);')}
    ${decoy('pg_partition_tree(r oid, OUT relid regclass, OUT parentrelid regclass, OUT isleaf boolean, OUT level integer)', 'SETOF record',
      'RETURN QUERY SELECT * FROM pg_catalog.pg_partition_tree(r::regclass);')}
    ${decoy('field(j jsonb, k jsonb)', 'text', 'RETURN j OPERATOR(pg_catalog.->>) (k OPERATOR(pg_catalog.#>>) \'{}\');')}
    CREATE OPERATOR public.->> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.field);
    ${decoy('minus(j jsonb, k jsonb)', 'jsonb', 'RETURN j OPERATOR(pg_catalog.-) (k OPERATOR(pg_catalog.#>>) \'{}\');')}
    CREATE OPERATOR public.- (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.minus);
    ${decoy('to_jsonb(r public.mt_doc_team)', 'jsonb', 'RETURN pg_catalog.row_to_json(r)::jsonb;')}
    ${decoy('oid_is(a oid, b regclass)', 'boolean', 'RETURN a OPERATOR(pg_catalog.=) b::oid;')}
    CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.oid_is);
    ${decoy('varchar_is(a varchar, b varchar)', 'boolean', 'RETURN a::text OPERATOR(pg_catalog.=) b::text;')}
    CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.varchar_is);
    ${decoy('gather(s text[], v text)', 'text[]', 'RETURN s OPERATOR(pg_catalog.||) v;')}
    CREATE AGGREGATE public.array_agg(text) (SFUNC = public.gather, STYPE = text[], INITCOND = '{}');
    ${decoy('pg_try_advisory_lock(k integer)', 'boolean', 'RETURN pg_catalog.pg_try_advisory_lock(k::bigint);')}
    ${decoy('pg_advisory_xact_lock(k integer)', 'void', 'PERFORM pg_catalog.pg_advisory_xact_lock(k::bigint);')}
    ${decoy('pg_get_partkeydef(r regclass)', 'text', 'RETURN pg_catalog.pg_get_partkeydef(r::oid);')}
    ${decoy('changefeed_adopt(r oid, note text)', 'void', 'RETURN;')}
    ${decoy('changefeed_install(s name, t name, c text, i boolean, o boolean)', 'int', 'RETURN 0;')}
    ${decoy('changefeed_triggered(r oid, n text, f text, a text[])', 'boolean', 'RETURN true;')}
    ${decoy('changefeed_watch(s varchar, p varchar, c varchar, i varchar[], o boolean)', 'TABLE (tbl text, error text, granted int)', 'RETURN;')}`)
  const ws = await client()
  await ws.subscribe('Team', 't-1')

  // DDL of its own, each of which the event triggers look at as the owner of the changefeed objects
  await own.query(`CREATE TEMP TABLE scratch (a int);
    CREATE TABLE mt_doc_bait (id text PRIMARY KEY, data jsonb);
    ALTER TABLE mt_doc_bait ADD COLUMN extra int;
    GRANT SELECT ON mt_doc_bait TO PUBLIC;
    CREATE TABLE mt_doc_bait_temp AS SELECT * FROM mt_doc_bait;
    DROP TABLE mt_doc_bait_temp;
    CREATE TABLE mt_doc_parts (id text, data jsonb, PRIMARY KEY (id)) PARTITION BY LIST (id);
    CREATE TABLE mt_doc_parts_a PARTITION OF mt_doc_parts FOR VALUES IN ('a')`)
  // writes of its own, announced by the owner's function (a partition is reported as its partitioned table)
  await own.query('INSERT INTO mt_doc_own (id, data) VALUES (\'o-1\', \'{}\')')
  await own.query('INSERT INTO mt_doc_parts (id, data) VALUES (\'a\', \'{}\')')
  // another role's write (the superuser's) runs the row trigger as that role; the plugin's own scan as its role
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{"name": "real"}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created', payload: { name: 'real' } }, 'the real change goes out')
  await app.changefeed.rescan()
  // reads of the plugin, with Marten's varchar ids: a snapshot, and a document too large to ride inline
  ws.send({ type: 'subscribe', id: 'snap', data: { entityType: 'Team', entityId: 't-1', snapshot: true } })
  t.match(await ws.next((m) => m.id === 'snap'), { type: 'subscribed', data: { snapshot: { payload: { name: 'real' } } } }, 'a snapshot')
  const big = { name: 'big', filler: 'x'.repeat(9000) }
  await sql.query('UPDATE mt_doc_team SET data = $1 WHERE id OPERATOR(pg_catalog.=) \'t-1\'', [big])
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { payload: { name: 'big' } }, 'a document read back')

  const runs = (await sql.query('SELECT DISTINCT decoy, who FROM public.decoy_runs WHERE who <> $1 ORDER BY 1, 2', [attacker.name])).rows
  t.same(runs, [], 'no decoy ran as another role')
  t.equal((await sql.query('SELECT rolsuper FROM pg_roles WHERE rolname = $1', [attacker.name])).rows[0].rolsuper, false)
  t.same((await sql.query(`SELECT p.proname FROM pg_proc p WHERE p.proname LIKE 'changefeed%' AND p.pronamespace IN ('public'::regnamespace, 'public_changefeed'::regnamespace)
    AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false) ORDER BY 1`)).rows, [],
  'every changefeed function searches pg_catalog and pg_temp only')
})

t.test('overloads of our functions in the install schema make no write fail', async (t) => {
  // with a defaulted argument more, each fits a call of ours as well as ours does: the call is ambiguous
  await own.query(`CREATE FUNCTION public.changefeed_pass(r oid, c text, j jsonb, more text DEFAULT '') RETURNS void LANGUAGE sql AS '';
    CREATE FUNCTION public.changefeed_announce(r oid, j jsonb, more text DEFAULT '') RETURNS void LANGUAGE sql AS '';
    CREATE FUNCTION public.changefeed_sign(b text, more text DEFAULT '') RETURNS text LANGUAGE sql AS 'SELECT b';
    CREATE FUNCTION public.changefeed_say(c text, p text, more text DEFAULT '') RETURNS boolean LANGUAGE sql AS 'SELECT true'`)
  const ws = await client()
  await ws.subscribe('Team', 't-5')
  // a new session: one that ran the triggers before keeps the functions it found then
  const writer = await sqlClient(t, url)
  await t.resolves(writer.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-5\', \'{"name": "five"}\')'), 'the write commits')
  t.match((await ws.next(isNotification('Team', 't-5'))).data, { changeType: 'created', payload: { name: 'five' } }, 'and is announced')
})
