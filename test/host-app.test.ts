/** The mount example: a host API with its own routes, the plugin beside them, database and direct publish. */
import t from 'tap'
import { buildHostApp } from '../examples/host-app.js'
import { TestClient, isNotification } from './helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from './helpers/services.js'

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

  await sql.query(`INSERT INTO mt_doc_team (id, data) VALUES ('team-1', '{"name":"Sharks"}')`)
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
  const { default: changefeed } = await import('../lib/index.js')
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
  const { default: changefeed } = await import('../lib/index.js')
  const { REDIS_URL, requireService } = await import('./helpers/brokers.js')
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
