/**
 * Presence and signals on one instance (memory bus): a member is a user with all its sockets (one `joined`, one
 * `left`), an info change is `updated`, anonymous sockets watch but cannot join, access is the subscribe's, sizes and
 * rates are limited with coded replies, members are kept per tenant, a signal reaches every other socket on the
 * entity and never its sender, and a socket that vanishes without a close frame leaves.
 */
import t from 'tap'
import { startApp } from '../../helpers/app.js'
import type { Frame, TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, extra: object = {}): string => signHs256({ sub, exp: now() + 600, ...extra }, SECRET)
const entities = {
  Team: { access: 'public' as const, presence: { intervalMs: 50 }, signals: { ratePerSecond: 5, maxBytes: 64 } },
  Crowd: { access: 'public' as const, presence: { maxMembers: 2, intervalMs: 50 } },
  Squad: { access: 'public' as const, tenanted: true, presence: true, signals: true },
  Secret: { access: 'admin' as const, presence: true },
  Plain: { access: 'public' as const }
}
const options = { entities, auth: { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } } }

let n = 0
/** Sends a request and waits for the reply carrying its id. */
async function ask (ws: TestClient, type: string, data: object): Promise<Frame> {
  const id = `r${++n}`
  ws.send({ type, id, data })
  return await ws.next((m) => m.id === id)
}
const join = async (ws: TestClient, entityId: string, info?: unknown, entityType = 'Team'): Promise<Frame> =>
  await ask(ws, 'subscribe', { entityType, entityId, presence: info === undefined ? {} : { info } })
const watch = async (ws: TestClient, entityId: string, entityType = 'Team'): Promise<Frame> =>
  await ask(ws, 'subscribe', { entityType, entityId, presence: true })
const isPresence = (m: Frame): boolean => m.type === 'presence'

t.test('a user with two tabs is one member: one joined, one left', async (t) => {
  const { client } = await startApp(t, options)
  const watcher = await client()
  const reply = await watch(watcher, 'team-1')
  t.same(reply.data.presence, { count: 0, members: [], truncated: false }, 'anonymous sockets may watch')

  const tab1 = await client(`?token=${token('u1')}`)
  const tab2 = await client(`?token=${token('u1')}`)
  t.same((await join(tab1, 'team-1', { editing: 'lineup' })).data.presence, { count: 1, members: [{ userId: 'u1', info: { editing: 'lineup' }, connections: 1 }], truncated: false })
  t.same((await watcher.next(isPresence)).data, { entityType: 'Team', entityId: 'team-1', count: 1, joined: [{ userId: 'u1', info: { editing: 'lineup' } }] })
  t.same((await join(tab2, 'team-1', { editing: 'lineup' })).data.presence.members, [{ userId: 'u1', info: { editing: 'lineup' }, connections: 2 }], 'the second tab: one member, two connections')
  tab1.close()
  await join(tab2, 'team-1', { editing: 'lineup' })
  t.ok(await until(async () => (await watch(watcher, 'team-1')).data.presence.members[0]?.connections === 1), 'one connection left')
  t.same(watcher.messages.filter(isPresence), [], 'no event for a second tab coming or going with the same info')

  tab2.close()
  t.same((await watcher.next(isPresence)).data, { entityType: 'Team', entityId: 'team-1', count: 0, left: [{ userId: 'u1' }] }, 'one left, with the last tab')
})

t.test('an info change is updated, never left and joined; set info replies presence_set', async (t) => {
  const { client } = await startApp(t, options)
  const watcher = await client()
  await watch(watcher, 'team-2')
  const u1 = await client(`?token=${token('u1')}`)
  await join(u1, 'team-2', { editing: 'lineup' })
  await watcher.next(isPresence)
  t.same(await ask(u1, 'presence', { entityType: 'Team', entityId: 'team-2', info: { editing: 'player-7' } }), { type: 'presence_set', id: `r${n}`, data: { entityType: 'Team', entityId: 'team-2' } })
  t.same((await watcher.next(isPresence)).data, { entityType: 'Team', entityId: 'team-2', count: 1, updated: [{ userId: 'u1', info: { editing: 'player-7' } }] })
  t.equal((await ask(watcher, 'presence', { entityType: 'Team', entityId: 'team-2', info: {} })).data.code, WireError.notMember, 'a watcher is no member')
  t.equal((await ask(u1, 'presence', { entityType: 'Team', entityId: 'team-2', info: { note: 'x'.repeat(2000) } })).data.code, WireError.tooLarge)
  t.equal((await ask(u1, 'presence', { entityType: 'Plain', entityId: 'team-2', info: {} })).data.code, WireError.badRequest, 'a type without presence')
  let limited = 0
  for (let i = 0; i < 30; i++) if ((await ask(u1, 'presence', { entityType: 'Team', entityId: 'team-2', info: { i } })).type === 'error') limited++
  t.ok(limited > 0, `info updates are rate-limited (${limited} of 30 refused)`)
})

t.test('who may join: signed-in users, on types they may subscribe to, with a small info', async (t) => {
  const { client } = await startApp(t, options)
  const anonymous = await client()
  t.match(await join(anonymous, 'team-3', { a: 1 }), { type: 'subscription_error', data: { code: WireError.unauthenticated } })
  const u1 = await client(`?token=${token('u1')}`)
  t.match(await join(u1, 'x', {}, 'Secret'), { type: 'subscription_error', data: { code: WireError.forbidden } }, 'the access rule of subscribing')
  t.match(await join(u1, 'team-3', { note: 'x'.repeat(2000) }), { type: 'subscription_error', data: { code: WireError.tooLarge } })
  t.match(await join(u1, 'team-3', {}, 'Plain'), { type: 'subscription_error', data: { code: WireError.badRequest } }, 'a type without presence')
  const bare = await join(u1, 'team-3')
  t.same(bare.data.presence.members, [{ userId: 'u1', connections: 1 }], 'a member without info')
})

t.test('signals go to every other socket on the entity, never back, members only, limited', async (t) => {
  const { app, client } = await startApp(t, options)
  const sender = await client(`?token=${token('u1')}`)
  const otherTab = await client(`?token=${token('u1')}`)
  const editor = await client(`?token=${token('u2')}`)
  const watcher = await client()
  for (const ws of [sender, otherTab, editor]) await join(ws, 'team-4', {})
  await watch(watcher, 'team-4')
  t.same(await ask(sender, 'signal', { entityType: 'Team', entityId: 'team-4', data: { cursor: [120, 48] } }), { type: 'signal_sent', id: `r${n}` })
  const expected = { type: 'signal', data: { entityType: 'Team', entityId: 'team-4', from: { userId: 'u1' }, data: { cursor: [120, 48] } } }
  for (const ws of [otherTab, editor, watcher]) t.same(await ws.next((m) => m.type === 'signal'), expected)
  t.same((await sender.collect(100, (m) => m.type === 'signal')), [], 'not echoed to its sender')
  t.match(app.changefeed.stats().presence, { rooms: 1, signals: 3, published: 0 }, 'counted in stats(): one frame per other socket; nothing published with the memory bus')

  t.equal((await ask(watcher, 'signal', { entityType: 'Team', entityId: 'team-4', data: 1 })).data.code, WireError.notMember)
  t.equal((await ask(sender, 'signal', { entityType: 'Team', entityId: 'team-4', data: 'x'.repeat(100) })).data.code, WireError.tooLarge)
  t.equal((await ask(sender, 'signal', { entityType: 'Crowd', entityId: 'team-4', data: 1 })).data.code, WireError.badRequest, 'a type without signals')
  const replies: string[] = []
  for (let i = 0; i < 10; i++) replies.push((await ask(sender, 'signal', { entityType: 'Team', entityId: 'team-4', data: i })).type)
  t.ok(replies.includes('error') && replies.includes('signal_sent'), `rate-limited: ${replies.join(',')}`)
  t.same((await ask(sender, 'signal', { entityType: 'Team', entityId: 'team-4', data: 1 })).data.code, WireError.rateLimited)
})

t.test('members are kept per tenant', async (t) => {
  const { client } = await startApp(t, options)
  const red = await client(`?token=${token('r1', { org: { tenant: 'red' } })}`)
  const blue = await client(`?token=${token('b1', { org: { tenant: 'blue' } })}`)
  t.same((await join(red, 's-1', { who: 'red' }, 'Squad')).data.presence.members.map((m: { userId: string }) => m.userId), ['r1'])
  const reply = await join(blue, 's-1', { who: 'blue' }, 'Squad')
  t.same(reply.data.presence.members.map((m: { userId: string }) => m.userId), ['b1'], 'the other tenant\'s member is not seen')
  t.same(await red.collect(150, (m) => isPresence(m) && JSON.stringify(m.data).includes('b1')), [], 'nor is this one')
  await ask(blue, 'signal', { entityType: 'Squad', entityId: 's-1', data: 1 })
  t.same(await red.collect(100, (m) => m.type === 'signal'), [], 'signals stay in the tenant')
})

t.test('above maxMembers: counts only, and truncated members in the reply', async (t) => {
  const { client } = await startApp(t, options)
  const watcher = await client()
  await watch(watcher, 'c-1', 'Crowd')
  const users = await Promise.all(['u1', 'u2', 'u3'].map(async (u) => await client(`?token=${token(u)}`)))
  for (const u of users) await join(u, 'c-1', { u: 1 }, 'Crowd')
  const late = await client()
  t.match((await watch(late, 'c-1', 'Crowd')).data.presence, { count: 3, truncated: true })
  t.equal((await watch(late, 'c-1', 'Crowd')).data.presence.members.length, 2)
  t.ok(await until(() => watcher.messages.some((m) => isPresence(m) && m.data.count === 3)), 'a count of 3')
  const counted = watcher.messages.filter((m) => isPresence(m) && m.data.count === 3)
  t.notOk('joined' in counted[0].data, 'without lists')
  users[2].close()
  const back = await watcher.next((m) => isPresence(m) && m.data.members !== undefined)
  t.equal(back.data.members.length, 2, 'back within maxMembers: the whole list again')
})

t.test('a socket that vanishes without a close frame leaves; an unsubscribe leaves', async (t) => {
  const { app, client } = await startApp(t, options)
  const watcher = await client()
  await watch(watcher, 'team-5')
  const u1 = await client(`?token=${token('u1')}`)
  const u2 = await client(`?token=${token('u2')}`)
  await join(u1, 'team-5', {})
  await join(u2, 'team-5', {})
  await watcher.next((m) => isPresence(m) && m.data.count === 2)
  // the frames before it (u1 alone) are not awaited below
  watcher.messages.splice(0)
  u1.ws.terminate()
  t.same((await watcher.next((m) => isPresence(m) && m.data.left !== undefined)).data, { entityType: 'Team', entityId: 'team-5', count: 1, left: [{ userId: 'u1' }] }, 'terminated: left')
  const kept = await ask(u2, 'subscribe', { entityType: 'Team', entityId: 'team-5', presence: false })
  t.same(kept.data, { subscriptionId: 'Team:team-5', entityType: 'Team', entityId: 'team-5' }, '"presence": false keeps the subscription')
  t.same((await watcher.next((m) => isPresence(m) && m.data.left !== undefined)).data.left, [{ userId: 'u2' }], 'and leaves')
  t.equal((await ask(u2, 'signal', { entityType: 'Team', entityId: 'team-5', data: 1 })).data.code, WireError.notMember)
  await join(u2, 'team-5', {})
  await watcher.next((m) => isPresence(m) && m.data.joined !== undefined)
  await ask(u2, 'unsubscribe', { entityType: 'Team', entityId: 'team-5' })
  t.same((await watcher.next((m) => isPresence(m) && m.data.left !== undefined)).data.left, [{ userId: 'u2' }], 'unsubscribed: left')
  watcher.close()
  t.ok(await until(() => app.changefeed.stats().subscriptions.active === 0), 'nothing left')
})
