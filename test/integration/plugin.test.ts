/** The mount example: a host API with its own routes, the plugin beside them, database and direct publish. */
import t from 'tap'
import { buildHostApp } from '../../examples/host-app.js'
import type { ChangefeedPluginOptions } from '../../lib/index.js'
import { TestClient, isNotification } from '../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../helpers/services.js'

const url = await freshDatabase(t, 'host')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))

const app = await buildHostApp(url)
await app.listen({ host: '127.0.0.1', port: 0 })
t.teardown(async () => await app.close())
const port = (app.server.address() as { port: number }).port
const base = `http://127.0.0.1:${port}`

t.test('the host keeps its routes', async (t) => {
  const res = await fetch(`${base}/api/health`)
  t.same(await res.json(), { ok: true })
})

t.test('database changes and host publishes reach a /ws client', async (t) => {
  const ws = await TestClient.open(`ws://127.0.0.1:${port}/ws`)
  t.teardown(() => ws.close())
  await ws.subscribe('Team', 'team-1')
  await ws.subscribe('LiveCommentary', 'match-1')

  await sql.query('INSERT INTO mt_doc_team (id, data) VALUES (\'team-1\', \'{"name":"Sharks"}\')')
  t.equal((await ws.next(isNotification('Team', 'team-1'))).data.changeType, 'created')

  const res = await fetch(`${base}/api/matches/match-1/commentary`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'Try!' })
  })
  t.same(await res.json(), { delivered: true })
  t.match((await ws.next(isNotification('LiveCommentary', 'match-1'))).data, { payloadType: 'full', payload: { text: 'Try!' } })
})

t.test('a host that registered @fastify/postgres under the same name keeps its pool', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: fastifyPostgres } = await import('@fastify/postgres')
  const { default: changefeed } = await import('../../lib/index.js')
  const host = Fastify()
  t.teardown(async () => await host.close())
  await host.register(fastifyPostgres, { name: 'ballr', connectionString: url })
  const hostPool = (host as any).pg.ballr.pool
  await host.register(changefeed, { databases: [{ name: 'ballr', url }], entities: { Team: { access: 'public' } } })
  await host.ready()
  t.equal((host as any).pg.ballr.pool, hostPool, 'the same pool')
  t.equal(host.changefeed.stats().listeners.ballr.state, 'listening')
})

t.test('a host that registered @fastify/redis shares its client with the Redis bus', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: fastifyRedis } = await import('@fastify/redis')
  const { default: changefeed } = await import('../../lib/index.js')
  const { REDIS_URL, requireService } = await import('../helpers/brokers.js')
  await requireService('Redis')
  const host = Fastify()
  t.teardown(async () => await host.close())
  await host.register(fastifyRedis, { url: REDIS_URL })
  await host.register(changefeed, { bus: { provider: 'redis', prefix: `host-${process.pid}` }, entities: { Team: { access: 'public' } } })
  await host.listen({ host: '127.0.0.1', port: 0 })
  t.match(host.changefeed.stats().bus, { provider: 'redis', ready: true })
  const ws = await TestClient.open(`ws://127.0.0.1:${(host.server.address() as { port: number }).port}/ws`)
  t.teardown(() => ws.close())
  await ws.subscribe('Team', 'shared')
  await host.changefeed.publish({ entityType: 'Team', entityId: 'shared', changeType: 'updated' })
  t.equal((await ws.next(isNotification('Team', 'shared'))).data.changeType, 'updated', 'delivered through the host\'s Redis')
  t.equal(await host.changefeed.watchers('Team', 'shared'), 1)
})

t.test('notifications go straight to the socket, or through ws when the host\'s @fastify/websocket compresses', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: websocket } = await import('@fastify/websocket')
  const { default: changefeed } = await import('../../lib/index.js')
  const names = Array.from({ length: 20 }, (_, i) => `name ${i} `.repeat(200))
  const raw = names.reduce((sum, name) => sum + name.length, 0)
  for (const compress of [false, true]) {
    const host = Fastify()
    t.teardown(async () => await host.close())
    if (compress) await host.register(websocket, { options: { perMessageDeflate: { threshold: 0 } } })
    await host.register(changefeed, { entities: { Team: { access: 'public', payload: 'full' } } })
    await host.listen({ host: '127.0.0.1', port: 0 })
    const ws = await TestClient.open(`ws://127.0.0.1:${(host.server.address() as { port: number }).port}/ws`, { perMessageDeflate: compress })
    t.teardown(() => ws.close())
    t.equal(ws.ws.extensions, compress ? 'permessage-deflate' : '', compress ? 'compression negotiated' : 'no extension')
    await ws.subscribe('Team', 'squeezed')
    // the server's end of the socket: how many frames go through ws's own send
    const [server] = host.websocketServer.clients
    let sends = 0
    const send = server.send.bind(server)
    server.send = ((...args: Parameters<typeof send>) => { sends++; send(...args) }) as typeof server.send
    const read = (ws.ws as unknown as { _socket: { bytesRead: number } })._socket.bytesRead
    for (const name of names) await host.changefeed.publish({ entityType: 'Team', entityId: 'squeezed', changeType: 'updated', payload: { name } })
    const got: unknown[] = []
    for (let i = 0; i < names.length; i++) got.push((await ws.next(isNotification('Team', 'squeezed'))).data.payload)
    t.same(got, names.map((name) => ({ name })), 'every notification, whole and in order')
    const bytes = (ws.ws as unknown as { _socket: { bytesRead: number } })._socket.bytesRead - read
    if (compress) {
      t.equal(sends, names.length, 'through ws')
      t.ok(bytes < raw / 4, `compressed: ${bytes} bytes for ${raw} of names`)
    } else {
      t.equal(sends, 0, 'written straight to the TCP stream')
      t.ok(bytes > raw, 'uncompressed')
    }
  }
})

t.test('mounted, the plugin adds only its socket route unless told', async (t) => {
  t.ok(app.hasRoute({ method: 'GET', url: '/ws' }), '/ws')
  for (const path of ['/health/live', '/health/ready', '/changefeed/stats']) t.notOk(app.hasRoute({ method: 'GET', url: path }), `not ${path}`)
  const told = await buildHostApp(undefined, { telemetry: { healthPath: '/changefeed/health', statsPath: '/changefeed/stats' } })
  t.teardown(async () => await told.close())
  await told.ready()
  for (const path of ['/changefeed/health/live', '/changefeed/health/ready', '/changefeed/stats']) t.ok(told.hasRoute({ method: 'GET', url: path }), path)
})

t.test('a route the host already has is refused up front with CHANGEFEED_ROUTE_TAKEN', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: changefeed } = await import('../../lib/index.js')
  const cases: Array<[string, ChangefeedPluginOptions]> = [
    ['/health/ready', { telemetry: { healthPath: '/health' } }],
    ['/admin/stats', { telemetry: { statsPath: '/admin/stats' } }],
    ['/ws', {}]
  ]
  for (const [taken, options] of cases) {
    const host = Fastify()
    t.teardown(async () => await host.close())
    host.get(taken, async () => 'the host\'s own')
    await t.rejects(async () => await host.register(changefeed, { entities: { Team: { access: 'public' } }, ...options }), { code: 'CHANGEFEED_ROUTE_TAKEN' }, taken)
  }
  const twice = Fastify()
  t.teardown(async () => await twice.close())
  await t.rejects(async () => await twice.register(changefeed, { telemetry: { healthPath: '/ops', statsPath: '/ops/live' } }), { code: 'CHANGEFEED_INVALID_OPTIONS' }, 'nor two of its own on one path')
  const host = Fastify()
  t.teardown(async () => await host.close())
  host.get('/health/ready', async () => 'the host\'s own')
  await host.register(changefeed, { entities: { Team: { access: 'public' } } })
  t.equal((await host.inject('/health/ready')).body, 'the host\'s own', 'with the defaults the host\'s health route stays its own')
})
