/**
 * Presence survives a crash: three standalone instances (separate processes) on Redis and on NATS; one of them is
 * SIGKILLed, sending no close frame and writing nothing more. Its members leave the watchers on the other instances
 * within 30 s (here the instance TTL is 3 s: within about 4 s); a user that also has a socket on a live instance
 * stays, with one connection.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { serve } from '../helpers/serve.js'
import { TestClient, type Frame } from '../helpers/client.js'
import { freshDatabase } from '../helpers/services.js'
import { NATS_URL, REDIS_URL, requireService } from '../helpers/brokers.js'
import { now, signHs256 } from '../helpers/tokens.js'
import { until } from '../helpers/wait.js'
import { Redis } from 'ioredis'
import { connect } from 'nats'

await requireService('Redis')
await requireService('NATS')

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string): string => signHs256({ sub, exp: now() + 600 }, SECRET)
const url = await freshDatabase(t, 'presence')

let n = 0
async function ask (ws: TestClient, type: string, data: object): Promise<Frame> {
  const id = `r${++n}`
  ws.send({ type, id, data })
  return await ws.next((m) => m.id === id)
}

for (const [provider, broker] of [['redis', REDIS_URL], ['nats', NATS_URL]] as const) {
  t.test(`${provider}: the members of a SIGKILLed instance leave within 30 s`, async (t) => {
    const file = join(mkdtempSync(join(tmpdir(), 'changefeed-presence-')), 'changefeed.json')
    const prefix = `presence-${randomUUID().slice(0, 8)}`
    writeFileSync(file, JSON.stringify({
      server: { port: 0 },
      databases: [{ name: 'main', url }],
      entities: { Team: { access: 'public', presence: { intervalMs: 100 } } },
      auth: { jwt: { secret: SECRET } },
      bus: { provider, url: broker, prefix, instanceTtlSeconds: 3 }
    }))
    const served = [0, 1, 2].map(() => serve(t, ['--config', file]))
    const [a, b, c] = await Promise.all(served.map(async (s) => (await s.address).replace('http', 'ws') + '/ws'))
    const open = async (address: string, user?: string): Promise<TestClient> => {
      const ws = await TestClient.open(user === undefined ? address : `${address}?token=${token(user)}`)
      t.teardown(() => ws.close())
      return ws
    }
    const watcher = await open(a)
    await ask(watcher, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })
    for (const [address, user] of [[b, 'u1'], [c, 'u1'], [c, 'u2']]) {
      await ask(await open(address, user), 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: { info: { on: user } } })
    }
    await watcher.next((m) => m.type === 'presence' && m.data.count === 2)
    const check = await open(a)
    const before = (await ask(check, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })).data.presence
    t.same(before.members.map((m: { userId: string, connections: number }) => [m.userId, m.connections]).sort(), [['u1', 2], ['u2', 1]])

    served[2].child.kill('SIGKILL')
    const killedAt = Date.now()
    const left = await watcher.next((m) => m.type === 'presence' && m.data.left !== undefined, 30_000)
    t.comment(`left ${Date.now() - killedAt} ms after the SIGKILL`)
    t.same(left.data, { entityType: 'Team', entityId: 'team-1', count: 1, left: [{ userId: 'u2' }] }, 'only the member that had no other socket left')
    const after = (await ask(check, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })).data.presence
    t.same(after, { count: 1, members: [{ userId: 'u1', info: { on: 'u1' }, connections: 1 }], truncated: false }, 'u1 stays, with its socket on the live instance')
    // what is stored: only the live instance's entry (u1 on b), the dead one's removed by the instance that noticed
    const stored = async (): Promise<number> => {
      if (provider === 'redis') {
        const redis = new Redis(broker)
        try { return await redis.hlen(`{${prefix}}:presence:${prefix}:Team:team-1`) } finally { redis.disconnect() }
      }
      const nc = await connect({ servers: broker })
      try {
        const kv = await nc.jetstream().views.kv(`${prefix.replace(/[^A-Za-z0-9_-]/g, '_')}_presence`)
        let keys = 0
        for await (const key of await kv.keys()) if (key !== '') keys++
        return keys
      } finally { await nc.close() }
    }
    t.ok(await until(async () => await stored() === 1, 10_000), 'the store keeps only the live instance\'s entry')
  })
}
