/**
 * The subscribe to one entity (lib/ws/subscribe-entity.ts), on a recording socket with scripted reads: refusals
 * (unknown type, a feed's snapshot, another owner's entity), a subscribe again that reuses the subscription, a bus
 * that fails, a socket that closes while it is checked; `since` (the replay written after the reply, live
 * notifications held meanwhile and those the replay carried dropped; a replay that cannot be given, fails, or holds
 * another owner's documents), `snapshot` (its state, a refused or failed read, a document that names someone
 * else), watchers counted once; a subscription that starts now (notify mode, a type with history) at the channel's
 * position read before it opens, what came between written after the reply. Every request gets one reply, or none
 * only when the socket is gone.
 */
import t from 'tap'
import { subscribeEntity } from '../../../lib/ws/subscribe-entity.js'
import { Deferred, turn } from '../fixtures/fakes.js'
import { RecordingReply, harness, statesOf, user } from '../fixtures/subscriptions.js'
import type { SubscribeOneRequest } from '../../../lib/protocol/index.js'
import type { ReplayedFrames } from '../../../lib/reads/replay.js'

const at = (n: number): string => `0000abcd:${n}`
const replayed = (...ns: number[]): ReplayedFrames => ns.map((n) => ({ frame: `{"replayed":${n}}`, position: at(n) }))
const positions = (frames: string[]): unknown[] => frames.map((f) => JSON.parse(f).data?.position)

async function subscribe (h: ReturnType<typeof harness>, req: SubscribeOneRequest): Promise<RecordingReply> {
  const reply = new RecordingReply()
  await subscribeEntity(h.subscriptions, reply, req)
  return reply
}

t.test('refusals: unknown type, a feed with a snapshot, another owner\'s entity; nothing is held', async (t) => {
  const h = harness({ principal: user('u1') })
  h.script.owners.set('t1', 'u2')
  t.match((await subscribe(h, { entityType: 'Nope', entityId: '1' })).answer,
    { type: 'subscription_error', id: 'r1', data: { entityType: 'Nope', entityId: '1', code: 'unknown_entity_type' } })
  t.match((await subscribe(h, { entityType: 'Match', entityId: '*', snapshot: true })).answer.data, { code: 'bad_request', error: /no one state/ })
  t.match((await subscribe(h, { entityType: 'Ticket', entityId: 't1' })).answer.data, { code: 'forbidden', error: /owner/ })
  t.equal(h.subscriptions.size, 0)
  t.equal(h.fanout.store.get(h.fanout.channel('Ticket', 't1')), undefined, 'nothing watched')
})

t.test('subscribed; a subscribe again reuses it, and a delta type\'s next frame is full again', async (t) => {
  let checks = 0
  const h = harness({ authorize: () => { checks++; return true } })
  const first = await subscribe(h, { entityType: 'Score', entityId: 's1' })
  t.same(first.answer, { type: 'subscribed', id: 'r1', data: { subscriptionId: 'Score:s1', entityType: 'Score', entityId: 's1' } })
  const channel = h.fanout.channel('Score', 's1')
  const subscription = h.subscriptions.get(channel)!
  t.equal(h.fanout.store.get(channel)?.receivers.has(h.socket), true, 'the socket receives the channel')
  subscription.base = at(3)
  t.match((await subscribe(h, { entityType: 'Score', entityId: 's1' })).answer, { type: 'subscribed' })
  t.equal(h.subscriptions.get(channel), subscription, 'one subscription')
  t.equal(subscription.base, null, 'no base proven: the next frame is full')
  t.equal(checks, 1, 'access was checked when it opened')
})

t.test('the bus fails: the request fails (internal_error), logged, nothing left behind', async (t) => {
  const h = harness()
  h.fanout.watch = async () => { throw new Error('bus down') }
  const reply = await subscribe(h, { entityType: 'Match', entityId: 'm1' })
  t.equal(reply.failed, true)
  t.same(reply.frames, [])
  t.match(h.warnings, [/bus subscribe failed/])
  t.equal(h.subscriptions.size, 0)
})

t.test('the socket closes while access is checked: no reply, nothing held', async (t) => {
  const checked = new Deferred<boolean>()
  const h = harness({ authorize: async () => await checked.promise })
  const pending = subscribe(h, { entityType: 'Match', entityId: 'm1' })
  await turn()
  h.socket.isOpen = false
  checked.resolve(true)
  const reply = await pending
  t.equal(reply.sent, false, 'a closed socket is answered by no one')
  t.equal(h.subscriptions.size, 0)
  t.equal(h.fanout.store.get(h.fanout.channel('Match', 'm1')), undefined)
})

t.test('since: the reply, then the replay; live notifications held meanwhile follow, without those it carried', async (t) => {
  const h = harness()
  const read = new Deferred<ReplayedFrames | null>()
  h.script.replay = async () => await read.promise
  const channel = h.fanout.channel('Match', 'm1')
  const pending = subscribe(h, { entityType: 'Match', entityId: 'm1', since: at(1) })
  await turn()
  h.arrive(channel, at(3))
  t.same(h.socket.delivered, [], 'held while the replay is read')
  read.resolve(replayed(2, 3))
  const reply = await pending
  t.match(reply.answer.data, { subscriptionId: 'Match:m1', recovered: true })
  t.same(h.socket.replays, [{ channel, frames: replayed(2, 3) }])
  t.same(h.socket.delivered, [], 'the held notification the replay carried is dropped')
  h.arrive(channel, at(2))
  h.arrive(channel, at(4))
  h.arrive(channel, at(5))
  t.same(positions(h.socket.delivered), [at(4), at(5)], 'a late copy of a replayed change is dropped too; newer ones go')
  t.equal(h.services.counters.replayed, 2)
})

t.test('since, when the replay cannot be given: recovered false, and the held notifications all follow', async (t) => {
  for (const [name, replay] of [
    ['too old', async () => null],
    ['the read failed', async () => { throw new Error('connection reset') }]
  ] as const) {
    const h = harness()
    const channel = h.fanout.channel('Match', 'm1')
    h.script.replay = async () => { h.arrive(channel, at(9)); return await replay() }
    const reply = await subscribe(h, { entityType: 'Match', entityId: 'm1', since: at(1) })
    t.match(reply.answer.data, { recovered: false }, name)
    t.same(h.socket.replays, [], name)
    t.same(positions(h.socket.delivered), [at(9)], name)
    t.same(h.warnings, name === 'too old' ? [] : ['changefeed: replay failed; the client refetches'], name)
  }
})

t.test('since, a replay that holds another owner\'s document: not given; with snapshot, the state instead', async (t) => {
  const h = harness({ principal: user('u1') })
  h.script.owners.set('t1', 'u1')
  h.script.replay = async () => [{ frame: '{}', position: at(2), owner: 'u2' }, { frame: '{}', position: at(3), owner: 'u1' }]
  t.match((await subscribe(h, { entityType: 'Ticket', entityId: 't1', since: at(1) })).answer.data, { recovered: false })
  t.same(h.socket.replays, [])
  t.equal(h.services.counters.replayed, 0)
  h.script.snapshot = async () => statesOf({ t1: { payload: { owner: 'u1', seat: 4 }, version: '7' } })
  const again = await subscribe(h, { entityType: 'Ticket', entityId: 't1', since: at(1), snapshot: true })
  t.match(again.answer.data, { recovered: false, snapshot: { payload: { owner: 'u1', seat: 4 }, version: '7' } })
})

t.test('snapshot: the state; live changes the read saw are dropped, the others follow', async (t) => {
  const h = harness()
  const channel = h.fanout.channel('Match', 'm1')
  h.script.snapshot = async () => {
    h.arrive(channel, at(5), '9')
    h.arrive(channel, at(6), '12')
    return statesOf({ m1: { payload: { home: 1 }, version: '3' } }, 10)
  }
  const reply = await subscribe(h, { entityType: 'Match', entityId: 'm1', snapshot: true })
  t.same(reply.answer.data, { subscriptionId: 'Match:m1', entityType: 'Match', entityId: 'm1', snapshot: { payload: { home: 1 }, version: '3' } })
  t.same(positions(h.socket.delivered), [at(6)], 'the change of transaction 9 is in the state')
  const missing = await subscribe(h, { entityType: 'Match', entityId: 'm2', snapshot: true })
  t.same(missing.answer.data.snapshot, { payload: null, version: null }, 'an entity with no row: no document')
})

t.test('snapshot refused, impossible, failed, or another owner\'s: the subscription ends, one answer', async (t) => {
  const h = harness({ principal: user('u1') })
  h.script.owners.set('t1', 'u1')
  h.script.snapshot = async () => null
  t.match((await subscribe(h, { entityType: 'Ticket', entityId: 't1', snapshot: true })).answer.data, { code: 'rate_limited' })
  t.equal(h.subscriptions.size, 0)
  h.script.snapshot = async () => statesOf({ t1: { payload: { owner: 'u2' }, version: '8' } })
  t.match((await subscribe(h, { entityType: 'Ticket', entityId: 't1', snapshot: true })).answer.data, { code: 'forbidden', error: /owner/ })
  t.equal(h.subscriptions.size, 0, 'the document changed owner between the check and the read')
  h.script.snapshot = async () => { throw new Error('connection reset') }
  await t.rejects(subscribe(h, { entityType: 'Ticket', entityId: 't1', snapshot: true }), /connection reset/, 'the request queue answers it internal_error')
  t.equal(h.subscriptions.size, 0)
})

t.test('unsubscribed while the replay is read: the subscribe is not answered as subscribed', async (t) => {
  const h = harness()
  const read = new Deferred<ReplayedFrames | null>()
  h.script.replay = async () => await read.promise
  const pending = subscribe(h, { entityType: 'Match', entityId: 'm1', since: at(1) })
  await turn()
  await h.subscriptions.end(h.fanout.channel('Match', 'm1'))
  read.resolve(replayed(2))
  const reply = await pending
  t.same(reply.frames, [], 'no subscribed for a subscription that is gone')
  t.same(h.socket.replays, [])
})

t.test('watchers: counted once, however often asked; uncounted when it ends', async (t) => {
  const h = harness()
  const channel = h.fanout.channel('Match', 'm1')
  await subscribe(h, { entityType: 'Match', entityId: 'm1', watchers: true })
  await subscribe(h, { entityType: 'Match', entityId: 'm1', watchers: true })
  t.same(h.script.counted, [channel])
  await h.subscriptions.end(channel)
  t.same(h.script.uncounted, [channel])
})

t.test('a feed: its subscription names the request\'s tenant; refused past the limit of subscriptions', async (t) => {
  const h = harness({ principal: user('u1', { tenantId: 'red' }), limits: { maxSubscriptionsPerConnection: 2 } })
  t.match((await subscribe(h, { entityType: 'Squad', entityId: '*', tenantId: 'red' })).answer.data, { subscriptionId: 'Squad@red:*', tenantId: 'red' })
  t.match((await subscribe(h, { entityType: 'Squad', entityId: '*', tenantId: 'blue' })).answer.data, { code: 'forbidden', error: /another tenant/ })
  await subscribe(h, { entityType: 'Match', entityId: 'm1' })
  t.match((await subscribe(h, { entityType: 'Match', entityId: 'm2' })).answer.data, { code: 'too_many_subscriptions' })
  t.equal(h.subscriptions.size, 2)
})

t.test('starting now at the channel\'s position: read before it opens; what came between follows the reply, live after', async (t) => {
  const h = harness()
  const channel = h.fanout.channel('Match', 'm1')
  const asked: string[] = []
  h.services.head = async () => { t.equal(h.fanout.store.get(channel), undefined, 'read before the channel is watched'); return at(4) }
  const read = new Deferred<ReplayedFrames | null>()
  h.script.replay = async (_entity, _id, _tenant, since) => { asked.push(since); return await read.promise }
  const pending = subscribe(h, { entityType: 'Match', entityId: 'm1' })
  await turn()
  h.arrive(channel, at(5))
  h.arrive(channel, at(6))
  t.same(h.socket.delivered, [], 'held while what came between is read')
  read.resolve(replayed(5))
  const reply = await pending
  t.same(asked, [at(4)], 'the channel\'s messages after its position')
  t.same(reply.answer.data, { subscriptionId: 'Match:m1', entityType: 'Match', entityId: 'm1', position: at(4) }, 'the reply names where it starts')
  t.same(h.socket.replays, [{ channel, frames: replayed(5) }])
  t.same(positions(h.socket.delivered), [at(6)], 'the held one the replay had is dropped')
  t.same(h.services.counters, { replayed: 0, resumes: {} }, 'not a resume')
  // a subscribe again (held already), one with since, and one with a snapshot ask no position
  t.notOk('position' in (await subscribe(h, { entityType: 'Match', entityId: 'm1' })).answer.data)
  t.same(asked, [at(4)])

  for (const [name, head, replay, warning] of [
    ['no history', async () => null, async () => replayed(1), null],
    ['the position unreadable', async () => { throw new Error('broker gone') }, async () => replayed(1), /position could not be read/],
    ['the history lost meanwhile', async () => at(4), async () => null, null],
    ['the history unreadable', async () => at(4), async () => { throw new Error('broker gone') }, /history could not be read/],
    ['another owner\'s document between', async () => at(4), async () => [{ ...replayed(5)[0], owner: 'u2' }], null]
  ] as const) {
    const h = harness({ principal: user('u1') })
    const channel = h.fanout.channel('Match', 'm1')
    h.services.head = head
    h.script.replay = async () => { h.arrive(channel, at(7)); return await (replay as () => Promise<ReplayedFrames | null>)() }
    const reply = await subscribe(h, { entityType: 'Match', entityId: 'm1' })
    t.same(reply.answer.data, { subscriptionId: 'Match:m1', entityType: 'Match', entityId: 'm1' }, `${name}: starts now, no position`)
    t.same(h.socket.replays, [], name)
    if (name !== 'no history' && name !== 'the position unreadable') t.same(positions(h.socket.delivered), [at(7)], `${name}: what was held follows`)
    if (warning !== null) t.match(h.warnings, [warning], name)
  }
})
