/**
 * Delivery, on a fake clock. To one socket: a feed subscription goes frame by frame under the rate, is batched past
 * it and flushed after the interval, early at 500 frames or at maxBatchBytes, a lone held frame unwrapped; the resume
 * buffer holds live notifications while a replay is read, hands them back in order, then drops those the replay
 * carried until a newer one comes; limits: the token bucket, connections counted per key, the `since` replay limiter
 * (a bucket per IP address, a concurrency cap, a bounded queue, a freed slot handed on). Across instances: owed
 * resyncs, against a bus that refuses publishes for a while, are published once it takes them, retried every 250 ms,
 * one per channel, and past 10,000 owed entities become one database-wide gap message.
 */
import t from 'tap'
import { FeedBatcher } from '../../../lib/ws/feed.js'
import { PreparedFrame } from '../../../lib/ws/prepared.js'
import { ConnectionSet } from '../../../lib/ws/route.js'
import type { Connection } from '../../../lib/ws/connection.js'
import type { WatcherCounts } from '../../../lib/ws/watchers.js'
import { DeferredFrames, replayedUpTo } from '../../../lib/ws/deferred.js'
import { ConnectionCounter, ReplayLimiter, TokenBucket } from '../../../lib/ws/limits.js'
import type { FrameMeta, Receiver } from '../../../lib/ws/fanout.js'
import { OwedResyncs, gapChannelOf } from '../../../lib/route/resync.js'
import { unwrap } from '../../../lib/route/envelope.js'
import { Deferred, ScriptedBus, fakeClock, recordingLogger, stateOf, turn, type TestContext } from '../fixtures/fakes.js'
import type { Presence } from '../../../lib/presence/presence.js'

/** the socket behind the feed */
class RecordingSocket implements Receiver {
  readonly frames: string[] = []
  accepts = true

  deliver (frame: string): boolean {
    this.frames.push(frame)
    return this.accepts
  }
}

const frame = (i: number): string => JSON.stringify({ type: 'notification', data: { entityType: 'Team', entityId: String(i) } })
const batchOf = (written: string): unknown[] => (JSON.parse(written) as { type: string, data: unknown[] }).data

function feed (t: TestContext, rate = 10, intervalMs = 500, maxBatchBytes = 1 << 20): { clock: ReturnType<typeof fakeClock>, socket: RecordingSocket, watcher: FeedBatcher } {
  const clock = fakeClock(t)
  const socket = new RecordingSocket()
  const watcher = new FeedBatcher(socket, null, rate, intervalMs, maxBatchBytes)
  t.teardown(() => watcher.close())
  return { clock, socket, watcher }
}

t.test('FeedBatcher: under the rate, each frame goes out at once, unchanged', async (t) => {
  const { clock, socket, watcher } = feed(t)
  for (let i = 0; i < 10; i++) t.equal(watcher.deliver(frame(i)), true)
  t.same(socket.frames, Array.from({ length: 10 }, (_, i) => frame(i)), 'a burst of the rate')
  clock.advance(1000)
  for (let i = 10; i < 20; i++) watcher.deliver(frame(i))
  t.equal(socket.frames.length, 20, 'a second later, the bucket is full again')
})

t.test('FeedBatcher: a feed\'s notification names its subscription, one frame made per change for the feed\'s sockets', async (t) => {
  fakeClock(t)
  const shared: Array<PreparedFrame | undefined> = []
  const socket = (): RecordingSocket => {
    const s = new RecordingSocket()
    const deliver = s.deliver.bind(s)
    s.deliver = (frame: string, _meta?: FrameMeta, prepared?: PreparedFrame) => { shared.push(prepared); return deliver(frame) }
    return s
  }
  const [a, b, c] = [socket(), socket(), socket()]
  const watchers = [new FeedBatcher(a, 'Team:*', 10, 500, 1 << 20), new FeedBatcher(b, 'Team:*', 10, 500, 1 << 20), new FeedBatcher(c, 'Team@red:*', 10, 500, 1 << 20)]
  const meta = { channel: 'p:Team:*', position: 'n:1', payloadType: 'minimal', tenantId: null, key: 'p:Team:*', prepared: new PreparedFrame(frame(1)) } satisfies FrameMeta
  for (const w of watchers) w.deliver(frame(1), meta)
  t.same(JSON.parse(a.frames[0]), { type: 'notification', data: { entityType: 'Team', entityId: '1', subscriptionId: 'Team:*' } })
  t.equal(b.frames[0], a.frames[0])
  t.equal(shared[0], shared[1], 'one prepared frame for the sockets naming the feed alike')
  t.equal(JSON.parse(c.frames[0]).data.subscriptionId, 'Team@red:*', 'a socket that named its tenant: its own')
  const filtered = socket()
  new FeedBatcher(filtered, null, 10, 500, 1 << 20).deliver(frame(2), meta)
  t.same(filtered.frames, [frame(2)], 'a filtered feed\'s frames come named by their filter: left as they are')
})

t.test('FeedBatcher: past the rate, the interval\'s frames go out as one batch frame', async (t) => {
  const { clock, socket, watcher } = feed(t)
  for (let i = 0; i < 13; i++) watcher.deliver(frame(i))
  t.equal(socket.frames.length, 10, 'three held')
  clock.advance(499)
  watcher.deliver(frame(13))
  t.equal(socket.frames.length, 10, 'nothing before the interval, however many come')
  clock.advance(1)
  t.equal(socket.frames.length, 11)
  t.same(batchOf(socket.frames[10]), [10, 11, 12, 13].map((i) => JSON.parse(frame(i))), '{"type":"batch","data":[…]} in order')
  clock.advance(5000)
  t.equal(socket.frames.length, 11, 'no timer left behind')
})

t.test('FeedBatcher: a single held frame goes out as itself', async (t) => {
  const { clock, socket, watcher } = feed(t, 1)
  watcher.deliver(frame(0))
  watcher.deliver(frame(1))
  clock.advance(500)
  t.same(socket.frames, [frame(0), frame(1)])
})

t.test('FeedBatcher: a batch of 500 frames is written at once, before the interval', async (t) => {
  const { clock, socket, watcher } = feed(t, 1, 10_000)
  watcher.deliver(frame(-1))
  for (let i = 0; i < 499; i++) watcher.deliver(frame(i))
  t.equal(socket.frames.length, 1, '499 held')
  watcher.deliver(frame(499))
  t.equal(socket.frames.length, 2)
  t.equal(batchOf(socket.frames[1]).length, 500)
  clock.advance(10_000)
  t.equal(socket.frames.length, 2, 'the interval\'s timer was cancelled with the early flush')
})

t.test('FeedBatcher: a batch is written once it reaches maxBatchBytes', async (t) => {
  const { socket, watcher } = feed(t, 1, 10_000, 1024)
  // a JSON string of 100 characters
  const big = (i: number): string => JSON.stringify(String(i).padStart(98, '0'))
  t.equal(big(0).length, 100)
  watcher.deliver(big(99))
  // the held frames' bytes and their commas: 100, then 101 each
  for (let i = 0; i < 10; i++) watcher.deliver(big(i))
  t.equal(socket.frames.length, 1, '10 frames: 1009 bytes, held')
  watcher.deliver(big(10))
  t.equal(socket.frames.length, 2, 'the 11th reaches 1110 bytes: written')
  t.equal(batchOf(socket.frames[1]).length, 11)
  t.ok(socket.frames[1].length < 1024 + 100 + 32, 'a batch never outgrows the bound by more than one frame')
})

t.test('FeedBatcher: deliver reports a write the socket refused', async (t) => {
  const { clock, socket, watcher } = feed(t, 1, 500, 150)
  watcher.deliver(frame(0))
  socket.accepts = false
  t.equal(watcher.deliver(frame(1)), true, 'held: nothing written yet')
  t.equal(watcher.deliver(frame(2)), true)
  t.equal(watcher.deliver(frame(3)), false, 'the early flush was refused')
  watcher.deliver(frame(4))
  clock.advance(500)
  t.equal(socket.frames.length, 3)
})

t.test('FeedBatcher: close drops the held frames and cancels the flush', async (t) => {
  const { clock, socket, watcher } = feed(t, 1)
  watcher.deliver(frame(0))
  watcher.deliver(frame(1))
  watcher.deliver(frame(2))
  watcher.close()
  watcher.close()
  clock.advance(10_000)
  t.same(socket.frames, [frame(0)])
})

const A = 'cf:Team:a'
const B = 'cf:Team:b'

/** a live notification of `channel` */
function live (channel: string, position: string | null): { frame: string, meta: FrameMeta } {
  const text = `{"position":${JSON.stringify(position)}}`
  return { frame: text, meta: { channel, position, payloadType: 'minimal', tenantId: null, key: channel, prepared: new PreparedFrame(text) } }
}

const intercept = (buffer: DeferredFrames, n: { frame: string, meta: FrameMeta }): boolean => buffer.intercept(n.frame, n.meta)

t.test('DeferredFrames: without a hold nothing is intercepted', async (t) => {
  const buffer = new DeferredFrames()
  t.equal(intercept(buffer, live(A, '0000abcd:1')), false)
})

t.test('DeferredFrames: held notifications wait, in order, and only on the held channel', async (t) => {
  const buffer = new DeferredFrames()
  buffer.defer(A)
  const held = [live(A, '0000abcd:4'), live(A, null), live(A, '0000abcd:6')]
  for (const n of held) t.equal(intercept(buffer, n), true)
  t.equal(intercept(buffer, live(B, '0000abcd:5')), false, 'another channel flows')
  buffer.defer(A)
  t.same(buffer.release(A, null), held, 'a second hold keeps what the first held')
  t.same(buffer.release(A, null), [], 'handed back once')
  t.equal(intercept(buffer, live(A, '0000abcd:1')), false, 'released without a position: nothing is filtered')
})

t.test('DeferredFrames: after a replay, notifications it carried are dropped until a newer one comes', async (t) => {
  const buffer = new DeferredFrames()
  buffer.defer(A)
  buffer.release(A, replayedUpTo('0000abcd:5', []))
  t.equal(intercept(buffer, live(A, '0000abcd:3')), true, 'older: the replay had it')
  t.equal(intercept(buffer, live(A, '0000abcd:5')), true, 'the replay\'s last')
  t.equal(intercept(buffer, live(B, '0000abcd:1')), false, 'another channel is not filtered')
  t.equal(intercept(buffer, live(A, '0000abcd:6')), false, 'newer: delivered')
  t.equal(intercept(buffer, live(A, '0000abcd:2')), false, 'and the filter is gone')
})

t.test('DeferredFrames: a feed\'s replay holds positions of several epochs: each one it carried is dropped', async (t) => {
  const buffer = new DeferredFrames()
  buffer.defer(A)
  buffer.release(A, replayedUpTo('0000abcd:5', [{ position: '2222abcd:9' }, { position: '0000abcd:6' }]))
  t.equal(intercept(buffer, live(A, '2222abcd:9')), true, 'carried, of another epoch')
  t.equal(intercept(buffer, live(A, '0000abcd:6')), true, 'carried, the last')
  t.equal(intercept(buffer, live(A, '3333abcd:1')), false, 'not carried: delivered')
})

t.test('DeferredFrames: a position that cannot be compared ends the filter', async (t) => {
  for (const position of [null, 'n:7', '1111abcd:1']) {
    const buffer = new DeferredFrames()
    buffer.release(A, replayedUpTo('0000abcd:5', []))
    t.equal(intercept(buffer, live(A, position)), false, String(position))
    t.equal(intercept(buffer, live(A, '0000abcd:4')), false, `nothing filtered after ${String(position)}`)
  }
})

t.test('DeferredFrames: forget and clear drop the held notifications and the filter', async (t) => {
  const buffer = new DeferredFrames()
  buffer.defer(A)
  intercept(buffer, live(A, '0000abcd:9'))
  buffer.forget(A)
  t.equal(intercept(buffer, live(A, '0000abcd:10')), false, 'no longer held')
  t.same(buffer.release(A, null), [], 'what was held is gone')

  buffer.release(A, replayedUpTo('0000abcd:5', []))
  buffer.forget(A)
  t.equal(intercept(buffer, live(A, '0000abcd:1')), false, 'the filter is gone')

  buffer.defer(A)
  buffer.release(B, replayedUpTo('0000abcd:5', []))
  buffer.clear()
  t.equal(intercept(buffer, live(A, '0000abcd:1')), false)
  t.equal(intercept(buffer, live(B, '0000abcd:1')), false)
})

const takes = (bucket: TokenBucket, n: number): number => {
  let taken = 0
  for (let i = 0; i < n; i++) if (bucket.take()) taken++
  return taken
}

t.test('TokenBucket: the capacity at once, then refilled at the rate, never above the capacity', async (t) => {
  const clock = fakeClock(t)
  const bucket = new TokenBucket(5, 2)
  t.equal(takes(bucket, 10), 5, 'the burst')
  clock.advance(499)
  t.equal(bucket.take(), false, 'half a second makes one token at 2 per second, not 499 ms')
  clock.advance(1)
  t.equal(bucket.take(), true)
  t.equal(bucket.take(), false)
  clock.advance(250)
  clock.advance(250)
  t.equal(bucket.take(), true, 'refills add up between takes')
  clock.advance(3_600_000)
  t.equal(takes(bucket, 10), 5, 'an hour idle refills to the capacity only')
})

t.test('TokenBucket: a fractional rate', async (t) => {
  const clock = fakeClock(t)
  const bucket = new TokenBucket(1, 0.5)
  t.equal(takes(bucket, 3), 1)
  clock.advance(1999)
  t.equal(bucket.take(), false)
  clock.advance(1)
  t.equal(bucket.take(), true)
})

t.test('ConnectionCounter: up to the maximum per key; release frees one', async (t) => {
  const counter = new ConnectionCounter(2)
  t.equal(counter.acquire('a'), true)
  t.equal(counter.acquire('a'), true)
  t.equal(counter.acquire('a'), false, 'past the maximum')
  t.equal(counter.acquire('b'), true, 'another key counts apart')
  counter.release('a')
  t.equal(counter.acquire('a'), true)
  t.equal(counter.acquire('a'), false)
  counter.release('c')
  counter.release('b')
  counter.release('b')
  t.equal(counter.acquire('b'), true)
  t.equal(counter.acquire('b'), true)
  t.equal(counter.acquire('b'), false, 'releasing more than was acquired does not raise the maximum')
})

t.test('ReplayLimiter: ten seconds\' worth per IP address at once, then the rate', async (t) => {
  const clock = fakeClock(t)
  const limiter = new ReplayLimiter(1, 100, 100)
  let ran = 0
  const replay = async (): Promise<string> => { ran++; return 'frames' }
  for (let i = 0; i < 10; i++) t.equal(await limiter.run('10.0.0.1', replay), 'frames')
  t.equal(await limiter.run('10.0.0.1', replay), null, 'the eleventh is refused')
  t.equal(ran, 10, 'a refused replay does not read the outbox')
  t.equal(await limiter.run('10.0.0.2', replay), 'frames', 'another address has its own bucket')
  clock.advance(1000)
  t.equal(await limiter.run('10.0.0.1', replay), 'frames', 'a second later, one more')
  t.equal(await limiter.run('10.0.0.1', replay), null)
})

t.test('ReplayLimiter: at most `concurrency` at once, `queue` waiting, the rest refused; a slot goes to the next waiter', async (t) => {
  fakeClock(t)
  const limiter = new ReplayLimiter(1000, 2, 2)
  const reads = Array.from({ length: 5 }, () => new Deferred<number>())
  const started: number[] = []
  const run = (i: number): Promise<number | null> => limiter.run('10.0.0.' + String(i), async () => { started.push(i); return await reads[i].promise })
  const results = [run(0), run(1), run(2), run(3)]
  t.same(started, [0, 1], 'two run at once')
  const refused = run(4)
  t.equal(await refused, null, 'the queue of two is full: refused at once')
  t.same(started, [0, 1])

  reads[1].resolve(1)
  t.equal(await results[1], 1)
  t.equal(await stateOf(results[2]), 'pending')
  t.same(started, [0, 1, 2], 'the freed slot went to the first waiter')

  reads[0].reject(new Error('outbox read failed'))
  await t.rejects(results[0], { message: 'outbox read failed' }, 'a failed replay fails its caller')
  await stateOf(results[3])
  t.same(started, [0, 1, 2, 3], 'and still frees its slot')

  const late = new Deferred<number>()
  let lateStarted = false
  const afterThem = limiter.run('10.0.0.9', async () => { lateStarted = true; return await late.promise })
  t.equal(lateStarted, false, 'both slots are still taken by the handed-over replays')
  reads[2].resolve(2)
  reads[3].resolve(3)
  t.same(await Promise.all([results[2], results[3]]), [2, 3])
  t.equal(lateStarted, true)
  late.resolve(9)
  t.equal(await afterThem, 9)

  const free = await Promise.all([limiter.run('10.0.1.1', async () => 'a'), limiter.run('10.0.1.2', async () => 'b')])
  t.same(free, ['a', 'b'], 'every slot came back')
})

/** the resync frame a publisher owes an entity's watchers (its content is the publisher's business) */
const frameOf = (id: string): string => JSON.stringify({ type: 'resync', data: { reason: 'delivery_failed', entityType: 'Team', entityId: id } })

function owed (t: TestContext): { clock: ReturnType<typeof fakeClock>, bus: ScriptedBus, resyncs: OwedResyncs, warnings: string[] } {
  const clock = fakeClock(t)
  const bus = new ScriptedBus()
  const { log, warnings } = recordingLogger()
  const resyncs = new OwedResyncs(bus, 'cf', log)
  t.teardown(() => resyncs.close())
  return { clock, bus, resyncs, warnings }
}

/** Advances the fake clock and lets the publishes it started finish. */
async function advance (clock: ReturnType<typeof fakeClock>, ms: number): Promise<void> {
  clock.advance(ms)
  await turn()
}

t.test('gapChannelOf: the channel of database-wide gaps', async (t) => {
  t.equal(gapChannelOf('cf'), 'cf:$gap')
})

t.test('OwedResyncs: a resync owed while the bus refuses is published once it takes it', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  bus.refusing = new Error('bus down')
  resyncs.owe('main', [['cf:Team:1', frameOf('1')], ['cf:Team:2', frameOf('2')]])
  t.equal(bus.publishAttempts, 0, 'published from a timer, not inside owe()')
  await advance(clock, 1)
  t.equal(bus.publishAttempts, 1, 'tried, refused')
  await advance(clock, 249)
  t.equal(bus.publishAttempts, 1, 'not again before 250 ms')
  await advance(clock, 1)
  t.equal(bus.publishAttempts, 2, 'retried')
  bus.refusing = null
  await advance(clock, 250)
  t.same(bus.published.map((p) => p.channel), ['cf:Team:1', 'cf:Team:2'], 'each on the entity\'s own channel')
  const envelope = unwrap(bus.published[0].message)
  t.match(envelope, { kind: 'resync', payloadType: null, frame: frameOf('1'), tenantId: null, position: null }, 'wrapped as a resync, the frame unchanged')
  t.equal(resyncs.published, 2)
  const attempts = bus.publishAttempts
  await advance(clock, 10_000)
  t.equal(bus.publishAttempts, attempts, 'nothing owed: no more attempts')
})

t.test('OwedResyncs: one resync per channel, however many losses', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  bus.refusing = new Error('bus down')
  resyncs.owe('main', [['cf:Team:1', frameOf('1')]])
  await advance(clock, 1)
  resyncs.owe('main', [['cf:Team:1', frameOf('again')], ['cf:Team:1', frameOf('and again')]])
  bus.refusing = null
  await advance(clock, 250)
  t.equal(bus.published.length, 1)
  t.equal(unwrap(bus.published[0].message)?.frame, frameOf('1'), 'the first frame owed')
  resyncs.owe('main', [['cf:Team:1', frameOf('later')]])
  await advance(clock, 1)
  t.equal(bus.published.length, 2, 'a loss after the resync went out is owed anew')
})

t.test('OwedResyncs: with the bus up, owed resyncs go out on the next tick', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  resyncs.owe('main', [['cf:Team:1', frameOf('1')]])
  resyncs.owe('main', [['cf:Team:2', frameOf('2')]])
  await advance(clock, 1)
  t.same(bus.published.map((p) => p.channel), ['cf:Team:1', 'cf:Team:2'])
})

t.test('OwedResyncs: past 10,000 owed entities the database is told to resync as a whole', async (t) => {
  const { clock, bus, resyncs, warnings } = owed(t)
  bus.refusing = new Error('bus down')
  const debts = (from: number, n: number): Array<[string, string]> => Array.from({ length: n }, (_, i) => [`cf:Team:${from + i}`, frameOf(String(from + i))])
  resyncs.owe('main', debts(0, 9_999))
  resyncs.owe('main', debts(9_999, 2))
  resyncs.owe('other', debts(20_000, 10_001))
  resyncs.owe('main', debts(30_000, 5))
  bus.refusing = null
  await advance(clock, 1)
  const gaps = bus.published.filter((p) => p.channel === 'cf:$gap')
  t.same(gaps.map((p) => JSON.parse(p.message)), [{ database: 'main', reason: 'delivery_failed' }, { database: 'other', reason: 'delivery_failed' }],
    'one gap message per database, first')
  t.equal(bus.published.indexOf(gaps[1]), 1)
  t.equal(bus.published.length, 2 + 9_999, 'the entities owed before the bound still get theirs; none past it')
  t.equal(resyncs.published, 9_999)
  t.equal(warnings.filter((w) => w.includes('every watcher of the database told to resync')).length, 2)
})

t.test('OwedResyncs: a resync of whole types is one gap message, published again while the bus refuses it', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  bus.refusing = new Error('bus down')
  resyncs.oweTypes('main', ['Squad'], ['Red'], 'truncated')
  resyncs.oweTypes('main', ['Squad'], ['Red'], 'truncated')
  resyncs.oweTypes('main', [], null, 'truncated')
  await advance(clock, 1)
  bus.refusing = null
  await advance(clock, 250)
  t.same(bus.published.map((p) => [p.channel, JSON.parse(p.message)]), [['cf:$gap', { database: 'main', reason: 'truncated', types: ['Squad'], tenants: ['Red'] }]],
    'once, for the types and tenants named; nothing for no type')
})

t.test('OwedResyncs: close: nothing more is published or owed', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  bus.refusing = new Error('bus down')
  resyncs.owe('main', [['cf:Team:1', frameOf('1')]])
  await advance(clock, 1)
  resyncs.close()
  bus.refusing = null
  await advance(clock, 1000)
  resyncs.owe('main', [['cf:Team:2', frameOf('2')]])
  await advance(clock, 1000)
  t.same(bus.published, [])
  t.equal(bus.publishAttempts, 1)
})

t.test('the ping sweep visits a tenth of the sockets per tick, each once per interval; silent ones are closed', async (t) => {
  const clock = fakeClock(t)
  const set = new ConnectionSet({} as WatcherCounts, {} as Presence)
  const pinged: number[] = []
  const closed: Array<[number, number]> = []
  const sockets = Array.from({ length: 1000 }, (_, i) => ({
    id: i + 1,
    lastSeen: Date.now(),
    ping () { pinged.push(this.id) },
    close (code: number) { closed.push([this.id, code]); set.open.delete(this as unknown as Connection) }
  }))
  for (const s of sockets) set.open.add(s as unknown as Connection)
  sockets[6].lastSeen = Date.now() - 60_000
  set.startSweep(30, 45)
  clock.advance(3000)
  t.equal(pinged.length + closed.length, 100, 'one tick: a tenth of them')
  for (let tick = 1; tick < 10; tick++) clock.advance(3000)
  t.equal(pinged.length, 999, 'one interval: every live socket pinged')
  t.equal(new Set(pinged).size, 999, 'each once')
  t.same(closed, [[7, 4408]], 'the silent one closed as idle')
  set.closeAll(1001, 'bye')
  const after = pinged.length
  for (let tick = 0; tick < 20; tick++) clock.advance(3000)
  t.equal(pinged.length, after, 'no sweep after closeAll')
})

t.test('OwedResyncs: the same resync owed again while it is on its way is sent again', async (t) => {
  const { clock, bus, resyncs } = owed(t)
  const hold = new Deferred()
  const publish = bus.publish.bind(bus)
  bus.publish = async (channel: string, message: string): Promise<void> => { await hold.promise; await publish(channel, message) }
  resyncs.oweTypes('main', ['Team'], null, 'rebuilt')
  await advance(clock, 1)
  resyncs.oweTypes('main', ['Team'], null, 'rebuilt')
  hold.resolve()
  for (let i = 0; i < 5; i++) await advance(clock, 1)
  t.equal(bus.published.length, 2, 'the second loss came after the first resync left: it is told too')
})
