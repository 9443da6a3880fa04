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
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { serve } from '../helpers/serve.js'
import { TestClient, isNotification } from '../helpers/client.js'
import { adminQuery, freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'
import { ownBroker } from '../helpers/brokers.js'
import { now, signHs256 } from '../helpers/tokens.js'
import { until } from '../helpers/wait.js'
import { closeCodeLabel } from '../../lib/telemetry.js'

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

const bearer = (sub: string, roles: string[], extra: object = {}): string => signHs256({ sub, roles, exp: now() + 600, ...extra }, SECRET)
const as = (roles: string[]): RequestInit => ({ headers: { authorization: `Bearer ${bearer('u', roles)}` } })

t.test('metrics after a scripted scenario', async (t) => {
  const server = serve(t, ['--config', configFile('metrics.json', { databases: [{ name: 'main', url }], entities, auth: { jwt: { secret: SECRET } }, telemetry: { prometheus: true } }), '--port', '0'])
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
  const metrics = async (): Promise<string> => await (await fetch(http + '/metrics', as(['Admin']))).text()
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

  const server = serve(t, ['--config', configFile('close-codes.json', { databases: [{ name: 'main', url }], entities, telemetry: { prometheus: { public: true } } }), '--port', '0'])
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

t.test('/metrics is for admins unless the config makes it public', async (t) => {
  const server = serve(t, ['--config', configFile('metrics-admin.json', { databases: [{ name: 'main', url }], entities, auth: { jwt: { secret: SECRET } }, telemetry: { prometheus: true } }), '--port', '0'])
  const http = await server.address
  t.equal((await fetch(http + '/metrics')).status, 401, 'without credentials')
  t.equal((await fetch(http + '/metrics', as(['Member']))).status, 403, 'without an admin role')
  const admin = await fetch(http + '/metrics', as(['Admin']))
  t.equal(admin.status, 200, 'with admin credentials')
  t.match(await admin.text(), /changefeed_connections_active/)
  t.equal((await fetch(`${http}/metrics?token=${bearer('u', ['Admin'])}`)).status, 200, 'a scraper may send the token as ?token= too')

  const open = serve(t, ['--config', configFile('metrics-public.json', { databases: [{ name: 'main', url }], entities, telemetry: { prometheus: { public: true } } }), '--port', '0'])
  t.equal((await fetch(await open.address + '/metrics')).status, 200, '{ "public": true }: without credentials')
  const warnings = (s: typeof server): unknown[] => s.stdout().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.level === 40)
  t.same(warnings(open), [], 'no warning')

  const locked = serve(t, ['--config', configFile('metrics-locked.json', { databases: [{ name: 'main', url }], entities, telemetry: { prometheus: true } }), '--port', '0'])
  t.equal((await fetch(await locked.address + '/metrics')).status, 401)
  t.match(warnings(locked), [{ msg: /\/metrics/ }], 'admin-only with no way to sign in: a warning at start')
})

t.test('no credential in a log line or a trace, whatever the route: 404s, /metrics, the socket route', async (t) => {
  // a collector of OTLP/HTTP exports (JSON)
  const exported: string[] = []
  const collector = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => { body += chunk.toString() })
    request.on('end', () => { exported.push(`${request.url ?? ''} ${body}`); response.end('{}') })
  })
  await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve))
  t.teardown(() => collector.close())
  const otlpUrl = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`
  const server = serve(t, ['--config', configFile('redacted.json', {
    databases: [{ name: 'main', url }], entities, auth: { jwt: { secret: SECRET } }, telemetry: { prometheus: true, otlpUrl }
  }), '--port', '0'])
  const http = await server.address
  const member = bearer('user-1', ['Member'], { jti: 'MEMBER-LOG-CANARY-123456789' })
  const admin = bearer('admin-1', ['Admin'], { jti: 'ADMIN-LOG-CANARY-987654321' })
  const paths = [`/ws/?token=${member}`, `/WS?token=${member}`, `/no-such-route?x=1&token=${member}`, `/metrics?token=${member}`, `/metrics?token=${admin}`]
  const statuses = await Promise.all(paths.map(async (path) => (await fetch(http + path)).status))
  t.same(statuses, [404, 404, 404, 403, 200])
  const ws = await TestClient.open(`${http.replace('http', 'ws')}/ws?token=${member}`)
  t.equal((await ws.subscribe('Team', 'logged')).type, 'subscribed')
  ws.close()
  await ws.closed
  // the spans are exported at shutdown at the latest
  server.child.kill('SIGTERM')
  t.equal((await server.exit).code, 0)
  const logs = server.stdout() + server.stderr()
  for (const path of ['/ws/', '/WS', '/no-such-route?x=1&', '/metrics', '/ws']) {
    t.ok(logs.includes(`${path}${path.endsWith('&') ? '' : '?'}token=[redacted]`), `${path}: logged, redacted`)
  }
  t.ok(exported.some((e) => e.startsWith('/v1/traces') && e.includes('token=[redacted]')), 'traced, redacted')
  const everything = logs + exported.join('\n')
  for (const token of [member, admin]) {
    const [, claims, signature] = token.split('.')
    t.notOk(everything.includes(claims), 'no token claims anywhere')
    t.notOk(everything.includes(signature), 'no token signature anywhere')
  }
})

t.test('SIGTERM: sockets get 1012 (a deploy drains), the process exits, another instance leads at once', async (t) => {
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
  t.equal((await ws.closed).code, 1012)
  t.equal((await first.exit).code, 0)
  t.ok(await until(async () => await leaderOf(secondHttp), 2000), 'the second instance leads')
  t.comment(`took over ${Date.now() - stoppedAt} ms after SIGTERM`)
})
