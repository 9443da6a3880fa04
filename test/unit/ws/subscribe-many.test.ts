/**
 * The subscribe with `entityIds` (lib/ws/subscribe-many.ts), on a recording socket with scripted reads: one reply
 * for the batch, ids once each and in the order asked, each refused one in `errors` with its own code (a feed, the
 * authorize rule, a bus that failed for it, the limit of subscriptions) while the others go on; a refused type
 * refuses them all; with `snapshot`, the states read in one call, an entity whose document names someone else
 * refused alone, a refused read refusing the batch (the subscriptions ended), live changes the read saw dropped.
 * Without `snapshot`, each one that starts now starts at its channel's position (`positions`), what came between
 * written after the reply.
 */
import t from 'tap'
import { subscribeMany } from '../../../lib/ws/subscribe-many.js'
import { RecordingReply, harness, statesOf, user } from '../fixtures/subscriptions.js'
import type { SubscribeManyRequest } from '../../../lib/protocol/index.js'
import type { ReplayedFrames } from '../../../lib/reads/replay.js'

async function subscribe (h: ReturnType<typeof harness>, req: SubscribeManyRequest): Promise<RecordingReply> {
  const reply = new RecordingReply()
  await subscribeMany(h.subscriptions, reply, req)
  return reply
}

t.test('one reply: ids once each, in the order asked; a feed, a denied id, a bus failure and the limit refused alone', async (t) => {
  const h = harness({ authorize: ({ entityId }) => entityId !== 'm3', limits: { maxSubscriptionsPerConnection: 5 } })
  const watch = h.fanout.watch.bind(h.fanout)
  h.fanout.watch = async (receiver, channel, ...rest) => {
    if (channel === h.fanout.channel('Match', 'm4')) throw new Error('bus down')
    return await watch(receiver, channel, ...rest)
  }
  const reply = await subscribe(h, { entityType: 'Match', entityIds: ['m2', 'm1', '*', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7'] })
  const { data } = reply.answer
  t.equal(reply.answer.type, 'subscribed')
  t.same(data.subscribed, ['m2', 'm1', 'm5'], 'in the order asked, once each')
  // the entities of a batch are opened at once: each one being opened holds a place until it is known
  t.same(Object.fromEntries(data.errors.map((e: { entityId: string, code: string }) => [e.entityId, e.code])),
    { '*': 'bad_request', m3: 'forbidden', m4: 'internal_error', m6: 'too_many_subscriptions', m7: 'too_many_subscriptions' })
  t.equal(h.subscriptions.size, 3)
  t.match(h.warnings, [/bus subscribe failed/])
  t.equal(h.fanout.store.get(h.fanout.channel('Match', 'm4')), undefined, 'the failed one is not left behind')
})

t.test('a type the principal may not watch: every id refused, nothing held', async (t) => {
  const h = harness({ principal: user('u1', { tenantId: 'red' }) })
  const reply = await subscribe(h, { entityType: 'Squad', tenantId: 'blue', entityIds: ['a', 'b', 'a'] })
  t.same(reply.answer.data, {
    entityType: 'Squad',
    tenantId: 'blue',
    subscribed: [],
    errors: [{ entityId: 'a', code: 'forbidden', error: 'another tenant\'s entity' }, { entityId: 'b', code: 'forbidden', error: 'another tenant\'s entity' }]
  })
  t.equal(h.subscriptions.size, 0)
})

t.test('snapshot: the states of all, in one read; held live changes the read saw are dropped', async (t) => {
  const h = harness()
  let reads = 0
  h.script.snapshot = async (_entity, _tenant, ids) => {
    reads++
    t.same(ids, ['m1', 'm2', 'm3'])
    h.arrive(h.fanout.channel('Match', 'm1'), null as unknown as string, '5')
    h.arrive(h.fanout.channel('Match', 'm2'), null as unknown as string, '11')
    return statesOf({ m1: { payload: { home: 1 }, version: '2' }, m2: { payload: { home: 0 }, version: '1' } }, 10)
  }
  await subscribe(h, { entityType: 'Match', entityIds: ['m1'] })
  const reply = await subscribe(h, { entityType: 'Match', entityIds: ['m1', 'm2', 'm3'], snapshot: true })
  t.equal(reads, 1)
  t.same(reply.answer.data.subscribed, ['m1', 'm2', 'm3'], 'one already held is in the batch too')
  t.same(reply.answer.data.snapshots, { m1: { payload: { home: 1 }, version: '2' }, m2: { payload: { home: 0 }, version: '1' }, m3: { payload: null, version: null } })
  t.equal(h.socket.delivered.length, 1, 'the change the snapshot had not seen follows it')
})

t.test('snapshot: a document that names someone else refuses that entity alone; a refused read refuses all', async (t) => {
  const h = harness({ principal: user('u1') })
  for (const id of ['t1', 't2']) h.script.owners.set(id, 'u1')
  h.script.snapshot = async () => statesOf({ t1: { payload: { owner: 'u1' }, version: '1' }, t2: { payload: { owner: 'u2' }, version: '4' } })
  const reply = await subscribe(h, { entityType: 'Ticket', entityIds: ['t1', 't2'], snapshot: true })
  t.same(reply.answer.data.subscribed, ['t1'])
  t.match(reply.answer.data.errors, [{ entityId: 't2', code: 'forbidden' }])
  t.same(Object.keys(reply.answer.data.snapshots), ['t1'])
  t.equal(h.subscriptions.size, 1, 'the other owner\'s subscription ended')

  h.script.snapshot = async () => null
  const refused = await subscribe(h, { entityType: 'Ticket', entityIds: ['t1', 't2'], snapshot: true })
  t.same(refused.answer.data.subscribed, [])
  t.same(refused.answer.data.errors.map((e: { code: string }) => e.code), ['rate_limited', 'rate_limited'])
  t.equal(h.subscriptions.size, 0, 'the batch\'s subscriptions ended, the one held before too')
})

t.test('the socket closes meanwhile: no reply', async (t) => {
  const h = harness({ authorize: () => { h.socket.isOpen = false; return true } })
  const reply = await subscribe(h, { entityType: 'Match', entityIds: ['m1', 'm2'] })
  t.equal(reply.sent, false)
  t.equal(h.subscriptions.size, 0)
})

t.test('each that starts now starts at its channel\'s position; what came between follows the reply', async (t) => {
  const h = harness()
  const at = (n: number): string => `0000abcd:${n}`
  const [m1, m2] = [h.fanout.channel('Match', 'm1'), h.fanout.channel('Match', 'm2')]
  // m1 has a history, m2's position cannot be read
  h.services.head = async (_entity, entityId) => { if (entityId === 'm2') throw new Error('gone'); return at(4) }
  h.script.replay = async (_entity, _id, _tenant, since): Promise<ReplayedFrames> => {
    h.arrive(m1, at(5))
    h.arrive(m1, at(6))
    return [{ frame: '{"replayed":5}', position: at(5) }].filter(() => since === at(4))
  }
  const reply = await subscribe(h, { entityType: 'Match', entityIds: ['m1', 'm2'] })
  t.same(reply.answer.data.subscribed, ['m1', 'm2'])
  t.same(reply.answer.data.positions, { m1: at(4) }, 'the position of each that has one')
  t.same(h.socket.replays, [{ channel: m1, frames: [{ frame: '{"replayed":5}', position: at(5) }] }], 'what came between, after the reply')
  t.same(h.socket.delivered.map((f) => JSON.parse(f).data.position), [at(6)], 'then the live one the replay did not have')
  t.equal(h.fanout.store.get(m2)?.receivers.has(h.socket), true, 'the one without a position is subscribed all the same')
  t.match(h.warnings, [/position could not be read/])
})
