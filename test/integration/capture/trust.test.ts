/**
 * What is trusted: only a write to a watched table makes a change a browser sees (sql/README.md, "Privileges").
 * The attacker of most of these tests is a role with nothing but CONNECT and TEMP: it can NOTIFY, LISTEN, make
 * temporary tables, functions, types and casts of its own, and call what PUBLIC may call. Each attack fails, nothing
 * reaches the browser watching, and what reaches the listener is counted by reason. The product also installs and
 * runs as a non-superuser role, and checks its configuration against the database at start.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import changefeed from '../../../lib/index.js'
import { packageRoot } from '../../../lib/package.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { role, announceLeverSql } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type TestClient } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import { eventStore } from '../../fixtures/marten/index.js'
import type { TestContext } from '../../unit/fixtures/fakes.js'

const url = await freshDatabase(t, 'trust')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_rugbygamestate'))
await sql.query(eventStore({ schema: 'public', streamIdentity: 'string' }))
const intruder = await role(t, url, 'trust_intruder')
// owns a watched table of its own (as Marten's role does): it may put the capture triggers on tables it owns
const marten = await role(t, url, 'trust_owner', ['public'])
const martenDb = await marten.client()
await martenDb.query(martenTableSql('mt_doc_fixture'))
const channel = 'ballr:db_changes'
const entities = { Team: { access: 'public' as const }, RugbyGameState: { access: 'public' as const, payload: 'full' as const }, Fixture: { access: 'public' as const } }
const { app, client } = await startApp(t, { databases: [{ name: 'ballr', url }], capture: { channel, events: { enabled: true } }, entities })
const relid = async (table: string): Promise<number> => Number((await sql.query('SELECT $1::regclass::oid AS oid', [table])).rows[0].oid)
const dropped = (): Record<string, number | undefined> => app.changefeed.stats().dropped

/** A real change of the match, then: the first notification the watcher gets is it (nothing forged came before). */
async function onlyRealChanges (t: TestContext, ws: TestClient, score: number): Promise<void> {
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = $1 WHERE id = \'m-1\'', [{ homeScore: score }])
  t.match((await ws.next(isNotification('RugbyGameState', 'm-1'))).data, { payload: { homeScore: score } }, 'the next real change')
  t.same(ws.messages.filter((m) => m.type === 'notification' || m.type === 'resync'), [], 'and nothing before it')
}

await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'m-1\', \'{"homeScore": 0}\')')

t.test('a role with only CONNECT and TEMP can use none of the changefeed objects', async (t) => {
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'm-1')
  const spy = await intruder.client()
  await spy.query('CREATE TEMP TABLE decoy (id text PRIMARY KEY, data jsonb, mt_version uuid)')
  const match = await relid('mt_doc_rugbygamestate')
  const denied: Array<[string, unknown[]]> = [
    ['SELECT key FROM changefeed_key', []],
    ['SELECT * FROM changefeed_tables', []],
    ['UPDATE changefeed_tables SET channel = channel', []],
    ['INSERT INTO changefeed_outbox (channel, s, t, eid, x, change) VALUES ($1, \'public\', \'mt_doc_rugbygamestate\', \'m-1\', 1, \'{}\')', [channel]],
    ['SELECT public_changefeed.changefeed_announce($1, $2)', [match, { id: 'm-1', op: 'U', d: { homeScore: 99 } }]],
    ['SELECT public_changefeed.changefeed_sign($1)', ['{}']],
    ['SELECT changefeed_register($1, $2, true, false)', [match, channel]],
    ['SELECT changefeed_install(\'pg_temp\', \'decoy\', $1, true, false)', [channel]],
    ['SELECT * FROM changefeed_watch(\'public\', \'%\', $1, \'{}\', false)', [channel]],
    ['SELECT changefeed_watch_events(\'public\', \'mt_events\', \'mt_streams\', $1, false)', [channel]],
    ['SELECT changefeed_watch_registry(\'public\', \'mt_doc_team\', $1)', [channel]],
    ['SELECT changefeed_statement_triggers($1, $2)', [match, channel]],
    ['SELECT changefeed_adopt($1, \'{"fresh": true}\')', [match]],
    ['SELECT changefeed_rebuild_copy($1)', [match]],
    ['SELECT changefeed_rebuilding($1)', [match]],
    // the trigger functions cannot be put on a table of its own (the review's view and cast tricks start here)
    [`CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_notify('${channel}')`, []],
    [`CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_event_notify('${channel}', 'mt_streams')`, []],
    [`CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_stream_notify('${channel}')`, []],
    [`CREATE TRIGGER decoy AFTER TRUNCATE ON decoy FOR EACH STATEMENT EXECUTE FUNCTION changefeed_statement_notify('${channel}')`, []],
    [`CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH STATEMENT EXECUTE FUNCTION changefeed_statement_notify('${channel}', 'registry')`, []],
    ['INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'m-2\', \'{}\')', []]
  ]
  for (const [text, params] of denied) await t.rejects(spy.query(text, params), { code: '42501' }, text.slice(0, 60))

  // the one function PUBLIC may call runs as its caller: an unsigned note, which only makes the server look
  await spy.query('SELECT public_changefeed.changefeed_pass($1, $2, $3)', [match, channel, { id: 'm-1', op: 'U', d: { homeScore: 98 } }])
  t.ok(await until(() => dropped().unannounced === 1), 'the note is counted')
  await onlyRealChanges(t, ws, 1)
})

t.test('NOTIFYs: unsigned, re-signed and overheard payloads reach nobody', async (t) => {
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'm-1')
  const spy = await intruder.client()
  const overheard: string[] = []
  spy.on('notification', (m) => { if (m.payload !== undefined) overheard.push(m.payload) })
  await spy.query(`LISTEN "${channel}"`)
  await onlyRealChanges(t, ws, 5)
  t.ok(await until(() => overheard.length === 1), 'it can listen')
  const before = { ...dropped() }
  const real = overheard[0]
  const forgedBody = real.slice(64).replace('"homeScore": 5', '"homeScore": 99')
  await spy.query('SELECT pg_notify($1, $2)', [channel, forgedBody])
  await spy.query('SELECT pg_notify($1, $2)', [channel, real.slice(0, 64) + forgedBody])
  await spy.query('SELECT pg_notify($1, $2)', [channel, real])
  // the same signature in capitals: the same bytes, but not the payload the trigger signed
  await spy.query('SELECT pg_notify($1, $2)', [channel, real.slice(0, 64).toUpperCase() + real.slice(64)])
  t.ok(await until(() => dropped().forged === (before.forged ?? 0) + 3 && dropped().replayed === (before.replayed ?? 0) + 1),
    `each attempt is counted by reason: ${JSON.stringify(dropped())}`)
  await onlyRealChanges(t, ws, 6)
})

t.test('a signed payload sent again after a restart is refused: its transaction was over before the new listener', async (t) => {
  const db = await freshDatabase(t, 'trust_restart')
  const owner = await sqlClient(t, db)
  await owner.query(martenTableSql('mt_doc_rugbygamestate'))
  await owner.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'m-1\', \'{"homeScore": 0}\')')
  const options = { databases: [{ name: 'ballr', url: db }], capture: { channel }, entities }
  const first = await startApp(t, options)
  const spy = await (await role(t, db, 'trust_recorder')).client()
  const recorded: string[] = []
  spy.on('notification', (m) => { if (m.payload !== undefined) recorded.push(m.payload) })
  await spy.query(`LISTEN "${channel}"`)
  await owner.query('UPDATE mt_doc_rugbygamestate SET data = \'{"homeScore": 3}\' WHERE id = \'m-1\'')
  t.ok(await until(() => recorded.length === 1), 'a real change, recorded')
  await first.app.close()

  const second = await startApp(t, options)
  const ws = await second.client()
  await ws.subscribe('RugbyGameState', 'm-1')
  await owner.query('UPDATE mt_doc_rugbygamestate SET data = \'{"homeScore": 7}\' WHERE id = \'m-1\'')
  t.match((await ws.next(isNotification('RugbyGameState', 'm-1'))).data, { payload: { homeScore: 7 } }, 'the new listener works')
  await spy.query('SELECT pg_notify($1, $2)', [channel, recorded[0]])
  t.ok(await until(() => second.app.changefeed.stats().dropped.replayed === 1), 'the old payload is refused and counted')
  await owner.query('UPDATE mt_doc_rugbygamestate SET data = \'{"homeScore": 8}\' WHERE id = \'m-1\'')
  t.match((await ws.next(isNotification('RugbyGameState', 'm-1'))).data, { payload: { homeScore: 8 } })
  t.same(ws.messages.filter((m) => m.type === 'notification'), [], 'the score of 3 never came back')
})

t.test('the owner of a watched table: its own code runs with its own rights, and its tables are not watched ones', async (t) => {
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'm-1')
  // a cast that tries to take the rights of whoever converts the row to JSON (to_jsonb uses a type's cast to json),
  // and a view whose function does the same
  await martenDb.query(`CREATE TABLE attempts (what text, outcome text);
    CREATE TYPE lever AS ENUM ('v');
    CREATE FUNCTION pull(l lever) RETURNS json LANGUAGE plpgsql AS $f$
    BEGIN
      BEGIN
        EXECUTE format('ALTER ROLE %I SUPERUSER', current_user);
        INSERT INTO public.attempts VALUES ('superuser', 'granted');
      EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES ('superuser', SQLSTATE);
      END;
      BEGIN
        PERFORM key FROM public.changefeed_key;
        INSERT INTO public.attempts VALUES ('key', 'read');
      EXCEPTION WHEN OTHERS THEN INSERT INTO public.attempts VALUES ('key', SQLSTATE);
      END;
      RETURN '"x"';
    END $f$;
    CREATE CAST (lever AS json) WITH FUNCTION pull(lever);
    CREATE TABLE decoy (id text PRIMARY KEY, data jsonb, l lever);
    CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_notify('${channel}');
    CREATE TABLE fake_events (seq_id bigint, id text, stream_id text, version bigint, type text, data jsonb, tenant_id text);
    CREATE VIEW fake_streams AS SELECT 'm-1'::text AS id, NULL::text AS tenant_id, pull('v'::lever)::text AS type;
    CREATE TRIGGER fake AFTER INSERT ON fake_events FOR EACH ROW EXECUTE FUNCTION changefeed_event_notify('${channel}', 'fake_streams')`)
  await martenDb.query('INSERT INTO decoy VALUES (\'m-1\', \'{"homeScore": 77}\', \'v\')')
  await martenDb.query('INSERT INTO fake_events VALUES (1, \'e\', \'m-1\', 1, \'TryScored\', \'{"homeScore": 66}\', NULL)')
  // the TRUNCATE and registry trigger is not even its to put on a table: nothing it creates clones it
  await t.rejects(martenDb.query(`CREATE TRIGGER gone AFTER TRUNCATE ON decoy FOR EACH STATEMENT EXECUTE FUNCTION changefeed_statement_notify('${channel}')`), { code: '42501' })
  // straight from the top, naming a watched table: refused as well
  await martenDb.query('SELECT public_changefeed.changefeed_announce($1, $2)', [await relid('mt_doc_rugbygamestate'), { id: 'm-1', op: 'U', d: { homeScore: 55 } }])
  const attempts = (await sql.query('SELECT what, outcome FROM attempts ORDER BY what, outcome')).rows
  t.ok(attempts.length >= 4, 'the cast and the view ran')
  t.ok(attempts.every((a) => a.outcome === '42501'), `and were refused every time: ${JSON.stringify(attempts)}`)
  t.equal((await sql.query('SELECT rolsuper FROM pg_roles WHERE rolname = $1', [marten.name])).rows[0].rolsuper, false)
  await onlyRealChanges(t, ws, 11)
})

t.test('a role that may write one watched table: its changes go out, and it needs no rights on our tables', async (t) => {
  const writer = await role(t, url, 'trust_writer')
  // granted after the server started: the event trigger gives it the right to announce before its first write
  await sql.query(`GRANT SELECT, INSERT, UPDATE ON mt_doc_team TO ${writer.name}`)
  const ws = await client()
  await ws.subscribe('Team', 't-1')
  const unannounced = dropped().unannounced
  const db = await writer.client()
  await db.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created' })
  await t.rejects(db.query('SELECT key FROM changefeed_key'), { code: '42501' })
  await t.rejects(db.query('INSERT INTO changefeed_outbox (channel, s, t, eid, x, change) VALUES ($1, \'public\', \'mt_doc_team\', \'t-1\', 1, \'{}\')', [channel]), { code: '42501' })
  t.equal(dropped().unannounced, unannounced, 'no change of its went unannounced')
})

t.test('a writer of one watched table cannot announce changes of another from a trigger of its own', async (t) => {
  const writer = await role(t, url, 'trust_forger')
  await sql.query(`GRANT SELECT, INSERT, UPDATE ON mt_doc_team TO ${writer.name}`)
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'm-1')
  const db = await writer.client()
  await db.query(announceLeverSql('public.mt_doc_rugbygamestate'))
  // in a transaction that wrote the table it may write, a change of the match; then a TRUNCATE of it
  await db.query('BEGIN; INSERT INTO mt_doc_team (id, data) VALUES (\'t-forger\', \'{}\')')
  await db.query('INSERT INTO lever VALUES ($1)', [{ id: 'm-1', op: 'U', d: { homeScore: 1000 } }])
  await db.query('COMMIT')
  await db.query('INSERT INTO lever VALUES ($1)', [{ id: '', op: 'T', ps: 'public', pt: 'mt_doc_rugbygamestate' }])
  await onlyRealChanges(t, ws, 21)
})

t.test('outbox mode: only installed tables write the outbox, only on their channel', async (t) => {
  const outboxUrl = await freshDatabase(t, 'trust_outbox')
  const owner = await sqlClient(t, outboxUrl)
  await owner.query(martenTableSql('mt_doc_team'))
  const { app: outboxApp, client: outboxClient } = await startApp(t, {
    databases: [{ name: 'ballr', url: outboxUrl }],
    capture: { mode: 'outbox', channel: 'trust:outbox' },
    entities: { Team: { access: 'public', payload: 'full' } }
  })
  const stranger = await role(t, outboxUrl, 'trust_outbox_intruder')
  const spy = await stranger.client()
  const tableOwner = await role(t, outboxUrl, 'trust_outbox_owner', ['public'])
  const own = await tableOwner.client()
  await own.query(martenTableSql('mt_doc_own'))
  await outboxApp.changefeed.rescan()
  const ws = await outboxClient()
  await ws.subscribe('Team', 't-1')
  const change = { id: 't-1', op: 'U', d: { name: 'forged' } }
  await t.rejects(spy.query('INSERT INTO changefeed_outbox (channel, s, t, eid, x, change) VALUES (\'trust:outbox\', \'public\', \'mt_doc_team\', \'t-1\', 1, $1)', [change]), { code: '42501' })
  await t.rejects(spy.query('SELECT public_changefeed.changefeed_announce(\'mt_doc_team\'::regclass, $1)', [change]), { code: '42501' })
  // the owner of another watched table, from a trigger on a table of its own, on a channel of its choosing
  await own.query(`CREATE TEMP TABLE decoy (id text, data jsonb);
    CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_notify('elsewhere')`)
  await own.query('INSERT INTO decoy VALUES (\'t-1\', \'{"name": "forged"}\')')
  await spy.query('SELECT pg_notify(\'trust:outbox\', \'outbox\')')
  await owner.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{"name": "real"}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { payload: { name: 'real' } })
  t.same(ws.messages.filter(isNotification('Team', 't-1')), [], 'only the real change')
  t.same((await owner.query('SELECT channel, count(*)::int AS n FROM changefeed_outbox GROUP BY channel')).rows, [{ channel: 'trust:outbox', n: 1 }],
    'one outbox row, on the channel the server installed')
  t.equal(outboxApp.changefeed.stats().dropped.forged, undefined, 'a wake-up is not a change, forged or not')
})

t.test('installed and run by a role that is not superuser', async (t) => {
  const appUrl = await freshDatabase(t, 'trust_nonsuper')
  const marten = await role(t, appUrl, 'trust_marten', ['public'])
  const other = await role(t, appUrl, 'trust_other', ['public'])
  const db = await marten.client()
  await db.query(martenTableSql('mt_doc_team'))
  const { app: roleApp, client: roleClient } = await startApp(t, {
    databases: [{ name: 'ballr', url: marten.url }],
    capture: { channel: 'trust:role' },
    entities: { Team: { access: 'public' }, Fixture: { access: 'public' } }
  })
  const ws = await roleClient()
  await ws.subscribe('Team', 't-1')
  await db.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created' })
  // no event trigger without superuser: a table created later is found by a re-scan
  await db.query(martenTableSql('mt_doc_fixture'))
  await roleApp.changefeed.rescan()
  await ws.subscribe('Fixture', 'f-1')
  await db.query('INSERT INTO mt_doc_fixture (id, data) VALUES (\'f-1\', \'{}\')')
  t.match((await ws.next(isNotification('Fixture', 'f-1'))).data, { changeType: 'created' })
  // another role's table in the watched schema: it creates it fine; the product cannot put a trigger on it, and says so
  const theirs = await other.client()
  await t.resolves(theirs.query(martenTableSql('mt_doc_theirs')), 'another role\'s CREATE TABLE')
  await roleApp.changefeed.rescan()
  t.match(roleApp.changefeed.stats().untriggeredTables, { 'ballr.public.mt_doc_theirs': /owner|permission/ }, 'reported, not failed')

  // a role given write rights while the server runs, with no event trigger to see the GRANT: its first write
  // commits but cannot be announced; the trigger's note makes the server grant the right, and the watchers refetch
  const importer = await role(t, appUrl, 'trust_importer')
  await db.query(`GRANT SELECT, INSERT, UPDATE ON mt_doc_team TO ${importer.name}`)
  const writes = await importer.client()
  await t.resolves(writes.query('UPDATE mt_doc_team SET data = \'{"name": "first"}\' WHERE id = \'t-1\''), 'the write commits')
  t.match(await ws.next((m) => m.type === 'resync'), { data: { reason: 'unannounced', entityType: 'Team', entityId: 't-1' } }, 'its watchers refetch')
  t.equal(roleApp.changefeed.stats().dropped.unannounced, 1, 'counted')
  await writes.query('UPDATE mt_doc_team SET data = \'{"name": "second"}\' WHERE id = \'t-1\'')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'updated' }, 'its next write is announced')
})

t.test('start-up checks against the database', async (t) => {
  const lines: string[] = []
  const logger = { level: 'warn', stream: new Writable({ write (chunk, _enc, done) { lines.push(chunk.toString()); done() } }) }
  await startApp(t, {
    databases: [{ name: 'ballr', url }],
    capture: { channel: 'trust:checks' },
    entities: { Team: { access: 'public' }, Missing: { access: 'public' } }
  }, { logger })
  t.ok(lines.some((l) => l.includes('"entityType":"Missing"') && l.includes('"level":40')), 'a declared table that does not exist is a warning')

  await sql.query('CREATE TABLE mt_doc_nodata (id text PRIMARY KEY, body jsonb)')
  const noData = Fastify({ logger: false })
  t.teardown(async () => await noData.close())
  await t.rejects(async () => await noData.register(changefeed, {
    databases: [{ name: 'ballr', url }],
    capture: { channel: 'trust:checks' },
    entities: { NoData: { access: 'public', payload: 'full' } }
  }).ready(), { code: 'CHANGEFEED_ENTITY_TABLE' }, 'a full type without a data column stops the start')

  const elsewhere = Fastify({ logger: false })
  t.teardown(async () => await elsewhere.close())
  await elsewhere.register(fastifyPostgres, { name: 'ballr', connectionString: url.replace(/\/[^/]+$/, '/postgres') })
  await t.rejects(async () => await elsewhere.register(changefeed, { databases: [{ name: 'ballr', url }], entities: { Team: { access: 'public' } } }).ready(),
    { code: 'CHANGEFEED_DATABASE_MISMATCH' }, 'a host pool of that name connected to another database')
})

t.test('a database with the script of before migrations: upgraded at start, its old grants gone, changes flow', async (t) => {
  const oldUrl = await freshDatabase(t, 'trust_upgrade')
  const owner = await sqlClient(t, oldUrl)
  await owner.query(martenTableSql('mt_doc_team'))
  await owner.query(readFileSync(join(packageRoot, 'test', 'fixtures', 'sql', 'changefeed-before-migrations.sql'), 'utf8'))
  await owner.query('SELECT * FROM changefeed_watch(\'public\', \'mt_doc_%\', \'trust:upgrade\', \'{}\', false)')
  const old = await role(t, oldUrl, 'trust_upgrade_intruder')
  const before = await old.client()
  await before.query('CREATE TEMP TABLE decoy (id text PRIMARY KEY)')
  await t.resolves(before.query('CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_notify()'), 'the old grants let anyone use the triggers')

  const upgraded = await startApp(t, { databases: [{ name: 'ballr', url: oldUrl }], capture: { channel: 'trust:upgrade' }, entities: { Team: { access: 'public' } } })
  t.same((await owner.query('SELECT name FROM changefeed_migrations ORDER BY name')).rows, [{ name: '001_least_privilege' }, { name: '002_private_schema' }], 'the migrations are recorded')
  const after = await old.client()
  await after.query('CREATE TEMP TABLE decoy (id text PRIMARY KEY)')
  await t.rejects(after.query('CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW EXECUTE FUNCTION changefeed_notify(\'trust:upgrade\')'), { code: '42501' })
  t.equal((await owner.query('SELECT count(*)::int AS n FROM pg_proc WHERE proname = \'changefeed_send\'')).rows[0].n, 0, 'the old definer functions are gone')
  t.same((await owner.query(`SELECT proname FROM pg_proc WHERE proname LIKE 'changefeed%'
    AND NOT coalesce(proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)`)).rows, [], 'every function searches pg_catalog and pg_temp only')
  const ws = await upgraded.client()
  await ws.subscribe('Team', 't-1')
  await owner.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created' })
})

t.test('a database with the script of migration 001: its writers keep the right to announce, which moved with the functions', async (t) => {
  const oldUrl = await freshDatabase(t, 'trust_upgrade_001')
  const owner = await sqlClient(t, oldUrl)
  await owner.query(martenTableSql('mt_doc_team'))
  const sql001 = ['sql/migrations/001_least_privilege.sql', 'test/fixtures/sql/changefeed-001.sql'].map((f) => readFileSync(join(packageRoot, f), 'utf8'))
  await owner.query(`BEGIN; ${sql001.join('\n')}; COMMIT`)
  await owner.query('SELECT * FROM changefeed_watch(\'public\', \'mt_doc_%\', \'trust:upgrade\', \'{}\', false)')
  const writer = await role(t, oldUrl, 'trust_upgrade_writer')
  await owner.query(`GRANT SELECT, INSERT ON mt_doc_team TO ${writer.name}`)
  t.equal((await owner.query('SELECT has_function_privilege($1, \'public.changefeed_announce(oid, jsonb)\', \'EXECUTE\') AS ok', [writer.name])).rows[0].ok, true,
    'granted under 001')

  const upgraded = await startApp(t, { databases: [{ name: 'ballr', url: oldUrl }], capture: { channel: 'trust:upgrade' }, entities: { Team: { access: 'public' } } })
  t.same((await owner.query('SELECT name FROM changefeed_migrations ORDER BY name')).rows, [{ name: '001_least_privilege' }, { name: '002_private_schema' }])
  t.same((await owner.query(`SELECT n.nspname, has_function_privilege($1, p.oid, 'EXECUTE') AS ok FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proname = 'changefeed_announce'`, [writer.name])).rows, [{ nspname: 'public_changefeed', ok: true }], 'moved, with its grants')
  const ws = await upgraded.client()
  await ws.subscribe('Team', 't-1')
  await (await writer.client()).query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { changeType: 'created' }, 'the writer\'s change is announced')
  t.equal(upgraded.app.changefeed.stats().dropped.unannounced, undefined, 'with no need of a new grant')
})
