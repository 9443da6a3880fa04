/**
 * Two databases feed one server over one NOTIFY channel; killing a listener backend is noticed, the watchers of
 * that database are told to resync, and later changes still arrive.
 */
import t from 'tap'
import { adminQuery, freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'

const foundryUrl = await freshDatabase(t, 'foundry')
const ballrUrl = await freshDatabase(t, 'ballr')
const foundry = await sqlClient(t, foundryUrl)
const ballr = await sqlClient(t, ballrUrl)
await foundry.query(martenTableSql('mt_doc_user'))
await ballr.query(martenTableSql('mt_doc_team'))

/** the server's warnings, parsed: a failed reconnect attempt is one */
const warnings: Array<{ msg: string, database?: string }> = []
const { app, client } = await startApp(t, {
  databases: [{ name: 'foundry', url: foundryUrl }, { name: 'ballr', url: ballrUrl }],
  capture: { channel: 'foundry:db_changes', reconnectMaxDelayMs: 200 },
  entities: {
    Team: { database: 'ballr', access: 'public' },
    // public here only so that an anonymous test client may watch it; access rules have their own tests
    User: { database: 'foundry', access: 'public' }
  }
}, { logger: { level: 'warn', stream: { write: (line: string) => { warnings.push(JSON.parse(line)) } } } })
const failedReconnects = (database: string): number =>
  warnings.filter((w) => w.msg === 'changefeed: listener reconnect failed' && w.database === database).length

t.test('two databases feed one server', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 'team-1')
  await ws.subscribe('User', 'user-1')
  await ballr.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-1\', \'{}\')')
  await foundry.query('INSERT INTO mt_doc_user (id, data) VALUES (\'user-1\', \'{}\')')
  t.equal((await ws.next(isNotification('Team', 'team-1'))).data.changeType, 'created')
  t.equal((await ws.next(isNotification('User', 'user-1'))).data.changeType, 'created')
  t.same(Object.keys(app.changefeed.stats().listeners).sort(), ['ballr', 'foundry'])
})

t.test('a killed listener reconnects, its watchers get resync, later changes arrive', async (t) => {
  const ws = await client()
  await ws.subscribe('Team', 'team-2')
  await ws.subscribe('User', 'user-2')
  const db = new URL(ballrUrl).pathname.slice(1)
  const { rowCount } = await adminQuery(
    'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE \'changefeed-listener:ballr:%\'', [db])
  t.equal(rowCount, 1, 'one listener backend for the database')

  const resync = await ws.next((m) => m.type === 'resync')
  t.same(resync.data, { reason: 'listener_gap', entityType: 'Team', entityId: 'team-2' }, 'watchers of that database are told')
  // a marker: a change of the other database's watched entity; a resync owed to it would be written first
  await foundry.query('INSERT INTO mt_doc_user (id, data) VALUES (\'user-2\', \'{}\')')
  await ws.next(isNotification('User', 'user-2'))
  t.same(ws.messages.filter((m) => m.type === 'resync'), [], 'watchers of the other database are not')
  t.equal(app.changefeed.stats().listeners.ballr.reconnects, 1)
  t.equal(app.changefeed.stats().listeners.ballr.state, 'listening')

  await ballr.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-2\', \'{}\')')
  t.equal((await ws.next(isNotification('Team', 'team-2'))).data.changeType, 'created', 'changes after the reconnect arrive')
})

t.test('a listener keeps retrying while its database refuses connections', async (t) => {
  const ws = await client()
  await ws.subscribe('User', 'user-3')
  const db = new URL(foundryUrl).pathname.slice(1)
  await adminQuery(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS false`)
  const failed = failedReconnects('foundry')
  await adminQuery('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE \'changefeed-listener:foundry:%\'', [db])
  t.ok(await until(() => failedReconnects('foundry') >= failed + 2, 10_000), 'reconnect attempts fail while connections are refused')
  t.equal(app.changefeed.stats().listeners.foundry.state, 'reconnecting', 'still trying')
  t.same(ws.messages.filter((m) => m.type === 'resync'), [], 'no resync until a new listener runs')
  await adminQuery(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS true`)
  const resync = await ws.next((m) => m.type === 'resync', 10_000)
  t.equal(resync.data.reason, 'listener_gap')
  await foundry.query('INSERT INTO mt_doc_user (id, data) VALUES (\'user-3\', \'{}\')')
  t.equal((await ws.next(isNotification('User', 'user-3'))).data.changeType, 'created')
})
