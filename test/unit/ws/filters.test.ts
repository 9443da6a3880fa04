/**
 * Filtered feeds without services: the groups, their index, membership from a read and the changes after it, and
 * snapshot visibility. (test/integration/ws/live-queries.test.ts runs them on PostgreSQL and Redis.)
 */
import t from 'tap'
import { Filters, FilterLimitError } from '../../../lib/ws/filters.js'
import { PreparedFrame } from '../../../lib/ws/prepared.js'
import { Visibility, type SnapshotEntity, type SnapshotReader } from '../../../lib/reads/snapshot.js'
import type { Fanout, FrameMeta, Receiver } from '../../../lib/ws/fanout.js'
import type { EntityType } from '../../../lib/entities.js'
import {
  DocumentKeys, RequestData, conditionsOf, encodeNotification, filterIdOf, matches, scalarKey, subscriptionIdOf, whereKey, whereProblem,
  whereRefusal, type Where
} from '../../../lib/protocol/index.js'
import { until } from '../../helpers/wait.js'

const Player: EntityType = { name: 'Player', databases: ['main'], schema: 'public', table: 'mt_doc_player', access: 'public', payload: 'full', feed: true, declared: true, tenancy: 'none' }
const FEED = 'cf:Player:*'

/** A fanout that hands out the channel's one watcher, and a reader whose reads the test answers. */
const LIMITS = { maxFiltersPerType: 100, maxFilterMatches: 1000, maxFiltersPerConnection: 100, maxFiltersPerIp: 100 }

function harness (limits: Partial<typeof LIMITS> = {}): {
  filters: Filters
  channel: () => Receiver | undefined
  unwatched: string[]
  reads: Array<{ documents: boolean, answer: (entities: SnapshotEntity[], snapshot?: string) => void, fail: (err: Error) => void }>
} {
  const watchers = new Map<string, Receiver>()
  const unwatched: string[] = []
  const fanout = {
    watch: async (watcher: Receiver, channel: string) => { watchers.set(channel, watcher) },
    unwatch: async (_watcher: Receiver, channel: string) => { watchers.delete(channel); unwatched.push(channel) }
  } as unknown as Fanout
  const reads: ReturnType<typeof harness>['reads'] = []
  const reader = {
    matching: async (_e: EntityType, _t: string | null, _c: unknown, documents: boolean) => await new Promise((resolve, reject) => {
      reads.push({ documents, answer: (entities, snapshot = '100:100:') => resolve({ entities, visibility: new Visibility(snapshot) }), fail: reject })
    })
  } as unknown as SnapshotReader
  return { filters: new Filters(fanout, reader, { ...LIMITS, ...limits }), channel: () => watchers.get(FEED), unwatched, reads }
}

let sockets = 0
class Socket implements Receiver {
  readonly id = ++sockets
  constructor (readonly ip = '192.0.2.1') {}
  readonly frames: Array<{ entityId: string, changeType: string, subscriptionId: string }> = []
  deliver (frame: string): boolean {
    this.frames.push(JSON.parse(frame).data)
    return true
  }
}

let txid = 100
/** A change of a player as the feed channel carries it (a transaction after the reads' snapshot unless told). */
function change (to: Receiver | undefined, entityId: string, document: object | null, at = String(++txid)): void {
  const changeType = document === null ? 'deleted' : 'updated'
  const frame = encodeNotification({ entityType: 'Player', entityId, changeType, payloadType: 'full', ts: 0, payload: document })
  const meta: FrameMeta = { channel: FEED, position: 'n:' + at, payloadType: 'full', tenantId: null, key: FEED, prepared: new PreparedFrame(frame), txid: at }
  to?.deliver(frame, meta)
}
const idOf = (where: Where): string => subscriptionIdOf('Player', filterIdOf(where))
const join = (h: ReturnType<typeof harness>, socket: Socket, where: Where, snapshot = false): ReturnType<Filters['join']> =>
  h.filters.join(socket, { entity: Player, tenantId: null, feedChannel: FEED, subscriptionId: idOf(where), conditions: conditionsOf(where), snapshot, holder: socket })
const turn = async (): Promise<void> => await new Promise((resolve) => setImmediate(resolve))

t.test('conditions: canonical form, and matching by JSON equality on paths', async (t) => {
  t.equal(whereKey({ b: ['y', 'x', 'x'], a: 1 }), '{"a":1,"b":["x","y"]}')
  t.equal(whereKey({ a: [1] }), whereKey({ a: 1 }), 'a list of one is the value')
  const c = conditionsOf({ 'team.id': 'reds', caps: [10, 11], active: true, note: null })
  t.ok(matches({ team: { id: 'reds' }, caps: 10, active: true, note: null }, c))
  t.notOk(matches({ team: { id: 'reds' }, caps: '10', active: true, note: null }, c), 'the string "10" is not 10')
  t.notOk(matches({ team: { id: 'reds' }, caps: 10, active: true }, c), 'a missing key is not null')
  t.notOk(matches({ team: ['reds'], caps: 10, active: true, note: null }, c), 'a path does not go into arrays')
  t.notOk(matches(null, c))
})

t.test('numbers in where: only those a JS number holds exactly, so the read (SQL numeric) and the matcher agree', async (t) => {
  for (const value of [0, -0, 1, -42, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 0.1, 2.5, -1e-7, 123456789.012345, 5e-324]) {
    t.equal(whereProblem({ n: value }), null, `${value} is held exactly`)
  }
  // 9007199254740993 parses as 9007199254740992: the read would compare the one, the matcher the other
  for (const text of ['9007199254740993', '9007199254740992', '-9007199254740992', '1e21', '1.5e300', '9007199254740993.5']) {
    const value = JSON.parse(text) as number
    t.match(whereProblem({ id: value }), /"id".*string/, `${text}: refused, naming the path and suggesting a string`)
    t.match(whereProblem({ ok: 1, id: [1, value] }), /"id"/, `${text} in a list`)
  }
  // more significant digits than every double holds: the value compared may not be the one written
  t.match(whereProblem({ x: 0.30000000000000004 }), /"x"/)
  t.match(whereProblem({ x: 123456789.0123456 }), /"x"/)
  t.equal(whereProblem({ s: '9007199254740993', b: true, z: null }), null, 'strings, booleans and null are exact')
})

t.test('visibility: what a snapshot saw', async (t) => {
  const v = new Visibility('100:105:101,103')
  t.ok(v.saw('99'))
  t.ok(v.saw('102'), 'committed between xmin and xmax')
  t.notOk(v.saw('101'), 'in progress')
  t.notOk(v.saw('105'), 'from xmax on')
  t.notOk(v.saw(undefined), 'a host publish has no transaction')
  t.notOk(v.saw('not-a-number'))
})

t.test('a group: members from its read, then entered, updated, left, deleted; frames wait for start()', async (t) => {
  const h = harness()
  const socket = new Socket()
  const joining = join(h, socket, { teamId: 'reds' }, true)
  await turn()
  // while the read runs: a change it saw (skipped)
  change(h.channel(), 'p-1', { teamId: 'reds' }, '99')
  h.reads[0].answer([{ entityId: 'p-1', tenantId: null, snapshot: { payload: { teamId: 'reds' } } }])
  const { entities, start } = await joining
  t.same(entities?.map((e) => e.entityId), ['p-1'])
  // after it: a late change it saw (still skipped), then one it did not see
  change(h.channel(), 'p-1', { teamId: 'reds', caps: 1 }, '98')
  change(h.channel(), 'p-2', { teamId: 'reds' }, '150')
  t.same(socket.frames, [], 'nothing before the reply')
  start()
  t.same(socket.frames.map((f) => [f.entityId, f.changeType]), [['p-2', 'entered']])
  change(h.channel(), 'p-1', { teamId: 'reds', caps: 2 })
  change(h.channel(), 'p-2', { teamId: 'blues' })
  change(h.channel(), 'p-1', null)
  change(h.channel(), 'p-9', { teamId: 'greens' })
  t.same(socket.frames.map((f) => [f.entityId, f.changeType, f.subscriptionId]), [
    ['p-2', 'entered', idOf({ teamId: 'reds' })],
    ['p-1', 'updated', idOf({ teamId: 'reds' })],
    ['p-2', 'left', idOf({ teamId: 'reds' })],
    ['p-1', 'deleted', idOf({ teamId: 'reds' })]
  ])
})

t.test('sockets with the same filter share a group; a later joiner with a snapshot reads its own', async (t) => {
  const h = harness()
  const [a, b] = [new Socket(), new Socket()]
  const first = join(h, a, { teamId: 'reds' })
  await turn()
  h.reads[0].answer([])
  ;(await first).start()
  t.equal(h.reads[0].documents, false, 'without a snapshot only ids are read')
  const second = join(h, b, { teamId: ['reds'] }, true)
  await turn()
  t.equal(h.reads.length, 2)
  // after the group's read (snapshot 100), before the second socket's (140)
  change(h.channel(), 'p-1', { teamId: 'reds' }, '120')
  change(h.channel(), 'p-2', { teamId: 'reds' }, '150')
  h.reads[1].answer([{ entityId: 'p-1', tenantId: null, snapshot: { payload: { teamId: 'reds' } } }], '140:140:')
  ;(await second).start()
  t.same(a.frames.map((f) => f.entityId), ['p-1', 'p-2'], 'the first socket gets both')
  t.same(b.frames.map((f) => f.entityId), ['p-2'], 'the second, only what its snapshot did not have')
  t.equal(h.filters.size, 1, 'one group')
})

t.test('the index: a change visits the groups it may concern, not all of them', async (t) => {
  const h = harness({ maxFiltersPerType: 20_000, maxFiltersPerIp: 20_000 })
  const sockets: Socket[] = []
  for (let i = 0; i < 10_000; i++) {
    const socket = new Socket()
    sockets.push(socket)
    const joined = join(h, socket, { teamId: `team-${i}` })
    await turn()
    h.reads[i].answer([])
    ;(await joined).start()
  }
  change(h.channel(), 'p-1', { teamId: 'team-42' })
  change(h.channel(), 'p-1', { teamId: 'team-43' })
  t.same(sockets[42].frames.map((f) => f.changeType), ['entered', 'left'])
  t.same(sockets[43].frames.map((f) => f.changeType), ['entered'])
  t.equal(sockets.reduce((n, s) => n + s.frames.length, 0), 3, 'no other group heard of it')
})

t.test('limits, failures and leaving', async (t) => {
  const h = harness({ maxFiltersPerType: 1, maxFilterMatches: 10 })
  const [a, b] = [new Socket(), new Socket()]
  const joined = join(h, a, { teamId: 'reds' })
  await turn()
  h.reads[0].answer([])
  ;(await joined).start()
  await t.rejects(join(h, b, { teamId: 'blues' }), { constructor: FilterLimitError, message: /maxFiltersPerType/ }, 'a second filter of the type is one too many')
  const failing = join(h, b, { teamId: 'reds' }, true)
  await turn()
  h.reads[1].fail(new Error('database down'))
  await t.rejects(failing, /database down/)
  t.equal(h.filters.size, 1, 'the group stays for its other socket')
  await h.filters.leave(a, FEED, idOf({ teamId: 'reds' }), 'Player')
  t.same(h.unwatched, [FEED], 'the last group out unwatches the feed channel')
  const creatorFails = join(h, a, { teamId: 'blues' })
  await turn()
  h.reads[2].fail(new Error('read failed'))
  await t.rejects(creatorFails, /read failed/)
  t.equal(h.filters.size, 0, 'a group whose read failed is gone')
  t.same(h.unwatched, [FEED, FEED])
})

t.test('shares: seats per connection, different filters per address; given back on leaving, and when a group fails', async (t) => {
  const h = harness({ maxFiltersPerConnection: 2, maxFiltersPerIp: 3 })
  const joined = async (socket: Socket, where: Where): Promise<void> => {
    const joining = join(h, socket, where)
    await turn()
    h.reads.at(-1)?.answer([])
    ;(await joining).start()
  }
  const [a, b, c] = [new Socket(), new Socket(), new Socket()]
  await joined(a, { teamId: 'a1' })
  await joined(a, { teamId: 'a2' })
  await t.rejects(join(h, a, { teamId: 'a3' }), { constructor: FilterLimitError, message: /maxFiltersPerConnection/ }, 'a third filter of one connection')
  await joined(b, { teamId: 'b1' })
  await t.rejects(join(h, b, { teamId: 'b2' }), { constructor: FilterLimitError, message: /maxFiltersPerIp/ }, 'a fourth different filter of one address')
  await joined(c, { teamId: 'a1' })
  t.equal(h.filters.size, 3, 'a filter the address holds already is shared, and counts once')
  await joined(new Socket('192.0.2.2'), { teamId: 'x1' })
  t.equal(h.filters.size, 4, 'another address still gets filters')

  await h.filters.leave(a, FEED, idOf({ teamId: 'a2' }), 'Player')
  await joined(b, { teamId: 'b2' })
  t.pass('a seat given back is another\'s to take')
  await h.filters.leave(a, FEED, idOf({ teamId: 'a1' }), 'Player')
  const d = new Socket()
  await t.rejects(join(h, d, { teamId: 'd1' }), /maxFiltersPerIp/, 'a1 is still held by the address (c)')
  await h.filters.leave(c, FEED, idOf({ teamId: 'a1' }), 'Player')

  // a first read that fails is every joiner's failure: every seat of the group is given back
  const creator = join(h, a, { teamId: 'doomed' })
  await turn()
  const joiner = join(h, c, { teamId: 'doomed' })
  await turn()
  h.reads.at(-1)?.fail(new Error('read failed'))
  await t.rejects(creator, /read failed/)
  await t.rejects(joiner, /read failed/)
  await joined(a, { teamId: 'a4' })
  t.equal(h.filters.size, 4, 'b1, b2, a4 and x1: nothing of the failed group is held')
  await t.rejects(join(h, d, { teamId: 'd1' }), /maxFiltersPerIp/, 'and the address is at its share again')
})

t.test('where limits: what one filter may cost a change', async (t) => {
  const ok = (where: unknown): boolean => RequestData.subscribe.Check({ entityType: 'Player', entityId: '*', where })
  t.ok(ok({ 'a.b.c.d.e': 1, ['p'.repeat(128)]: 'x'.repeat(512) }), 'five names deep, 128 characters, a string of 512')
  t.notOk(ok({ 'a.b.c.d.e.f': 1 }), 'six names deep')
  t.notOk(ok({ ['p'.repeat(129)]: 1 }), 'a path of 129 characters')
  t.notOk(ok({ s: 'x'.repeat(513) }), 'a string of 513')
  t.notOk(ok({ s: Array.from({ length: 101 }, (_, i) => i) }), '101 values')
  t.notOk(ok(Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, 1]))), 'nine conditions')
  t.match(whereRefusal({ entityType: 'Player', entityId: '*', where: { 'a.b.c.d.e.f': 1 } }), /5 names/, 'the refusal names the limits')
  t.equal(whereRefusal({ entityType: 'Player', entityId: '*', where: { a: 1 } }), null)
  t.equal(scalarKey('x'.repeat(513)), undefined, 'a document string longer than any condition\'s is never copied to be compared')
  const document = { team: { id: 'reds' }, bio: 'x'.repeat(100_000) }
  const keys = new DocumentKeys(document)
  t.equal(keys.at('team.id', ['team', 'id']), '"reds"')
  ;(document.team as { id: string }).id = 'blues'
  t.equal(keys.at('team.id', ['team', 'id']), '"reds"', 'a path is read once per change')
  t.notOk(matches(document, conditionsOf({ bio: 'x' }), keys))
})

t.test('after a gap a group reads its members again; changes meanwhile wait for the read', async (t) => {
  const h = harness()
  const socket = new Socket()
  const joined = join(h, socket, { teamId: 'reds' })
  await turn()
  h.reads[0].answer([{ entityId: 'p-1', tenantId: null, snapshot: {} }])
  ;(await joined).start()
  h.channel()?.deliver('{"type":"resync","data":{"reason":"listener_gap","entityType":"Player","entityId":"*"}}')
  t.same(socket.frames.length, 1, 'the watchers hear of the gap')
  t.equal(h.reads.length, 2, 'the group reads its members again')
  change(h.channel(), 'p-2', { teamId: 'reds' }, '300')
  h.reads[1].fail(new Error('database blip'))
  await turn()
  // the read is tried again a moment later
  t.ok(await until(() => h.reads.length === 3), 'the read is tried again')
  change(h.channel(), 'p-3', { teamId: 'reds' }, '401')
  // the members now: p-1 left during the gap, p-3's change came after the read's snapshot
  h.reads[2].answer([{ entityId: 'p-2', tenantId: null, snapshot: {} }], '400:400:')
  await turn()
  change(h.channel(), 'p-1', { teamId: 'blues' })
  change(h.channel(), 'p-2', { teamId: 'reds', caps: 1 })
  t.same(socket.frames.slice(1).map((f) => [f.entityId, f.changeType]), [['p-3', 'entered'], ['p-2', 'updated']], 'p-1 was no member any more; p-2 is')
})
