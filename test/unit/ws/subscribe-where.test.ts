/**
 * The filtered feed's subscribe (lib/ws/subscribe-where.ts), on a recording socket with a scripted filter group:
 * what the request is before who makes it (a malformed filter is refused to anyone), the join's outcomes each with
 * its code (the filter limits, a snapshot that cannot be read, the read budget, a failure) and nothing left behind,
 * asked again (answered as is, or started over with a snapshot), an unsubscribe during the join (the seat is left),
 * a reply too large to buffer, and the filter's frames let through only after the reply.
 */
import t from 'tap'
import { subscribeWhere } from '../../../lib/ws/subscribe-where.js'
import { FilterLimitError } from '../../../lib/ws/filters.js'
import { SnapshotUnavailable } from '../../../lib/reads/snapshot.js'
import { Deferred, turn } from '../fixtures/fakes.js'
import { RecordingReply, harness, user } from '../fixtures/subscriptions.js'
import type { SubscribeOneRequest, Where } from '../../../lib/protocol/index.js'
import type { JoinRequest } from '../../../lib/ws/filters.js'
import { filterKey } from '../../../lib/ws/subscriptions.js'

const live: Where = { status: 'live' }

async function subscribe (h: ReturnType<typeof harness>, req: Omit<SubscribeOneRequest, 'where'>, where: Where = live): Promise<RecordingReply> {
  const reply = new RecordingReply()
  await subscribeWhere(h.subscriptions, reply, { ...req, where }, where)
  return reply
}

t.test('what is asked, before who asks: each refusal coded, nothing joined', async (t) => {
  const h = harness()
  let joins = 0
  h.script.join = async () => { joins++; return { entities: null, start: () => {} } }
  const code = async (req: Omit<SubscribeOneRequest, 'where'>, where?: Where): Promise<unknown> => (await subscribe(h, req, where)).answer.data.code
  t.equal(await code({ entityType: 'Nope', entityId: '*' }), 'unknown_entity_type')
  t.equal(await code({ entityType: 'Match', entityId: 'm1' }), 'bad_request', 'a filter goes with "*"')
  t.equal(await code({ entityType: 'Match', entityId: '*', since: '0000abcd:1' }), 'bad_request')
  t.equal(await code({ entityType: 'Match', entityId: '*', watchers: true }), 'bad_request')
  t.equal(await code({ entityType: 'Ping', entityId: '*' }), 'bad_request', 'a minimal type carries no document')
  t.equal(await code({ entityType: 'Match', entityId: '*' }, { n: Number('9007199254740993') }), 'bad_request', 'a number no JS number holds')
  t.equal(await code({ entityType: 'Ticket', entityId: '*' }, { n: 0.1234567890123456 }), 'bad_request', 'refused to anyone, before access')
  t.equal(await code({ entityType: 'Ticket', entityId: '*' }), 'unauthenticated', 'then access')
  t.equal(joins, 0)
  t.equal(h.subscriptions.size, 0)
})

t.test('subscribed with the canonical filter and the matching entities; its frames start after the reply', async (t) => {
  const h = harness()
  let request: JoinRequest | undefined
  const order: string[] = []
  h.script.join = async (_receiver, req) => {
    request = req
    return { entities: [{ entityId: 'm1', tenantId: null, snapshot: { payload: { status: 'live' }, version: '2' } }], start: () => order.push(`start after ${reply.frames.length} reply`) }
  }
  const reply = new RecordingReply()
  await subscribeWhere(h.subscriptions, reply, { entityType: 'Match', entityId: '*', snapshot: true, where: { status: ['live', 'live'] } }, { status: ['live', 'live'] })
  t.same(reply.answer.data, {
    subscriptionId: 'Match:*{"status":"live"}',
    entityType: 'Match',
    entityId: '*',
    where: { status: 'live' },
    snapshot: { entities: [{ entityId: 'm1', payload: { status: 'live' }, version: '2' }] }
  })
  t.same(order, ['start after 1 reply'])
  t.match(request, { feedChannel: h.fanout.channel('Match', '*'), subscriptionId: 'Match:*{"status":"live"}', snapshot: true, holder: h.socket })
  t.equal(h.subscriptions.size, 1)
})

t.test('the join refused or failed: coded, the seat not kept', async (t) => {
  for (const [outcome, expected] of [
    [async () => { throw new FilterLimitError('at most 2 filters per connection') }, { code: 'too_many_filters', error: /at most 2/ }],
    [async () => { throw new SnapshotUnavailable('the table has no data column') }, { code: 'bad_request', error: /no data column/ }],
    [null, { code: 'rate_limited' }],
    [async () => { throw new Error('connection reset') }, null]
  ] as const) {
    const h = harness()
    if (outcome === null) h.script.limitRead = async () => null
    else h.script.join = outcome
    const reply = await subscribe(h, { entityType: 'Match', entityId: '*' })
    if (expected === null) {
      t.equal(reply.failed, true, 'a failure: internal_error')
      t.match(h.warnings, [/could not start/])
    } else {
      t.match(reply.answer.data, expected)
    }
    t.equal(h.subscriptions.size, 0)
  }
})

t.test('asked again: answered as it is; with snapshot, the filter starts over', async (t) => {
  const h = harness()
  let joins = 0
  h.script.join = async () => { joins++; return { entities: [], start: () => {} } }
  await subscribe(h, { entityType: 'Match', entityId: '*' })
  t.match((await subscribe(h, { entityType: 'Match', entityId: '*' })).answer, { type: 'subscribed', data: { subscriptionId: 'Match:*{"status":"live"}' } })
  t.equal(joins, 1)
  t.match((await subscribe(h, { entityType: 'Match', entityId: '*', snapshot: true })).answer.data, { snapshot: { entities: [] } })
  t.equal(joins, 2)
  t.same(h.script.leaves, ['Match:*{"status":"live"}'], 'left, then joined again')
  t.equal(h.subscriptions.size, 1)
})

t.test('past the limit of subscriptions, or denied by the authorize rule: refused before joining', async (t) => {
  const h = harness({ limits: { maxSubscriptionsPerConnection: 1 }, authorize: ({ entityType }) => entityType !== 'Squad' })
  await subscribe(h, { entityType: 'Match', entityId: '*' })
  t.match((await subscribe(h, { entityType: 'Match', entityId: '*' }, { status: 'over' })).answer.data, { code: 'too_many_subscriptions' })
  await h.subscriptions.end(filterKey(h.fanout.channel('Match', '*'), 'Match:*{"status":"live"}'))
  t.match((await subscribe(h, { entityType: 'Squad', entityId: '*' })).answer.data, { code: 'forbidden', error: /authorize/ })
})

t.test('unsubscribed while joining: no reply, the seat it took is left', async (t) => {
  const h = harness({ principal: user('u1', { roles: ['Admin'] }) })
  const joined = new Deferred<{ entities: null, start: () => void }>()
  h.script.join = async () => await joined.promise
  const pending = subscribe(h, { entityType: 'Match', entityId: '*' })
  await turn()
  h.socket.isOpen = false
  h.subscriptions.endAll()
  let started = false
  joined.resolve({ entities: null, start: () => { started = true } })
  const reply = await pending
  t.same(reply.frames, [])
  t.equal(started, false)
  t.same(h.script.leaves, ['Match:*{"status":"live"}'])
})

t.test('a reply larger than half the buffer: refused, the filter left', async (t) => {
  const h = harness({ limits: { maxBufferedBytes: 4096 } })
  h.script.join = async () => ({ entities: [{ entityId: 'm1', tenantId: null, snapshot: { payload: { text: 'x'.repeat(3000) }, version: '1' } }], start: () => {} })
  t.match((await subscribe(h, { entityType: 'Match', entityId: '*', snapshot: true })).answer.data, { code: 'bad_request', error: /too large/ })
  t.equal(h.subscriptions.size, 0)
  t.same(h.script.leaves, ['Match:*{"status":"live"}'])
})
