/**
 * Capture against the real PostgreSQL: trigger payloads, coalescing, Marten soft deletes, full payloads, tables
 * created later, and that unwatched entities cost no document read.
 */
import t from 'tap'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type TestClient } from '../../helpers/client.js'

const url = await freshDatabase(t, 'capture')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_rugbygamestate'))
await sql.query(martenTableSql('mt_doc_player'))

const { app, client } = await startApp(t, {
  databases: [{ name: 'ballr', url }],
  capture: { channel: 'foundry:db_changes' },
  entities: {
    Team: { access: 'public', payload: 'minimal' },
    RugbyGameState: { access: 'public', payload: 'full' },
    Later: { access: 'public', payload: 'full' }
  },
  discovery: { access: 'public' }
})

const doc = (id: string, extra: object = {}): string => JSON.stringify({ id, ...extra })

/**
 * A marker: a change to another row this socket watches, committed after the changes before it, is delivered
 * after every notification they give. Once it arrives, what has not arrived will not.
 */
async function marker (ws: TestClient, id: string): Promise<void> {
  await ws.subscribe('Team', id)
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', [id, doc(id)])
  await ws.next(isNotification('Team', id))
}

t.test('insert, update and delete each give one notification with the right fields', async (t) => {
  const ws = await client()
  t.equal((await ws.subscribe('Team', 'team-1')).type, 'subscribed')

  const { rows: [inserted] } = await sql.query(
    'INSERT INTO mt_doc_team (id, data) VALUES ($1, $2) RETURNING mt_version::text AS v', ['team-1', doc('team-1', { name: 'Sharks' })])
  const created = await ws.next(isNotification('Team', 'team-1'))
  t.match(created.data, { entityType: 'Team', entityId: 'team-1', changeType: 'created', payloadType: 'minimal', version: inserted.v })
  t.notOk('payload' in created.data, 'minimal carries no payload')
  t.ok(Math.abs(Date.parse(created.data.timestamp) - Date.now()) < 60_000, 'timestamp is the trigger time')

  const { rows: [updated] } = await sql.query(
    'UPDATE mt_doc_team SET data = $2, mt_version = gen_random_uuid() WHERE id = $1 RETURNING mt_version::text AS v', ['team-1', doc('team-1', { name: 'Sharks II' })])
  t.match((await ws.next(isNotification('Team', 'team-1'))).data, { changeType: 'updated', version: updated.v })

  await sql.query('DELETE FROM mt_doc_team WHERE id = $1', ['team-1'])
  t.match((await ws.next(isNotification('Team', 'team-1'))).data, { changeType: 'deleted' })
  await marker(ws, 'team-1-marker')
  t.same(ws.messages.filter(isNotification('Team', 'team-1')), [], 'nothing more')
})

t.test('a Marten soft delete is a deleted change; clearing it is created', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 'team-soft')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-soft', doc('team-soft')])
  t.equal((await ws.next(isNotification('Team', 'team-soft'))).data.changeType, 'created')
  await sql.query('UPDATE mt_doc_team SET mt_deleted = true, mt_deleted_at = now() WHERE id = $1', ['team-soft'])
  t.equal((await ws.next(isNotification('Team', 'team-soft'))).data.changeType, 'deleted')
  await sql.query('UPDATE mt_doc_team SET mt_deleted = false, mt_deleted_at = null WHERE id = $1', ['team-soft'])
  t.equal((await ws.next(isNotification('Team', 'team-soft'))).data.changeType, 'created')
})

t.test('a transaction touching one row five times gives one notification', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 'team-5x')
  await sql.query('BEGIN')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-5x', doc('team-5x', { n: 0 })])
  for (let n = 1; n <= 4; n++) await sql.query('UPDATE mt_doc_team SET data = $2 WHERE id = $1', ['team-5x', doc('team-5x', { n })])
  await sql.query('COMMIT')
  t.equal((await ws.next(isNotification('Team', 'team-5x'))).data.changeType, 'created', 'insert + updates = created')
  await marker(ws, 'team-5x-marker')
  t.same(ws.messages.filter(isNotification('Team', 'team-5x')), [], 'exactly one')

  await sql.query('BEGIN')
  await sql.query('UPDATE mt_doc_team SET data = $2 WHERE id = $1', ['team-5x', doc('team-5x', { n: 5 })])
  await sql.query('DELETE FROM mt_doc_team WHERE id = $1', ['team-5x'])
  await sql.query('COMMIT')
  t.equal((await ws.next(isNotification('Team', 'team-5x'))).data.changeType, 'deleted', 'update + delete = deleted')

  await sql.query('BEGIN')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-5x', doc('team-5x')])
  await sql.query('DELETE FROM mt_doc_team WHERE id = $1', ['team-5x'])
  await sql.query('COMMIT')
  await marker(ws, 'team-marker')
  t.same(ws.messages.filter(isNotification('Team', 'team-5x')), [], 'insert + delete = nothing (a later change already arrived)')
})

t.test('full payload carries the document; a large one is read once from the table', async (t) => {
  const ws = await client()
  const other = await client()
  await ws.subscribe('RugbyGameState', 'match-1')
  await other.subscribe('RugbyGameState', 'match-1')
  const state = { id: 'match-1', homeScore: 21, awayScore: 14, period: 'Second Half' }
  const readsBefore = app.changefeed.stats().router.documentReads
  await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES ($1, $2)', ['match-1', JSON.stringify(state)])
  const [n] = await Promise.all([ws.next(isNotification('RugbyGameState', 'match-1')), other.next(isNotification('RugbyGameState', 'match-1'))])
  t.match(n.data, { changeType: 'created', payloadType: 'full', payload: state })
  t.equal(app.changefeed.stats().router.documentReads, readsBefore, 'a small document rides inline in the NOTIFY')

  const big = { ...state, commentary: 'x'.repeat(20_000) }
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = $2 WHERE id = $1', ['match-1', JSON.stringify(big)])
  const [a, b] = await Promise.all([ws.next(isNotification('RugbyGameState', 'match-1')), other.next(isNotification('RugbyGameState', 'match-1'))])
  t.equal(a.data.payload.commentary.length, big.commentary.length, 'a document too large for NOTIFY is read')
  t.equal(b.data.payload.commentary.length, big.commentary.length)
  t.equal(a.data.changeType, 'updated')
  t.equal(app.changefeed.stats().router.documentReads, readsBefore + 1, 'read once for two watchers')

  await sql.query('DELETE FROM mt_doc_rugbygamestate WHERE id = $1', ['match-1'])
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'))).data, { changeType: 'deleted', payloadType: 'full', payload: null })
})

t.test('unwatched entities cost no document read and no publish', async (t) => {
  const before = app.changefeed.stats().router
  const big = JSON.stringify({ id: 'match-unwatched', commentary: 'y'.repeat(20_000) })
  await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES ($1, $2)', ['match-unwatched', big])
  await sql.query('UPDATE mt_doc_rugbygamestate SET data = $2 WHERE id = $1', ['match-unwatched', big])
  const ws = await client()
  await ws.subscribe('Team', 'team-flush')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-flush', doc('team-flush')])
  await ws.next(isNotification('Team', 'team-flush'))
  const after = app.changefeed.stats().router
  t.equal(after.documentReads, before.documentReads, 'no document read')
  t.equal(after.unwatched, before.unwatched + 2, 'both changes dropped as unwatched')
  t.equal(after.published, before.published + 1, 'only the watched change was published')
})

t.test('a writer can tag its transaction with an origin', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 'team-origin')
  await sql.query('BEGIN')
  await sql.query('SET LOCAL changefeed.origin = \'tab-42\'')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES ($1, $2)', ['team-origin', doc('team-origin')])
  await sql.query('COMMIT')
  t.equal((await ws.next(isNotification('Team', 'team-origin'))).data.origin, 'tab-42')
})

t.test('tables created after the start are captured', async (t) => {
  const ws = await client()
  t.equal((await ws.subscribe('Later', 'l-1')).type, 'subscribed', 'a declared type may be watched before its table exists')
  await sql.query(martenTableSql('mt_doc_later'))
  await sql.query('INSERT INTO mt_doc_later (id, data) VALUES ($1, $2)', ['l-1', doc('l-1', { v: 1 })])
  t.match((await ws.next(isNotification('Later', 'l-1'))).data, { changeType: 'created', payload: { v: 1 } }, 'the event trigger installed it, inline')

  await sql.query(martenTableSql('mt_doc_scoreboard'))
  await sql.query('INSERT INTO mt_doc_scoreboard (id, data, mt_dotnet_type) VALUES (\'s-1\', \'{}\', \'Ballr.Domain.ScoreBoard, Ballr\')')
  t.equal((await ws.subscribe('ScoreBoard', 's-1')).type, 'subscription_error', 'not known before a scan')
  await app.changefeed.rescan()
  const reply = await ws.subscribe('ScoreBoard', 's-1', 'again')
  t.match(reply, { type: 'subscribed', data: { entityType: 'ScoreBoard' } }, 'discovered, named after mt_dotnet_type')
  await sql.query('UPDATE mt_doc_scoreboard SET data = \'{"x":1}\' WHERE id = \'s-1\'')
  // the insert before the scan waited for one to learn its type: it may come to the new subscriber first
  await ws.next((m) => isNotification('ScoreBoard', 's-1')(m) && m.data.changeType === 'updated')
  t.ok(ws.messages.filter(isNotification('ScoreBoard', 's-1')).every((m) => m.data.changeType === 'created'), 'besides it, at most the insert')
})

t.test('discovered types without a name in mt_dotnet_type answer to their table name in any case', async (t) => {
  const ws = await client()
  const reply = await ws.subscribe('PLAYER', 'p-1')
  t.match(reply, { type: 'subscribed', data: { entityType: 'player', subscriptionId: 'player:p-1' } })
  await sql.query('INSERT INTO mt_doc_player (id, data) VALUES ($1, $2)', ['p-1', doc('p-1')])
  t.equal((await ws.next(isNotification('player', 'p-1'))).data.changeType, 'created')
})
