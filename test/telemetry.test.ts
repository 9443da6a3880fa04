/**
 * Observability of the standalone server: exact metric counts after a scripted scenario, the latency histogram,
 * close codes bucketed to the protocol's, readiness that follows the bus and the listener, the admin-only
 * statistics, and a graceful SIGTERM that hands the listener to another instance at once.
 */
import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { serve } from './helpers/serve.js'
import { TestClient, isNotification } from './helpers/client.js'
import { adminQuery, freshDatabase, martenTableSql, sqlClient } from './helpers/services.js'
import { ownBroker } from './helpers/brokers.js'
import { now, signHs256 } from './helpers/tokens.js'
import { until } from './helpers/wait.js'
import { closeCodeLabel } from '../lib/telemetry.js'

const SECRET = 'telemetry-test-secret-0123456789'
const dir = mkdtempSync(join(tmpdir(), 'changefeed-telemetry-'))
const configFile = (name: string, config: object): string => {
  const file = join(dir, name)
  writeFileSync(file, JSON.stringify(config))
  return file
}

/** The value of one Prometheus sample, by metric name and labels. */
function sample (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(' ').pop())
  }
  return undefined
}

const url = await freshDatabase(t, 'telemetry')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_rugbygamestate'))
const entities = { Team: { access: 'public' }, RugbyGameState: { access: 'public', payload: 'full' } }

t.test('metrics after a scripted scenario', async (t) => {
  const server = serve(t, ['--config', configFile('metrics.json', { databases: [{ name: 'main', url }], entities, telemetry: { prometheus: true } }), '--port', '0'])
  const http = await server.address
  const ws = http.replace('http', 'ws') + '/ws'
  const a = await TestClient.open(ws)
  const b = await TestClient.open(ws)
  const c = await TestClient.open(ws)
  t.teardown(() => { a.close(); c.close() })
  await a.subscribe('Team', 'team-1')
  await b.subscribe('Team', 'team-1')
  await c.subscribe('RugbyGameState', 'match-1')

  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-1\', \'{}\')')
  await sql.query('UPDATE mt_doc_team SET data = \'{"v":2}\' WHERE id = \'team-1\'')
  await sql.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'match-1\', \'{"homeScore":3}\')')
  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-unwatched\', \'{}\')')
  for (const client of [a, b]) { await client.next(isNotification('Team', 'team-1')); await client.next(isNotification('Team', 'team-1')) }
  await c.next(isNotification('RugbyGameState', 'match-1'))
  b.ws.close(1000)
  await b.closed
  // the server records the close, and the subscription it ended, once its side of the socket has closed
  const metrics = async (): Promise<string> => await (await fetch(http + '/metrics')).text()
  let text = ''
  t.ok(await until(async () => {
    text = await metrics()
    return sample(text, 'changefeed_connections_closed_total', { changefeed_close_code: '1000' }) === 1 &&
      sample(text, 'changefeed_subscriptions_removed_total', { changefeed_entity_type: 'Team' }) === 1
  }), 'the close is recorded')
  t.equal(sample(text, 'changefeed_connections_opened_total'), 3)
  t.equal(sample(text, 'changefeed_connections_closed_total', { changefeed_close_code: '1000' }), 1)
  t.equal(sample(text, 'changefeed_connections_active'), 2)
  t.equal(sample(text, 'changefeed_subscriptions_created_total', { changefeed_entity_type: 'Team' }), 2)
  t.equal(sample(text, 'changefeed_subscriptions_created_total', { changefeed_entity_type: 'RugbyGameState' }), 1)
  t.equal(sample(text, 'changefeed_subscriptions_removed_total', { changefeed_entity_type: 'Team' }), 1)
  t.equal(sample(text, 'changefeed_subscriptions_active', { changefeed_entity_type: 'Team' }), 1)
  t.equal(sample(text, 'changefeed_notifications_sent_total', { changefeed_payload_type: 'minimal' }), 4, 'two changes to two sockets')
  t.equal(sample(text, 'changefeed_notifications_sent_total', { changefeed_payload_type: 'full' }), 1)
  t.equal(sample(text, 'changefeed_changes_total', { changefeed_outcome: 'published' }), 3)
  t.equal(sample(text, 'changefeed_changes_total', { changefeed_outcome: 'unwatched' }), 1)
  t.equal(sample(text, 'changefeed_notification_latency_count', { changefeed_payload_type: 'minimal' }), 2, 'one latency sample per notification')
  t.equal(sample(text, 'changefeed_notification_latency_count', { changefeed_payload_type: 'full' }), 1)
  const sum = sample(text, 'changefeed_notification_latency_sum', { changefeed_payload_type: 'minimal' })!
  t.ok(sum > 0 && sum < 5, `latency is measured from the trigger (${(sum * 1000).toFixed(1)} ms for two)`)
  t.equal(sample(text, 'changefeed_connection_subscriptions_count'), 1, 'subscriptions per connection recorded at close')
  t.equal(sample(text, 'changefeed_auth_attempts_total', { changefeed_auth_method: 'anonymous' }), 3)
  t.ok(sample(text, 'nodejs_eventloop_delay_p99') !== undefined, 'event loop delay')
  t.match(text, /# UNIT changefeed_notification_latency s/, 'durations in seconds')
})

t.test('close codes outside the protocol are counted as `other`: a client cannot mint metric series', async (t) => {
  t.same([1000, 1005, 1006, 4401, 4429].map(closeCodeLabel), ['1000', '1005', '1006', '4401', '4429'])
  t.same([3000, 4000, 4999, 1004].map(closeCodeLabel), ['other', 'other', 'other', 'other'])

  const server = serve(t, ['--config', configFile('close-codes.json', { databases: [{ name: 'main', url }], entities, telemetry: { prometheus: true } }), '--port', '0'])
  const http = await server.address
  for (let i = 0; i < 150; i++) {
    const client = await TestClient.open(http.replace('http', 'ws') + '/ws')
    client.ws.close(4000 + i)
    await client.closed
  }
  let text = ''
  const closedAsOther = async (): Promise<boolean> => {
    text = await (await fetch(http + '/metrics')).text()
    return sample(text, 'changefeed_connections_closed_total', { changefeed_close_code: 'other' }) === 150
  }
  t.ok(await until(closedAsOther, 5000), '150 closes with 150 codes: one series')
  const labels = new Set([...text.matchAll(/changefeed_connections_closed_total\{[^}]*changefeed_close_code="([^"]*)"/g)].map((m) => m[1]))
  t.same([...labels], ['other'])
})

t.test('readiness follows the bus and the listener', async (t) => {
  const redis = await ownBroker(t, 'redis')
  const server = serve(t, ['--config', configFile('ready.json', {
    databases: [{ name: 'main', url }],
    entities,
    capture: { reconnectMaxDelayMs: 200, leaderRetryMs: 200 },
    bus: { provider: 'redis', url: redis.url, prefix: `ready-${randomUUID().slice(0, 8)}` }
  }), '--port', '0'])
  const http = await server.address
  const ready = async (): Promise<number> => (await fetch(http + '/health/ready')).status
  t.equal((await fetch(http + '/health/live')).status, 200)
  t.ok(await until(async () => await ready() === 200, 5000), 'ready')

  await redis.stop()
  t.ok(await until(async () => await ready() === 503, 5000), 'not ready while Redis is down')
  t.equal((await fetch(http + '/health/live')).status, 200, 'but alive')
  await redis.start()
  t.ok(await until(async () => await ready() === 200, 10_000), 'ready again when Redis is back')

  const db = new URL(url).pathname.slice(1)
  await adminQuery(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS false`)
  t.teardown(async () => { await adminQuery(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS true`) })
  await adminQuery('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE \'changefeed-listener:%\'', [db])
  t.ok(await until(async () => await ready() === 503, 5000), 'not ready without a listener')
  const report = await (await fetch(http + '/health/ready')).json()
  t.match(report, { ready: false, databases: { main: { state: 'reconnecting' } } })
  await adminQuery(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS true`)
  t.ok(await until(async () => await ready() === 200, 10_000), 'ready when the listener is back')
})

t.test('statistics are for admins only', async (t) => {
  const server = serve(t, ['--config', configFile('stats.json', {
    databases: [{ name: 'main', url }], entities, auth: { jwt: { secret: SECRET } }
  }), '--port', '0'])
  const http = await server.address
  const viewer = await TestClient.open(http.replace('http', 'ws') + '/ws')
  t.teardown(() => viewer.close())
  await viewer.subscribe('Team', 'popular')
  const as = (roles: string[]): RequestInit => ({ headers: { authorization: `Bearer ${signHs256({ sub: 'u', roles, exp: now() + 60 }, SECRET)}` } })
  t.equal((await fetch(http + '/changefeed/stats')).status, 401)
  t.equal((await fetch(http + '/changefeed/stats', as(['Member']))).status, 403)
  const res = await fetch(http + '/changefeed/stats', as(['Admin']))
  t.equal(res.status, 200)
  t.match(await res.json(), {
    instance: { connections: { active: 1 }, subscriptions: { byType: { Team: 1 } } },
    cluster: { subscriptionsByType: { Team: 1 } },
    busiest: [{ entityType: 'Team', entityId: 'popular', local: 1, cluster: 1 }]
  })
})

t.test('SIGTERM: sockets get 1001, the process exits, another instance leads at once', async (t) => {
  const redis = await ownBroker(t, 'redis')
  const file = configFile('sigterm.json', {
    databases: [{ name: 'main', url }],
    entities,
    capture: { leaderRetryMs: 200 },
    bus: { provider: 'redis', url: redis.url, prefix: `sigterm-${randomUUID().slice(0, 8)}` }
  })
  const first = serve(t, ['--config', file, '--port', '0'])
  const firstHttp = await first.address
  const second = serve(t, ['--config', file, '--port', '0'])
  const secondHttp = await second.address
  const leaderOf = async (http: string): Promise<boolean> => (await (await fetch(http + '/health/ready')).json()).databases.main.leader
  t.ok(await until(async () => await leaderOf(firstHttp), 3000), 'the first instance leads')
  t.notOk(await leaderOf(secondHttp), 'the second follows')
  const ws = await TestClient.open(firstHttp.replace('http', 'ws') + '/ws')
  const stoppedAt = Date.now()
  first.child.kill('SIGTERM')
  t.equal((await ws.closed).code, 1001)
  t.equal((await first.exit).code, 0)
  t.ok(await until(async () => await leaderOf(secondHttp), 2000), 'the second instance leads')
  t.comment(`took over ${Date.now() - stoppedAt} ms after SIGTERM`)
})
