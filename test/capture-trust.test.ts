/**
 * What is trusted: only a write to a watched table makes a change a browser sees. A role without rights on the
 * watched tables can NOTIFY on the channel, send a signed payload it overheard once more, put the capture trigger
 * on a table of its own, or try the outbox: none of it reaches a watcher, and each is counted. The product also
 * installs and runs as a non-superuser role, and checks its configuration against the database at start.
 */
import t from 'tap'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import fastifyPostgres from '@fastify/postgres'
import changefeed from '../lib/index.js'
import { freshDatabase, martenTableSql, sqlClient } from './helpers/services.js'
import { role } from './helpers/roles.js'
import { startApp } from './helpers/app.js'
import { isNotification } from './helpers/client.js'
import { until } from './helpers/wait.js'
import { eventStore } from './fixtures/marten/index.js'

const url = await freshDatabase(t, 'trust')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_rugbygamestate'))
await sql.query(eventStore({ schema: 'public', streamIdentity: 'string' }))
const intruder = await role(t, url, 'trust_intruder', ['public'])
const channel = 'ballr:db_changes'
const { app, client } = await startApp(t, {
  databases: [{ name: 'ballr', url }],
  capture: { channel, events: { enabled: true } },
  entities: { Team: { access: 'public' }, RugbyGameState: { access: 'public', payload: 'full' } }
})

t.test('a role that cannot write a watched table cannot make a change reach a browser', async (t) => {
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'm-1')
  const spy = await intruder.client()
  const overheard: string[] = []
  spy.on('notification', (m) => { if (m.payload !== undefined) overheard.push(m.payload) })
  await spy.query(`LISTEN "${channel}"`)
  await t.rejects(spy.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'m-1\', \'{}\')'), { code: '42501' }, 'it cannot write the table')

  await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'m-1\', \'{"homeScore": 5}\')')
  t.match((await ws.next(isNotification('RugbyGameState', 'm-1'))).data, { payload: { homeScore: 5 } })
  t.ok(await until(() => overheard.length === 1), 'it can listen')

  const real = overheard[0]
  const forgedBody = real.slice(64).replace('"homeScore": 5', '"homeScore": 99')
  await spy.query('SELECT pg_notify($1, $2)', [channel, forgedBody])
  await spy.query('SELECT pg_notify($1, $2)', [channel, real.slice(0, 64) + forgedBody])
  await spy.query('SELECT pg_notify($1, $2)', [channel, real])
  // its own table, with the capture trigger: reported as its own table, whatever the trigger's arguments say
  await spy.query('CREATE TABLE decoy (id text PRIMARY KEY, data jsonb, mt_version uuid)')
  await spy.query(`CREATE TRIGGER decoy AFTER INSERT ON decoy FOR EACH ROW
    EXECUTE FUNCTION changefeed_notify('${channel}', 'true', 'false', 'public', 'mt_doc_rugbygamestate')`)
  await spy.query('INSERT INTO decoy (id, data) VALUES (\'m-1\', \'{"homeScore": 77}\')')
  await spy.query('CREATE TABLE fake_events (seq_id bigint, stream_id text, version bigint, type text, data jsonb)')
  await spy.query(`CREATE TRIGGER fake AFTER INSERT ON fake_events FOR EACH ROW
    EXECUTE FUNCTION changefeed_event_notify('${channel}', 'mt_streams', 'false', 'public', 'mt_events')`)
  await spy.query('INSERT INTO fake_events VALUES (1, \'m-1\', 1, \'TryScored\', \'{"homeScore": 66}\')')
  await t.rejects(spy.query('SELECT changefeed_send($1, $2)', [channel, '{}']), { code: '42501' }, 'it cannot sign')
  await t.rejects(spy.query('SELECT key FROM changefeed_key'), { code: '42501' }, 'it cannot read the key')

  const dropped = (): Record<string, number | undefined> => app.changefeed.stats().dropped
  t.ok(await until(() => dropped().forged === 3 && dropped().unknown_table === 1 && dropped().not_event_store === 1),
    `each attempt is counted by reason: ${JSON.stringify(dropped())}`)
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = \'{"homeScore": 7}\' WHERE id = \'m-1\'')
  t.match((await ws.next(isNotification('RugbyGameState', 'm-1'))).data, { payload: { homeScore: 7 } }, 'the next real change')
  t.same(ws.messages.filter(isNotification('RugbyGameState', 'm-1')), [], 'and nothing forged before it')
})

t.test('outbox mode: the outbox is not writable by other roles, and a wake-up carries nothing', async (t) => {
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
  const ws = await outboxClient()
  await ws.subscribe('Team', 't-1')
  const change = JSON.stringify({ s: 'public', t: 'mt_doc_team', id: 't-1', op: 'U', x: 1, ts: Date.now(), d: { name: 'forged' } })
  await t.rejects(spy.query('INSERT INTO changefeed_outbox (channel, s, t, eid, x, change) VALUES (\'trust:outbox\', \'public\', \'mt_doc_team\', \'t-1\', 1, $1)', [change]), { code: '42501' })
  await t.rejects(spy.query('SELECT changefeed_record($1, $2)', ['trust:outbox', change]), { code: '42501' })
  await spy.query('SELECT pg_notify(\'trust:outbox\', \'outbox\')')
  await owner.query('INSERT INTO mt_doc_team (id, data) VALUES (\'t-1\', \'{"name": "real"}\')')
  t.match((await ws.next(isNotification('Team', 't-1'))).data, { payload: { name: 'real' } })
  t.same(ws.messages.filter(isNotification('Team', 't-1')), [], 'only the real change')
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
