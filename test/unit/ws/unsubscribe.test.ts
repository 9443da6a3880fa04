/**
 * The unsubscribe (lib/ws/unsubscribe.ts), on a recording socket: by subscriptionId, by type and id, by filter
 * (`where`, or the `*{…}` a subscriptionId names), by `entityIds`; a tenant implied or named reaches the same
 * subscription; always answered `unsubscribed`, also for what is not held, an unknown type, a type the principal may
 * not watch, or a subscriptionId that names nothing; what it ends stops being watched (the bus, the filter's seat).
 */
import t from 'tap'
import { unsubscribe } from '../../../lib/ws/unsubscribe.js'
import { subscribeEntity } from '../../../lib/ws/subscribe-entity.js'
import { subscribeWhere } from '../../../lib/ws/subscribe-where.js'
import { RecordingReply, harness, user } from '../fixtures/subscriptions.js'
import type { UnsubscribeRequest } from '../../../lib/protocol/index.js'

type Harness = ReturnType<typeof harness>

async function unsubscribed (h: Harness, req: UnsubscribeRequest): Promise<unknown> {
  const reply = new RecordingReply()
  await unsubscribe(h.subscriptions, reply, req)
  if (reply.answer.type !== 'unsubscribed') throw new Error(`answered ${reply.answer.type}`)
  return reply.answer.data
}

async function entities (h: Harness, entityType: string, ids: string[], tenantId?: string): Promise<void> {
  for (const entityId of ids) await subscribeEntity(h.subscriptions, new RecordingReply(), { entityType, entityId, tenantId })
}

const watched = (h: Harness, entityType: string, entityId: string, tenantId: string | null = null): boolean =>
  h.fanout.store.get(h.fanout.channel(entityType, entityId, tenantId))?.receivers.has(h.socket) === true

t.test('by subscriptionId and by type and id: ended, no longer watched; the reply names it as asked', async (t) => {
  const h = harness()
  await entities(h, 'Match', ['m1', 'm2'])
  t.same(await unsubscribed(h, { subscriptionId: 'Match:m1' }), { subscriptionId: 'Match:m1' })
  t.same(await unsubscribed(h, { entityType: 'Match', entityId: 'm2' }), { subscriptionId: 'Match:m2' })
  t.equal(h.subscriptions.size, 0)
  t.equal(watched(h, 'Match', 'm1') || watched(h, 'Match', 'm2'), false)
})

t.test('a tenant implied by the credentials or named reaches one subscription', async (t) => {
  const h = harness({ principal: user('u1', { tenantId: 'red' }) })
  await entities(h, 'Squad', ['s1'])
  t.equal(watched(h, 'Squad', 's1', 'red'), true, 'the principal\'s tenant, implied')
  t.same(await unsubscribed(h, { subscriptionId: 'Squad@red:s1' }), { subscriptionId: 'Squad@red:s1' })
  t.equal(h.subscriptions.size, 0)
  await entities(h, 'Squad', ['s2'], 'red')
  t.same(await unsubscribed(h, { entityType: 'Squad', entityId: 's2' }), { subscriptionId: 'Squad:s2' })
  t.equal(h.subscriptions.size, 0)
})

t.test('many: the ids once each; those not held are answered too', async (t) => {
  const h = harness()
  await entities(h, 'Match', ['m1', 'm2', 'm3'])
  t.same(await unsubscribed(h, { entityType: 'Match', entityIds: ['m1', 'm9', 'm1', 'm2'] }), { entityType: 'Match', unsubscribed: ['m1', 'm9', 'm2'] })
  t.equal(h.subscriptions.size, 1)
  t.equal(watched(h, 'Match', 'm3'), true, 'the one not named stays')
  t.same(await unsubscribed(h, { entityType: 'Nope', entityIds: ['x'] }), { entityType: 'Nope', unsubscribed: ['x'] }, 'an unknown type: nothing to end')
})

t.test('a filtered feed, by where (in any order of its keys) or by its subscriptionId: the seat is left', async (t) => {
  const h = harness()
  const where = { status: 'live', league: ['b', 'a'] }
  for (let i = 0; i < 2; i++) {
    await subscribeWhere(h.subscriptions, new RecordingReply(), { entityType: 'Match', entityId: '*', where }, where)
    t.equal(h.subscriptions.size, 1)
    const data = i === 0
      ? await unsubscribed(h, { entityType: 'Match', entityId: '*', where: { league: ['a', 'b'], status: 'live' } })
      : await unsubscribed(h, { subscriptionId: 'Match:*{"league":["a","b"],"status":"live"}' })
    t.same(data, { subscriptionId: 'Match:*{"league":["a","b"],"status":"live"}' })
    t.equal(h.subscriptions.size, 0)
  }
  t.equal(h.script.leaves.length, 2)
})

t.test('nothing to end is not an error: not held, unknown, not allowed, or a subscriptionId naming nothing', async (t) => {
  const h = harness({ principal: user('u1', { tenantId: 'red' }) })
  await entities(h, 'Match', ['m1'])
  t.same(await unsubscribed(h, { subscriptionId: 'Match:m1' }), { subscriptionId: 'Match:m1' })
  t.same(await unsubscribed(h, { subscriptionId: 'Match:m1' }), { subscriptionId: 'Match:m1' }, 'twice')
  t.same(await unsubscribed(h, { entityType: 'Nope', entityId: '1' }), { subscriptionId: 'Nope:1' })
  t.same(await unsubscribed(h, { entityType: 'Squad', entityId: 's1', tenantId: 'blue' }), { subscriptionId: 'Squad@blue:s1' })
  t.same(await unsubscribed(h, { subscriptionId: '::not one' }), { subscriptionId: '::not one' })
  t.same(await unsubscribed(h, { subscriptionId: 'Match:*{"broken' }), { subscriptionId: 'Match:*{"broken' })
  t.equal(h.subscriptions.size, 0)
})
