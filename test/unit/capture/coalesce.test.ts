/**
 * Capture without a database, on a fake clock. Coalescing: one change per entity per transaction with the net change
 * type, a group ended by the next transaction or by setImmediate, tenants in the entity key, appended events and
 * archived streams, positions, and which trigger payloads count as row changes. Positions: outbox positions
 * formatted, parsed and ordered within their epoch; any other position only tells changes apart.
 */
import t from 'tap'
import { TransactionCoalescer, coalesceRows, isRowChange, netChange, type Change, type RowChange } from '../../../lib/capture/coalesce.js'
import { formatPosition, isAfter, parsePosition } from '../../../lib/protocol/wire.js'
import { fakeClock } from '../fixtures/fakes.js'

const base = { s: 'public', t: 'mt_doc_team', ts: 1000 } as const

function row (id: string, op: RowChange['op'], x: number | string, extra: Partial<RowChange> = {}): RowChange {
  return { ...base, id, op, x, ...extra }
}

/** A coalescer of database `main` whose emitted changes the test reads. */
function coalescer (tenant: string | null = null): { push: (...rows: RowChange[]) => void, emitted: Change[], flush: () => void } {
  const emitted: Change[] = []
  const c = new TransactionCoalescer('main', tenant, (change) => emitted.push(change))
  return { push: (...rows) => { for (const r of rows) c.push(r) }, emitted, flush: () => c.flush() }
}

const summary = (changes: Change[]): string[] => changes.map((c) => `${c.tenantId ?? '-'}/${c.id} ${c.changeType} ${c.position}`)

t.test('netChange: the row before the first operation and after the last one decide', async (t) => {
  const table: Array<[RowChange['op'], RowChange['op'], string | null]> = [
    ['I', 'I', 'created'], ['I', 'U', 'created'], ['I', 'D', null],
    ['U', 'I', 'updated'], ['U', 'U', 'updated'], ['U', 'D', 'deleted'],
    ['D', 'I', 'updated'], ['D', 'U', 'updated'], ['D', 'D', 'deleted']
  ]
  for (const [first, last, expected] of table) {
    t.equal(netChange(first as 'I' | 'U' | 'D', last as 'I' | 'U' | 'D'), expected, `${first} … ${last}`)
  }
})

t.test('TransactionCoalescer: one change per entity per transaction, with the net change type and the last row\'s fields', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(
    row('1', 'I', 7, { v: '1', d: { n: 1 }, ts: 1 }),
    row('2', 'U', 7),
    row('1', 'U', 7, { v: '2', d: { n: 2 }, ts: 2, o: 'web' }),
    row('3', 'U', 7),
    row('1', 'U', 7, { v: '3', d: { n: 3 }, ts: 3, o: 'api' }),
    row('2', 'D', 7, { d: { gone: true } }),
    row('4', 'I', 7),
    row('4', 'D', 7),
    row('5', 'D', 7),
    row('5', 'I', 7, { d: { again: true } })
  )
  flush()
  t.same(summary(emitted), ['-/1 created n:7', '-/2 deleted n:7', '-/3 updated n:7', '-/5 updated n:7'],
    'insert+updates → created, update+delete → deleted, insert+delete → nothing; in first-seen order')
  const [created, deleted, updated, recreated] = emitted
  t.match(created, { database: 'main', schema: 'public', table: 'mt_doc_team', txid: '7', version: '3', ts: 3, origin: 'api', doc: { n: 3 }, hasDoc: true, tenantId: null })
  t.equal(created.streamType, undefined, 'document changes have no stream type')
  t.equal(deleted.hasDoc, false, 'a deleted row carries no document, even if the trigger sent one')
  t.equal(updated.hasDoc, false, 'no inlined document: hasDoc false')
  t.equal(updated.origin, null)
  t.equal(updated.version, null)
  t.same(recreated.doc, { again: true })
})

t.test('TransactionCoalescer: a group ends when the transaction id changes: the earlier one is emitted at once', async (t) => {
  fakeClock(t)
  const { push, emitted } = coalescer()
  push(row('1', 'I', 7), row('1', 'U', 7))
  t.same(emitted, [], 'nothing before the group ends')
  push(row('1', 'U', 8))
  t.same(summary(emitted), ['-/1 created n:7'], 'the next transaction flushed the first, synchronously')
  push(row('1', 'D', '8'))
  t.equal(emitted.length, 1, 'the same txid as a string is the same transaction')
})

t.test('TransactionCoalescer: a group ends when the read that brought it is done (setImmediate)', async (t) => {
  const clock = fakeClock(t)
  const { push, emitted } = coalescer()
  push(row('1', 'U', 7), row('2', 'U', 7))
  t.same(emitted, [])
  clock.advance(0)
  t.same(summary(emitted), ['-/1 updated n:7', '-/2 updated n:7'])
  push(row('1', 'U', 7))
  clock.advance(0)
  t.same(summary(emitted).slice(2), ['-/1 updated n:7'],
    'the same transaction continuing in a later read comes out as a second, still truthful, group')
  clock.advance(0)
  t.equal(emitted.length, 3, 'nothing is emitted twice')
})

t.test('TransactionCoalescer: the txid boundary and the immediate do not emit a group twice', async (t) => {
  const clock = fakeClock(t)
  const { push, emitted } = coalescer()
  push(row('1', 'U', 7), row('2', 'U', 8), row('3', 'U', 9))
  t.same(summary(emitted), ['-/1 updated n:7', '-/2 updated n:8'])
  clock.advance(0)
  t.same(summary(emitted), ['-/1 updated n:7', '-/2 updated n:8', '-/3 updated n:9'])
})

t.test('TransactionCoalescer: tenants are part of the entity key; rows without one get the database\'s tenant', async (t) => {
  const conjoined = coalescer()
  conjoined.push(
    row('1', 'U', 7, { tn: 'red' }),
    row('1', 'U', 7, { tn: 'blue' }),
    row('1', 'D', 7, { tn: 'red' }),
    row('1', 'U', 7, { tn: null })
  )
  conjoined.flush()
  t.same(summary(conjoined.emitted), ['red/1 deleted n:7', 'blue/1 updated n:7', '-/1 updated n:7'],
    'the same id in two tenants is two changes')

  const perTenant = coalescer('green')
  perTenant.push(row('1', 'U', 7), row('2', 'U', 7, { tn: null }), row('3', 'U', 7, { tn: 'red' }))
  perTenant.flush()
  t.same(summary(perTenant.emitted), ['green/1 updated n:7', 'green/2 updated n:7', 'red/3 updated n:7'],
    'database per tenant: the database\'s tenant, unless the row names its own')
})

t.test('TransactionCoalescer: the same id in another table or schema is another entity', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(row('1', 'U', 7), row('1', 'U', 7, { t: 'mt_doc_player' }), row('1', 'U', 7, { s: 'other' }))
  flush()
  t.same(emitted.map((c) => `${c.schema}.${c.table}`), ['public.mt_doc_team', 'public.mt_doc_player', 'other.mt_doc_team'])
})

t.test('TransactionCoalescer: appended events: one change per stream, events in version order, version the highest', async (t) => {
  const { push, emitted, flush } = coalescer()
  const event = (version: number, data?: unknown): RowChange['e'] => ({ type: 'scored', version, ...(data === undefined ? {} : { data }) })
  push(
    row('s1', 'A', 7, { t: 'mt_events', st: 'Game', e: event(3), ts: 30 }),
    row('s1', 'A', 7, { t: 'mt_events', st: 'Game', e: event(1, { points: 3 }), ts: 10 }),
    row('s2', 'A', 7, { t: 'mt_events', st: null, e: event(9) }),
    row('s1', 'A', 7, { t: 'mt_events', st: 'Game', e: event(2), ts: 20, p: '0000abcd:42' })
  )
  flush()
  t.equal(emitted.length, 2)
  const [game, untyped] = emitted
  t.match(game, { id: 's1', changeType: 'appended', version: '3', streamType: 'Game', ts: 20, position: '0000abcd:42', hasDoc: false })
  t.same(game.events, [event(1, { points: 3 }), event(2), event(3)], 'sorted by version, data kept')
  t.equal(game.doc, undefined)
  t.match(untyped, { id: 's2', version: '9', streamType: null, position: 'n:7:events' })
})

t.test('TransactionCoalescer: a document and its stream\'s events in one transaction (an inline projection): two positions', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(row('m-1', 'U', 7, { t: 'mt_doc_game' }), row('m-1', 'A', 7, { t: 'mt_events', st: 'Game', e: { type: 'scored', version: 4 } }))
  flush()
  t.same(emitted.map((c) => [c.changeType, c.position]), [['updated', 'n:7'], ['appended', 'n:7:events']], 'a client that drops repeated positions keeps both')
})

t.test('TransactionCoalescer: an archived stream: archived, with its stream type', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(row('s1', 'R', 7, { t: 'mt_streams', st: 'Game', v: '4' }), row('s2', 'R', 7, { t: 'mt_streams' }))
  flush()
  t.same(emitted.map((c) => [c.changeType, c.streamType, c.version]), [['archived', 'Game', '4'], ['archived', null, null]])
})

t.test('TransactionCoalescer: positions: the last row\'s outbox position, else n:<txid>', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(row('1', 'I', 7, { p: '0000abcd:1' }), row('1', 'U', 7, { p: '0000abcd:5' }), row('2', 'U', 7, { p: '0000abcd:3' }), row('3', 'U', 7))
  flush()
  t.same(emitted.map((c) => c.position), ['0000abcd:5', '0000abcd:3', 'n:7'])
})

t.test('TransactionCoalescer: flush without rows emits nothing', async (t) => {
  const { emitted, flush } = coalescer()
  flush()
  flush()
  t.same(emitted, [])
})

t.test('coalesceRows: synchronous, and never merges across transactions', async (t) => {
  const changes = coalesceRows('main', 'green', [row('1', 'I', 1), row('1', 'U', 1), row('1', 'U', 2), row('1', 'D', 3), row('2', 'I', 4), row('2', 'D', 4)])
  t.same(summary(changes), ['green/1 created n:1', 'green/1 updated n:2', 'green/1 deleted n:3'])
  t.same(coalesceRows('main', null, []), [])
})

t.test('isRowChange accepts what the trigger sends and nothing else', async (t) => {
  const good: unknown[] = [
    row('1', 'I', 7),
    row('1', 'U', '7', { v: null, o: null, tn: null, d: null }),
    row('1', 'D', 7, { tn: 'red' }),
    row('1', 'A', 7, { e: { type: 'x', version: 1 } }),
    row('1', 'R', 7),
    { ...row('1', 'U', 7), unknown: 'fields are ignored' }
  ]
  for (const value of good) t.ok(isRowChange(value), JSON.stringify(value))
  const valid = row('1', 'U', 7)
  const bad: Record<string, unknown> = {
    null: null,
    string: 'U',
    number: 1,
    'no schema': { ...valid, s: undefined },
    'table not a string': { ...valid, t: 1 },
    'id not a string': { ...valid, id: 1 },
    'unknown op': { ...valid, op: 'X' },
    'lowercase op': { ...valid, op: 'u' },
    'txid a boolean': { ...valid, x: true },
    'no txid': { ...valid, x: undefined },
    'tenant a number': { ...valid, tn: 1 },
    'ts a string': { ...valid, ts: '1000' },
    'append without an event': { ...valid, op: 'A' },
    'append with a null event': { ...valid, op: 'A', e: null }
  }
  for (const [what, value] of Object.entries(bad)) t.notOk(isRowChange(value), what)
})

t.test('formatPosition joins epoch and number', async (t) => {
  t.equal(formatPosition('0000abcd', 5), '0000abcd:5')
  t.equal(formatPosition('0000abcd', '123'), '0000abcd:123')
  t.same(parsePosition(formatPosition('deadbeef', 999_999_999_999_999)), { epoch: 'deadbeef', pos: 999_999_999_999_999 })
})

t.test('parsePosition reads outbox positions only', async (t) => {
  t.same(parsePosition('0000abcd:0'), { epoch: '0000abcd', pos: 0 })
  t.same(parsePosition('0123cdef:007'), { epoch: '0123cdef', pos: 7 })
  const others = [
    'n:123', 'p:instance-1:5', '', ':5', '0000abcd:', '0000abcd', '0000ABCD:5', '000abcd:5', '00000abcd:5',
    '0000abcg:5', '0000abcd:-1', '0000abcd:1.5', '0000abcd:1e3', ' 0000abcd:5', '0000abcd:5 ', '0000abcd:5\n',
    '0000abcd:1234567890123456', '0000abcd:5:6'
  ]
  for (const position of others) t.equal(parsePosition(position), null, JSON.stringify(position))
  t.same(parsePosition('0000abcd:123456789012345'), { epoch: '0000abcd', pos: 123456789012345 }, 'fifteen digits are fine')
})

t.test('isAfter is false only for an outbox position of the same epoch that is not later', async (t) => {
  t.equal(isAfter('0000abcd:6', '0000abcd:5'), true)
  t.equal(isAfter('0000abcd:5', '0000abcd:5'), false, 'the same position')
  t.equal(isAfter('0000abcd:4', '0000abcd:5'), false)
  t.equal(isAfter('0000abcd:10', '0000abcd:9'), true, 'compared as numbers, not strings')
  t.equal(isAfter('0000abcd:1', '1111abcd:5'), true, 'another epoch (the outbox was reset): cannot tell, so after')
  t.equal(isAfter(null, '0000abcd:5'), true)
  t.equal(isAfter('0000abcd:1', undefined), true)
  t.equal(isAfter('n:1', '0000abcd:5'), true, 'notify-mode positions are not ordered')
  t.equal(isAfter('n:1', 'n:2'), true)
  t.equal(isAfter('0000abcd:1', 'p:instance-1:5'), true)
})

t.test('a TRUNCATE: one change of the table per relation truncated, in its place among the transaction\'s changes', async (t) => {
  const { push, emitted, flush } = coalescer()
  push(
    row('t-1', 'U', 9),
    row('', 'T', 9, { ps: 'public', pt: 'mt_doc_team' }),
    row('', 'T', 9, { ps: 'public', pt: 'mt_doc_team_red' }),
    row('', 'T', 9, { ps: 'public', pt: 'mt_doc_team_red' }),
    row('t-2', 'I', 9)
  )
  flush()
  t.same(emitted.map((c) => [c.id, c.changeType, c.truncated]), [
    ['t-1', 'updated', undefined],
    ['', 'deleted', { schema: 'public', table: 'mt_doc_team' }],
    ['', 'deleted', { schema: 'public', table: 'mt_doc_team_red' }],
    ['t-2', 'created', undefined]
  ])
  t.equal(emitted[1].hasDoc, false)
  t.ok(isRowChange(row('', 'T', 1, { ps: 'public', pt: 'x' })), 'a TRUNCATE is a change the listener takes')
})
