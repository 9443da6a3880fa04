/**
 * Outbox mode against the real PostgreSQL: positions on every notification, `since` replay (recovered true and
 * false), nothing lost while the listener is down, commit order per entity under concurrent writers, pruning.
 */
import t from 'tap'
import pg from 'pg'
import { adminQuery, freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type Frame } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import { Outbox } from '../../../lib/capture/outbox.js'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ownBroker, requireService } from '../../helpers/brokers.js'

const url = await freshDatabase(t, 'outbox')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_fixture'))

const { app, client } = await startApp(t, {
  databases: [{ name: 'main', url }],
  capture: { mode: 'outbox', channel: 'cf_outbox_test', outbox: { pollIntervalMs: 100, pruneIntervalSeconds: 1 } },
  entities: {
    Team: { access: 'public', payload: 'minimal' },
    Fixture: { access: 'public', payload: 'full' }
  }
})

const doc = (id: string, extra: object = {}): string => JSON.stringify({ id, ...extra })
const upsert = async (table: string, id: string, data: object, db: pg.Client = sql): Promise<void> => {
  await db.query(`INSERT INTO ${table} (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data, mt_version = gen_random_uuid()`, [id, doc(id, data)])
}
const positionOf = (m: Frame): string => m.data.position as string
/** Until the leader has numbered and published everything committed so far. */
const settled = async (): Promise<boolean> => await until(async () => {
  const { rows: [s] } = await sql.query(`SELECT (SELECT count(*) FROM changefeed_outbox WHERE pos IS NULL)::int AS unnumbered, assigned = published AS done
    FROM changefeed_outbox_state WHERE channel = 'cf_outbox_test'`)
  return s.unnumbered === 0 && s.done === true
})

t.test('notifications carry positions that grow per entity', async (t) => {
  const ws = await client()
  await ws.subscribe('Fixture', 'f-1')
  for (let i = 0; i < 3; i++) await upsert('mt_doc_fixture', 'f-1', { score: i })
  const got = [await ws.next(isNotification('Fixture', 'f-1')), await ws.next(isNotification('Fixture', 'f-1')), await ws.next(isNotification('Fixture', 'f-1'))]
  t.same(got.map((m) => m.data.payload.score), [0, 1, 2], 'full payloads from the outbox, in order')
  const numbers = got.map((m) => Number(positionOf(m).split(':')[1]))
  t.match(positionOf(got[0]), /^[0-9a-f]{8}:\d+$/, 'position is <epoch>:<n>')
  t.ok(numbers[0] < numbers[1] && numbers[1] < numbers[2], 'positions grow')
})

t.test('a snapshot stands at the outbox position of its last change; since with it resumes; since with snapshot falls back', async (t) => {
  await upsert('mt_doc_fixture', 'snap', { score: 1 })
  t.ok(await settled())
  const ws = await client()
  ws.send({ type: 'subscribe', id: 'snap', data: { entityType: 'Fixture', entityId: 'snap', snapshot: true } })
  const reply = await ws.next((m) => m.id === 'snap')
  t.match(reply.data.snapshot, { payload: { score: 1 }, position: /^[0-9a-f]{8}:\d+$/ }, 'an outbox position')
  ws.close()
  await upsert('mt_doc_fixture', 'snap', { score: 2 })
  t.ok(await settled())
  const again = await client()
  again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Fixture', entityId: 'snap', since: reply.data.snapshot.position, snapshot: true } })
  const resumed = await again.next((m) => m.id === 'resume')
  t.match(resumed, { data: { recovered: true } })
  t.notOk('snapshot' in resumed.data, 'recovered: no snapshot in the reply')
  t.match((await again.next(isNotification('Fixture', 'snap'))).data, { payload: { score: 2 } }, 'the missed change, replayed')
  again.send({ type: 'subscribe', id: 'lost', data: { entityType: 'Fixture', entityId: 'snap', since: 'ffffffff:1', snapshot: true } })
  t.match(await again.next((m) => m.id === 'lost'), { data: { recovered: false, snapshot: { payload: { score: 2 } } } }, 'an unknown position: the snapshot instead')
})

t.test('since replays what a client missed, then live changes follow without repeats', async (t) => {
  const first = await client()
  await first.subscribe('Fixture', 'f-2')
  await upsert('mt_doc_fixture', 'f-2', { score: 0 })
  const seen = await first.next(isNotification('Fixture', 'f-2'))
  first.close()

  for (let i = 1; i <= 5; i++) await upsert('mt_doc_fixture', 'f-2', { score: i })
  await upsert('mt_doc_fixture', 'other', { score: 99 })
  t.ok(await settled(), 'published while nobody watched')

  const second = await client()
  second.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Fixture', entityId: 'f-2', since: positionOf(seen) } })
  const reply = await second.next((m) => m.id === 'resume')
  t.match(reply, { type: 'subscribed', data: { recovered: true } })
  const replayed: Frame[] = []
  for (let i = 0; i < 5; i++) replayed.push(await second.next(isNotification('Fixture', 'f-2')))
  t.same(replayed.map((m) => m.data.payload.score), [1, 2, 3, 4, 5], 'every missed change, in order, with the document of its time')

  await upsert('mt_doc_fixture', 'f-2', { score: 6 })
  t.equal((await second.next(isNotification('Fixture', 'f-2'))).data.payload.score, 6, 'then live')
  // a marker: a later change of another entity this socket watches comes after anything f-2 could still send
  await second.subscribe('Fixture', 'f-2-marker')
  await upsert('mt_doc_fixture', 'f-2-marker', { score: 0 })
  await second.next(isNotification('Fixture', 'f-2-marker'))
  t.same(second.messages.filter(isNotification('Fixture', 'f-2')), [], 'nothing twice')
})

t.test('since that cannot be honoured says recovered: false', async (t) => {
  const ws = await client()
  for (const [since, why] of [['0badbeef:1', 'another epoch'], ['nonsense', 'not a position'], ['n:123', 'a notify-mode position']]) {
    ws.send({ type: 'subscribe', id: why, data: { entityType: 'Team', entityId: 't-x', since } })
    t.match(await ws.next((m) => m.id === why), { type: 'subscribed', data: { recovered: false } }, why)
  }
  const { rows: [state] } = await sql.query('SELECT epoch, assigned FROM changefeed_outbox_state WHERE channel = $1', ['cf_outbox_test'])
  ws.send({ type: 'subscribe', id: 'future', data: { entityType: 'Team', entityId: 't-x', since: `${state.epoch as string}:${Number(state.assigned) + 1000}` } })
  t.match(await ws.next((m) => m.id === 'future'), { data: { recovered: false } }, 'a position from the future')
  ws.send({ type: 'subscribe', id: 'now', data: { entityType: 'Team', entityId: 't-x', since: `${state.epoch as string}:${state.assigned as string}` } })
  t.match(await ws.next((m) => m.id === 'now'), { data: { recovered: true } }, 'the latest position: nothing missed')
})

t.test('changes committed while the listener is down are published when it is back', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 't-down')
  const { rows: killed } = await adminQuery(
    "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'changefeed-listener:main:%'".replace('current_database()', `'${new URL(url).pathname.slice(1)}'`))
  t.ok(killed.length >= 1, 'the listener backend was terminated')
  for (let i = 0; i < 20; i++) await upsert('mt_doc_team', 't-down', { n: i })
  const got: Frame[] = []
  while (got.length < 20) got.push(await ws.next(isNotification('Team', 't-down'), 15_000))
  const numbers = got.map((m) => Number(positionOf(m).split(':')[1]))
  t.same(numbers, [...numbers].sort((a, b) => a - b), 'in order')
  t.equal(new Set(numbers).size, 20, 'each once')
  t.same(ws.messages.filter((m) => m.type === 'resync'), [], 'no resync: nothing was lost')
})

t.test('concurrent writers: every entity\'s changes arrive in commit order', async (t) => {
  const ws = await client()
  const ids = ['c-1', 'c-2', 'c-3']
  for (const id of ids) await ws.subscribe('Fixture', id)
  const writers = await Promise.all([0, 1, 2, 3].map(async () => await sqlClient(t, url)))
  const committed = new Map<string, number[]>(ids.map((id) => [id, []]))
  // each writer increments a counter inside the document under the row lock: commit order = counter order
  await Promise.all(writers.map(async (db, w) => {
    for (let i = 0; i < 25; i++) {
      const id = ids[(i + w) % ids.length]
      await db.query('BEGIN')
      await db.query('INSERT INTO mt_doc_fixture (id, data) VALUES ($1, \'{"n":0}\') ON CONFLICT (id) DO UPDATE SET data = jsonb_set(mt_doc_fixture.data, \'{n}\', to_jsonb((mt_doc_fixture.data->>\'n\')::int + 1))', [id])
      const { rows: [row] } = await db.query('SELECT (data->>\'n\')::int AS n FROM mt_doc_fixture WHERE id = $1', [id])
      if (i % 3 === 0) await db.query('SELECT pg_sleep(0.005)')
      await db.query('COMMIT')
      committed.get(id)!.push(row.n)
    }
  }))
  for (const id of ids) {
    const expected = committed.get(id)!.length
    const got: number[] = []
    while (got.length < expected) got.push((await ws.next(isNotification('Fixture', id), 10_000)).data.payload.n)
    t.same(got, [...got].sort((a, b) => a - b), `${id}: in commit order`)
  }
})

t.test('the published cursor is stored, and old rows are pruned', async (t) => {
  t.ok(await settled())
  const { rows: [s] } = await sql.query('SELECT assigned, published FROM changefeed_outbox_state WHERE channel = $1', ['cf_outbox_test'])
  t.equal(s.published, s.assigned, 'everything numbered is published')
  t.ok(Number(s.published) > 100, 'and it counted every change')
  const { rows: [unnumbered] } = await sql.query('SELECT count(*)::int AS n FROM changefeed_outbox WHERE pos IS NULL')
  t.equal(unnumbered.n, 0, 'no row left behind')
  t.ok(app.changefeed.stats().connections.replayed >= 5, 'replays are counted')

  const { rows: [before] } = await sql.query('SELECT epoch FROM changefeed_outbox_state WHERE channel = $1', ['cf_outbox_test'])
  const outbox = new Outbox('cf_outbox_test')
  const query = async (text: string, params?: unknown[]): Promise<any[]> => (await sql.query(text, params)).rows
  const pruned = await outbox.prune(query, 3600, 10)
  t.ok(pruned > 90, 'rows beyond the newest 10 are pruned')
  const { rows: [left] } = await sql.query('SELECT count(*)::int AS n FROM changefeed_outbox WHERE channel = $1', ['cf_outbox_test'])
  t.ok(left.n <= 10, 'at most 10 rows are kept')
  const ws = await client()
  ws.send({ type: 'subscribe', id: 'old', data: { entityType: 'Team', entityId: 't-down', since: `${before.epoch as string}:1` } })
  t.match(await ws.next((m) => m.id === 'old'), { data: { recovered: false } }, 'a position older than the pruned ones cannot be resumed')
})

t.test('an application role without rights on the outbox, and with its own search_path, can still write', async (t) => {
  const role = `cf_app_${process.pid}`
  await adminQuery(`DROP ROLE IF EXISTS ${role}`)
  await adminQuery(`CREATE ROLE ${role} LOGIN`)
  t.teardown(async () => {
    await sql.query(`REASSIGN OWNED BY ${role} TO postgres; DROP OWNED BY ${role}`).catch(() => {})
    await adminQuery(`DROP ROLE IF EXISTS ${role}`)
  })
  await sql.query(`GRANT SELECT, INSERT, UPDATE ON mt_doc_team TO ${role}; CREATE SCHEMA IF NOT EXISTS elsewhere`)
  const ws = await client()
  await ws.subscribe('Team', 't-role')
  const appUser = new pg.Client({ connectionString: url.replace('postgres@', `${role}@`) })
  await appUser.connect()
  t.teardown(async () => { await appUser.end() })
  await appUser.query('SET search_path = elsewhere, public')
  await appUser.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['t-role', doc('t-role')])
  t.match((await ws.next(isNotification('Team', 't-role'))).data, { changeType: 'created' }, 'the change went through the outbox')
})

t.test('a change the bus can never carry is given up on after three attempts; its watchers resync, the rest flows', async (t) => {
  await requireService('NATS')
  const dir = mkdtempSync(join(tmpdir(), 'changefeed-nats-conf-'))
  writeFileSync(join(dir, 'small.conf'), 'max_payload: 8192\n')
  const broker = await ownBroker(t, 'nats', ['-c', join(dir, 'small.conf')])
  const db = await freshDatabase(t, 'outbox_poison')
  const writer = await sqlClient(t, db)
  await writer.query(martenTableSql('mt_doc_fixture'))
  const running = await startApp(t, {
    databases: [{ name: 'main', url: db }],
    capture: { mode: 'outbox', channel: 'cf_poison', outbox: { pollIntervalMs: 50 } },
    entities: { Fixture: { access: 'public', payload: 'full' } },
    bus: { provider: 'nats', url: broker.url, prefix: `poison${process.pid}` }
  })
  const ws = await running.client()
  await ws.subscribe('Fixture', 'big')
  await ws.subscribe('Fixture', 'small')
  await upsert('mt_doc_fixture', 'big', { blob: 'x'.repeat(20_000) }, writer)
  await upsert('mt_doc_fixture', 'small', { n: 1 }, writer)
  t.match(await ws.next((m) => m.type === 'resync', 10_000), { data: { reason: 'delivery_failed', entityType: 'Fixture', entityId: 'big' } }, 'the watchers of the entity are told to refetch')
  t.equal((await ws.next(isNotification('Fixture', 'small'), 10_000)).data.payload.n, 1, 'other changes are not held back')
  await upsert('mt_doc_fixture', 'big', { blob: 'small now' }, writer)
  t.equal((await ws.next(isNotification('Fixture', 'big'), 10_000)).data.payload.blob, 'small now', 'and the entity flows again')
  t.equal(running.app.changefeed.stats().router.givenUp, 1, 'counted')
})

t.test('a TRUNCATE goes through the outbox in its turn: its watchers resync, and a since over it is not recovered', async (t) => {
  const ws = await client()
  await ws.subscribe('Fixture', 'cut')
  await upsert('mt_doc_fixture', 'cut', { n: 1 })
  const since = positionOf(await ws.next(isNotification('Fixture', 'cut')))
  await sql.query('BEGIN; TRUNCATE mt_doc_fixture; INSERT INTO mt_doc_fixture (id, data) VALUES (\'cut\', \'{"n": 2}\'); COMMIT')
  t.match(await ws.next((m) => m.type === 'resync'), { data: { reason: 'truncated', entityType: 'Fixture', entityId: 'cut' } }, 'the resync first')
  t.match((await ws.next(isNotification('Fixture', 'cut'))).data, { changeType: 'created', payload: { n: 2 } }, 'then what the transaction wrote after it')
  t.ok(await settled())
  const again = await client()
  again.send({ type: 'subscribe', id: 'resume', data: { entityType: 'Fixture', entityId: 'cut', since } })
  t.match(await again.next((m) => m.id === 'resume'), { type: 'subscribed', data: { recovered: false } }, 'the table was emptied since: refetch')
})
