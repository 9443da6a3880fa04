/**
 * Presence across three instances, on Redis and on NATS: a user with sockets on two instances is one member with
 * their connections summed; joins, info changes and leaves on one instance reach the watchers on the others; an
 * instance that starts watching an entity later finds its members in the store; signals cross instances and are
 * never echoed; an instance that closes takes its members along.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { startApp, type RunningApp } from '../../helpers/app.js'
import type { Frame, TestClient } from '../../helpers/client.js'
import { NATS_URL, REDIS_URL, requireService } from '../../helpers/brokers.js'
import { now, signHs256 } from '../../helpers/tokens.js'

await requireService('Redis')
await requireService('NATS')

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant?: string): string => signHs256({ sub, exp: now() + 600, ...tenant === undefined ? {} : { org: { tenant } } }, SECRET)

let n = 0
async function ask (ws: TestClient, type: string, data: object): Promise<Frame> {
  const id = `r${++n}`
  ws.send({ type, id, data })
  return await ws.next((m) => m.id === id)
}
const isPresence = (m: Frame): boolean => m.type === 'presence'
/** The members a presence frame or reply leaves a client with, applied to `members`. */
function apply (members: Map<string, unknown>, frame: Frame): void {
  for (const { userId, info } of [...frame.data.joined ?? [], ...frame.data.updated ?? []]) members.set(userId, info)
  for (const { userId } of frame.data.left ?? []) members.delete(userId)
}
/** Waits until the frames `ws` receives leave `members` as `expected`. */
async function converge (ws: TestClient, members: Map<string, unknown>, expected: Record<string, unknown>): Promise<void> {
  while (JSON.stringify(Object.fromEntries([...members].sort())) !== JSON.stringify(expected)) apply(members, await ws.next(isPresence, 5000))
}

for (const [provider, url] of [['redis', REDIS_URL], ['nats', NATS_URL]] as const) {
  t.test(`${provider}: one member per user across instances, events and signals on every instance`, async (t) => {
    const options = {
      entities: { Team: { access: 'public' as const, presence: { intervalMs: 50 }, signals: true }, Squad: { access: 'public' as const, tenanted: true, presence: true, signals: true } },
      auth: { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } },
      bus: { provider, url, prefix: `presence-${randomUUID().slice(0, 8)}`, instanceTtlSeconds: 2 }
    }
    const apps: RunningApp[] = []
    for (let i = 0; i < 3; i++) apps.push(await startApp(t, options))
    const [a, b, c] = apps
    const watcher = await a.client()
    const members = new Map<string, unknown>()
    t.same((await ask(watcher, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })).data.presence.count, 0)

    const u1b = await b.client(`?token=${token('u1')}`)
    const u1c = await c.client(`?token=${token('u1')}`)
    const u2c = await c.client(`?token=${token('u2')}`)
    await ask(u1b, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: { info: { editing: 'lineup' } } })
    await ask(u2c, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: { info: { editing: 'bench' } } })
    await converge(watcher, members, { u1: { editing: 'lineup' }, u2: { editing: 'bench' } })
    t.pass('joins on two other instances reach the watcher')
    const second = await ask(u1c, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: { info: { editing: 'lineup' } } })
    t.same(second.data.presence.members.find((m: { userId: string }) => m.userId === 'u1'), { userId: 'u1', info: { editing: 'lineup' }, connections: 2 }, 'a user on two instances: one member, two connections')

    const late = await a.client()
    const reply = await ask(late, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })
    t.equal(reply.data.presence.count, 2, 'a socket arriving later finds the members')

    await ask(u1c, 'presence', { entityType: 'Team', entityId: 'team-1', info: { editing: 'player-7' } })
    const updated = await watcher.next(isPresence)
    t.same(updated.data, { entityType: 'Team', entityId: 'team-1', count: 2, updated: [{ userId: 'u1', info: { editing: 'player-7' } }] }, 'an info change on another instance: updated')

    const fresh = await (await startApp(t, options)).client()
    const found = await ask(fresh, 'subscribe', { entityType: 'Team', entityId: 'team-1', presence: true })
    t.same(found.data.presence, {
      count: 2,
      members: [{ userId: 'u1', info: { editing: 'player-7' }, connections: 2 }, { userId: 'u2', info: { editing: 'bench' }, connections: 1 }],
      truncated: false
    }, 'an instance that starts watching the entity reads its members from the store')

    t.same(await ask(u2c, 'signal', { entityType: 'Team', entityId: 'team-1', data: { cursor: [1, 2] } }), { type: 'signal_sent', id: `r${n}` })
    for (const ws of [watcher, u1b, u1c]) t.same((await ws.next((m) => m.type === 'signal')).data.from, { userId: 'u2' })
    t.same(await u2c.collect(200, (m) => m.type === 'signal'), [], 'never back to its sender')
    t.ok(a.app.changefeed.stats().presence.received > 0 && c.app.changefeed.stats().presence.published > 0, 'presence messages counted in stats()')

    // one entity id, two tenants, two instances: two rooms
    const red = await a.client(`?token=${token('r1', 'red')}`)
    const blue = await b.client(`?token=${token('b1', 'blue')}`)
    await ask(red, 'subscribe', { entityType: 'Squad', entityId: 's-1', presence: { info: 'red' } })
    const blueReply = await ask(blue, 'subscribe', { entityType: 'Squad', entityId: 's-1', presence: { info: 'blue' } })
    t.same(blueReply.data.presence.members.map((m: { userId: string }) => m.userId), ['b1'], 'a tenant\'s room on another instance holds only its members')
    await ask(blue, 'signal', { entityType: 'Squad', entityId: 's-1', data: 1 })
    t.same(await red.collect(300, (m) => m.type === 'signal' || (isPresence(m) && JSON.stringify(m.data).includes('b1'))), [], 'nothing of the other tenant reaches it')

    u1b.close()
    t.same(await watcher.collect(300, (m) => isPresence(m) && m.data.left !== undefined), [], 'u1 is still on another instance')
    await c.app.close()
    await converge(watcher, members, {})
    t.pass('an instance that closes takes its members along')
  })
}
