/**
 * One entity's presence (lib/presence/room.ts) on a fake clock: members merged from several instances' entries,
 * events batched to one frame per interval with the net change of each user, a socket that arrived mid-batch
 * told only what its snapshot lacked, counts only (at most once a second) above maxMembers and the whole list when
 * back within it, and an instance that stopped taking its members along. Also the bus layout of presence messages,
 * and a slow socket keeping only the latest signal of each sender.
 */
import t from 'tap'
import { PresenceRoom, type Entry } from '../../../lib/presence/room.js'
import { memberMessage, readMessage, signalMessage } from '../../../lib/presence/messages.js'
import { presenceSettings, signalSettings } from '../../../lib/presence/options.js'
import type { FrameMeta, Receiver } from '../../../lib/ws/fanout.js'
import { OutboundQueue } from '../../../lib/ws/outbound.js'
import { encodeSignal } from '../../../lib/protocol/index.js'
import { fakeClock } from '../fixtures/fakes.js'

const INTERVAL = 200
const ref = { entityType: 'Team', entityId: 'team-1' }
const settings = { maxMembers: 3, intervalMs: INTERVAL, infoMaxBytes: 1024 }

/** A socket that keeps the data of the frames it was sent. */
function socket (): Receiver & { frames: any[], metas: Array<FrameMeta | undefined> } {
  const frames: any[] = []
  const metas: Array<FrameMeta | undefined> = []
  return { frames, metas, deliver: (frame, meta) => { frames.push(JSON.parse(frame).data); metas.push(meta); return true } }
}
let v = 0
const entry = (c: number, info?: unknown, at = Date.now()): Entry => ({ c, info, at, v: ++v })

t.test('settings: defaults, overrides, none', async (t) => {
  t.same(presenceSettings(true), { maxMembers: 100, intervalMs: 200, infoMaxBytes: 1024 })
  t.same(presenceSettings({ maxMembers: 5 }), { maxMembers: 5, intervalMs: 200, infoMaxBytes: 1024 })
  t.equal(presenceSettings(false), null)
  t.equal(presenceSettings(undefined), null)
  t.same(signalSettings(true), { ratePerSecond: 20, maxBytes: 2048 })
  t.same(signalSettings({ maxBytes: 10 }), { ratePerSecond: 20, maxBytes: 10 })
  t.equal(signalSettings(false), null)
})

t.test('one frame per interval, with the net change of each user', async (t) => {
  const clock = fakeClock(t)
  const room = new PresenceRoom(ref, settings)
  t.teardown(() => room.close())
  const s = socket()
  room.addWatcher(s)
  room.apply('i1', 'u1', entry(1, { a: 1 }))
  clock.advance(1)
  t.same(s.frames, [{ ...ref, count: 1, joined: [{ userId: 'u1', info: { a: 1 } }] }], 'the first change goes out at once')

  room.apply('i1', 'u2', entry(1))
  room.apply('i2', 'u1', entry(1, { a: 2 }, Date.now() + 1))
  room.apply('i1', 'u3', entry(1))
  room.apply('i1', 'u3', null)
  clock.advance(INTERVAL - 10)
  t.equal(s.frames.length, 1, 'nothing before the interval is over')
  clock.advance(10)
  t.same(s.frames[1], { ...ref, count: 2, joined: [{ userId: 'u2' }], updated: [{ userId: 'u1', info: { a: 2 } }] }, 'one frame: u3 came and went, u1 is updated, not joined again')
  t.same(room.snapshot().members, [{ userId: 'u1', info: { a: 2 }, connections: 2 }, { userId: 'u2', connections: 1 }], 'connections summed over instances, the latest info')

  room.apply('i2', 'u1', null)
  clock.advance(INTERVAL)
  t.same(s.frames[2], { ...ref, count: 2, updated: [{ userId: 'u1', info: { a: 1 } }] }, 'the instance that set the latest info let go: the info its other connections have')
  room.apply('i1', 'u1', entry(2, { a: 1 }))
  clock.advance(INTERVAL)
  t.equal(s.frames.length, 3, 'a connection more with the same info is no event')
  room.apply('i1', 'u2', null)
  clock.advance(INTERVAL)
  t.same(s.frames[3], { ...ref, count: 1, left: [{ userId: 'u2' }] })
  room.apply('i1', 'u2', entry(1, 'x'))
  room.apply('i1', 'u2', null)
  clock.advance(INTERVAL)
  t.equal(s.frames.length, 4, 'joined and left within one interval: nothing')
})

t.test('a socket that arrived mid-batch hears only what its snapshot lacked', async (t) => {
  const clock = fakeClock(t)
  const room = new PresenceRoom(ref, settings)
  t.teardown(() => room.close())
  const early = socket()
  room.addWatcher(early)
  room.apply('i1', 'u0', entry(1))
  clock.advance(1)
  room.apply('i1', 'u1', entry(1))
  const late = socket()
  room.addWatcher(late)
  t.same(room.snapshot().members.map((m) => m.userId), ['u0', 'u1'], 'its snapshot has u1')
  room.apply('i1', 'u2', entry(1))
  clock.advance(INTERVAL)
  t.same(early.frames[1].joined, [{ userId: 'u1' }, { userId: 'u2' }])
  t.same(late.frames, [{ ...ref, count: 3, joined: [{ userId: 'u2' }] }])
  room.removeWatcher(late)
  room.apply('i1', 'u0', null)
  clock.advance(INTERVAL)
  t.equal(late.frames.length, 1, 'a socket that left hears nothing')
})

t.test('above maxMembers: counts at most once a second, then the whole list again', async (t) => {
  const clock = fakeClock(t)
  const room = new PresenceRoom(ref, settings)
  t.teardown(() => room.close())
  const s = socket()
  room.addWatcher(s)
  for (const u of ['u1', 'u2', 'u3', 'u4']) room.apply('i1', u, entry(1))
  clock.advance(1)
  t.same(s.frames, [{ ...ref, count: 4 }], 'a count, no lists')
  t.same(room.snapshot(), { count: 4, members: ['u1', 'u2', 'u3'].map((userId) => ({ userId, connections: 1 })), truncated: true })
  room.apply('i1', 'u5', entry(1))
  clock.advance(INTERVAL)
  t.equal(s.frames.length, 1, 'not within a second')
  clock.advance(1000 - INTERVAL)
  t.same(s.frames[1], { ...ref, count: 5 })
  room.apply('i1', 'u6', entry(1))
  room.apply('i1', 'u6', null)
  clock.advance(1000)
  t.equal(s.frames.length, 2, 'the same count is not sent again')
  room.apply('i1', 'u5', null)
  room.apply('i1', 'u4', null)
  clock.advance(1000)
  t.same(s.frames[2], { ...ref, count: 3, members: ['u1', 'u2', 'u3'].map((userId) => ({ userId, connections: 1 })) }, 'back within maxMembers: the whole list')
  room.apply('i1', 'u3', null)
  clock.advance(INTERVAL)
  t.same(s.frames[3], { ...ref, count: 2, left: [{ userId: 'u3' }] }, 'then events again')
})

t.test('an instance that stopped takes its members along', async (t) => {
  const clock = fakeClock(t)
  const room = new PresenceRoom(ref, settings)
  t.teardown(() => room.close())
  const s = socket()
  room.addWatcher(s)
  room.apply('i1', 'u1', entry(1))
  room.apply('i2', 'u1', entry(1))
  room.apply('i2', 'u2', entry(2))
  clock.advance(1)
  t.same([...room.instances], [['i1', 1], ['i2', 2]])
  t.same(room.removeInstance('i2').sort(), ['u1', 'u2'])
  clock.advance(INTERVAL)
  t.same(s.frames[1], { ...ref, count: 1, left: [{ userId: 'u2' }] })
  t.ok(room.has('u1') && !room.has('u2'))
  t.equal(room.versionOf('i2', 'u1'), 0, 'its entries are gone')
  room.apply('i3', 'u9', null)
  t.equal(room.count, 1, 'removing what is not there changes nothing')
})

t.test('presence messages on the bus', async (t) => {
  const e = { c: 2, info: { x: 'a b\nc' }, at: 5, v: 7 }
  t.same(readMessage(memberMessage('inst', 'user one', 7, e)), { kind: 'member', instance: 'inst', v: 7, userId: 'user one', entry: e })
  t.same(readMessage(memberMessage('inst', 'u', 8, null)), { kind: 'member', instance: 'inst', v: 8, userId: 'u', entry: null })
  t.same(readMessage(signalMessage('inst', 'u/1', '{"type":"signal"}')), { kind: 'signal', instance: 'inst', userId: 'u/1', frame: '{"type":"signal"}' })
  for (const bad of ['pr1 m a b c\n', 'pr1 m a 1 u\n{', 'pr1 m a 1 u\n{"c":"x","at":1}', 'pr1 x a\n', 'pr1 m a 1 u', 'cf1 n\n{}', 'pr1 m a 1 %E0\n']) {
    t.equal(readMessage(bad), null, JSON.stringify(bad))
  }
})

t.test('a slow socket keeps only the latest signal of each sender', async (t) => {
  const room = new PresenceRoom(ref, settings)
  const sink = { frames: [] as string[], bufferedAmount: 2000, send (frame: string | Buffer) { this.frames.push(String(frame)) } }
  const queue = new OutboundQueue(sink, { highWaterBytes: 1000, lowWaterBytes: 100, maxBufferedBytes: 5000, maxHeldFrames: 10, drainIntervalMs: 5 })
  t.teardown(() => queue.close())
  const slow: Receiver = { deliver: (frame, meta) => queue.push(frame, meta?.key ?? null) !== 'overflow' }
  const sender = socket()
  room.addWatcher(slow)
  room.addWatcher(sender)
  for (const [user, x] of [['u1', 1], ['u2', 1], ['u1', 2], ['u1', 3]] as const) {
    t.equal(room.broadcast(encodeSignal(ref, user, JSON.stringify({ x })), sender, 'c:Team:team-1', `c:Team:team-1\u0000signal\u0000${user}`), 1, 'to every socket but the sender')
  }
  t.equal(queue.held, 2, 'one held signal per sender')
  t.equal(sender.frames.length, 0)
  sink.bufferedAmount = 0
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(sink.frames.map((f) => JSON.parse(f).data), [
    { ...ref, from: { userId: 'u1' }, data: { x: 3 } },
    { ...ref, from: { userId: 'u2' }, data: { x: 1 } }
  ], 'the latest of each')
})
