/**
 * The outbound queue of one socket against a fake sink whose buffered amount the test sets, on a fake clock: direct
 * writes, holding above high water, conflation by entity with the net changeType, overflow, and draining in order.
 */
import t from 'tap'
import type { Clock } from 'clock-mock'
import { OutboundQueue, type OutboundLimits, type Sink } from '../../../lib/ws/outbound.js'
import { mergeChangeType, type ChangeTypeName } from '../../../lib/protocol/index.js'
import { encodeNotification } from '../../../lib/protocol/index.js'
import { fakeClock, type TestContext } from '../fixtures/fakes.js'

const limits: OutboundLimits = { highWaterBytes: 1000, lowWaterBytes: 100, maxBufferedBytes: 5000, maxHeldFrames: 5, drainIntervalMs: 5 }

class FakeSink implements Sink {
  readonly frames: string[] = []
  bufferedAmount = 0
  /** bytes each write adds to bufferedAmount, as a socket that does not flush */
  growth = 0

  send (frame: string | Buffer): void {
    this.frames.push(String(frame))
    this.bufferedAmount += this.growth
  }
}

function note (id: string, changeType: ChangeTypeName, payload?: unknown): string {
  const payloadType = payload === undefined ? 'minimal' : 'full'
  return encodeNotification({ entityType: 'Team', entityId: id, changeType, payloadType, ts: 0, payload })
}

/** A queue whose socket is backed up, so every push is held; its drain timer runs on the fake clock. */
function backedUp (t: TestContext, overrides: Partial<OutboundLimits> = {}): { sink: FakeSink, queue: OutboundQueue, clock: Clock } {
  const clock = fakeClock(t)
  const sink = new FakeSink()
  sink.bufferedAmount = 2000
  const queue = new OutboundQueue(sink, { ...limits, ...overrides })
  t.teardown(() => queue.close())
  return { sink, queue, clock }
}

t.test('mergeChangeType gives the net change', async (t) => {
  t.equal(mergeChangeType('updated', 'updated'), 'updated')
  t.equal(mergeChangeType('created', 'updated'), 'created')
  t.equal(mergeChangeType('created', 'deleted'), null, 'the client never saw the entity')
  t.equal(mergeChangeType('updated', 'deleted'), 'deleted')
  t.equal(mergeChangeType('deleted', 'deleted'), 'deleted')
  t.equal(mergeChangeType('deleted', 'created'), 'updated')
  t.equal(mergeChangeType('appended', 'appended'), 'appended')
})

t.test('a calm socket gets each frame at once', async (t) => {
  const sink = new FakeSink()
  const queue = new OutboundQueue(sink, limits)
  t.teardown(() => queue.close())
  t.equal(queue.push('a', null), 'sent')
  sink.bufferedAmount = limits.highWaterBytes
  t.equal(queue.push(note('1', 'updated'), 'Team:1'), 'sent', 'high water itself is still calm')
  t.same(sink.frames, ['a', note('1', 'updated')])
  t.equal(queue.held, 0)
})

t.test('above high water frames are held, and stay held until the socket drains', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  t.equal(queue.push('a', null), 'held')
  t.equal(queue.held, 1)
  sink.bufferedAmount = 500
  t.equal(queue.push('b', null), 'held', 'below high water but above low water, a queue that holds keeps holding')
  for (let i = 0; i < 10; i++) clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [], 'and does not drain above low water')
  t.equal(queue.held, 2)
})

t.test('updated then updated: one frame, the later one, at the first one\'s place', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push(note('1', 'updated', { v: 1 }), 'Team:1')
  queue.push(note('2', 'updated'), 'Team:2')
  const later = note('1', 'updated', { v: 2 })
  t.equal(queue.push(later, 'Team:1'), 'held')
  t.equal(queue.held, 2)
  t.equal(queue.conflated, 1)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [later, note('2', 'updated')], 'the later frame, unchanged, first')
})

t.test('a frame delivered as is is a barrier: nothing after it merges into a frame held before it', async (t) => {
  const { sink, queue, clock } = backedUp(t, { maxHeldFrames: 10 })
  const reply = '{"type":"subscribed","data":{"snapshot":{"payload":{"v":1}}}}'
  queue.push(note('1', 'updated', { v: 0 }), 'Team:1')
  queue.push(note('2', 'updated', { v: 0 }), 'Team:2')
  queue.push(reply, null)
  // made after the snapshot in the reply: it must reach the client after it, or the client ends on the older state
  t.equal(queue.push(note('1', 'updated', { v: 2 }), 'Team:1'), 'held')
  t.equal(queue.push(note('1', 'updated', { v: 3 }), 'Team:1'), 'held')
  t.equal(queue.push(note('1', 'deleted'), 'Team:1'), 'held')
  t.equal(queue.push(note('1', 'created', { v: 4 }), 'Team:1'), 'held')
  t.equal(queue.held, 4, 'the frames after the barrier merge among themselves')
  t.equal(queue.conflated, 3)
  queue.push('{"type":"pong"}', null)
  queue.push(note('1', 'updated', { v: 5 }), 'Team:1')
  queue.push(note('2', 'deleted'), 'Team:2')
  t.equal(queue.held, 7, 'and not with the frames before the next barrier')
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [
    note('1', 'updated', { v: 0 }), note('2', 'updated', { v: 0 }), reply, note('1', 'updated', { v: 4 }),
    '{"type":"pong"}', note('1', 'updated', { v: 5 }), note('2', 'deleted')
  ])
})

t.test('created then updated: created, with the later payload', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push(note('1', 'created', { v: 1 }), 'Team:1')
  queue.push(note('1', 'updated', { v: 2, changeType: 'deleted' }), 'Team:1')
  queue.push(note('1', 'updated', { v: 3, changeType: 'deleted' }), 'Team:1')
  t.equal(queue.held, 1)
  t.equal(queue.conflated, 2)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.equal(sink.frames.length, 1)
  t.equal(sink.frames[0], note('1', 'created', { v: 3, changeType: 'deleted' }),
    'a changeType field inside the payload is neither read nor changed')
})

t.test('a patch (delta) held alone goes out as it is; merged with the frame before or after it, as the full frame of the latest change', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  const patch = (id: string, v: number): string => encodeNotification({ entityType: 'Team', entityId: id, changeType: 'updated', payloadType: 'delta', ts: 0, basePosition: `n:${v - 1}`, patch: [{ op: 'replace', path: '/v', value: v }], position: `n:${v}` })
  queue.push(patch('1', 2), 'Team:1', undefined, note('1', 'updated', { v: 2 }))
  queue.push(note('2', 'updated', { v: 1 }), 'Team:2')
  queue.push(patch('2', 2), 'Team:2', undefined, note('2', 'updated', { v: 2 }))
  queue.push(patch('3', 2), 'Team:3', undefined, note('3', 'updated', { v: 2 }))
  queue.push(patch('3', 3), 'Team:3', undefined, note('3', 'created', { v: 3 }))
  t.equal(queue.held, 3)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [patch('1', 2), note('2', 'updated', { v: 2 }), note('3', 'updated', { v: 3 })],
    'the lone patch unchanged; a full frame then a patch: the full of the patch\'s change; two patches: the full of the later, with the net changeType')
})

t.test('created then deleted: nothing goes out for the entity', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push('a', null)
  queue.push(note('1', 'created'), 'Team:1')
  queue.push(note('1', 'deleted'), 'Team:1')
  t.equal(queue.held, 1)
  t.equal(queue.conflated, 2, 'both frames were never written')
  queue.push(note('1', 'created'), 'Team:1')
  t.equal(queue.held, 2, 'a later change of the entity is held anew')
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, ['a', note('1', 'created')])
})

t.test('deleted then created, and updated then deleted', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push(note('1', 'deleted'), 'Team:1')
  queue.push(note('1', 'created', { v: 1 }), 'Team:1')
  queue.push(note('2', 'updated'), 'Team:2')
  queue.push(note('2', 'deleted'), 'Team:2')
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [note('1', 'updated', { v: 1 }), note('2', 'deleted')])
})

t.test('discard drops the held frames of a channel (and of its tenants\' keys) before a replay; later ones are held anew', async (t) => {
  const { sink, queue, clock } = backedUp(t, { maxHeldFrames: 10 })
  queue.push(note('1', 'updated', { v: 1 }), 'Team:1')
  queue.push(note('1', 'updated', { v: 1, tenant: 'red' }), 'Team:1\u0000red')
  queue.push(note('10', 'updated'), 'Team:10')
  queue.discard('Team:1')
  queue.discard('Team:nothing')
  t.equal(queue.held, 1)
  t.equal(queue.push(note('1', 'updated', { v: 2 }), 'Team:1'), 'held')
  t.equal(queue.conflated, 0, 'nothing left to merge into')
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [note('10', 'updated'), note('1', 'updated', { v: 2 })])
  queue.discard('Team:1')
  t.equal(queue.held, 0)
})

t.test('frames without a key keep their order and are never merged', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push(note('1', 'updated'), null)
  queue.push(note('2', 'updated'), 'Team:2')
  queue.push(note('1', 'updated'), null)
  queue.push('{"type":"pong"}', null)
  t.equal(queue.held, 4)
  t.equal(queue.conflated, 0)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [note('1', 'updated'), note('2', 'updated'), note('1', 'updated'), '{"type":"pong"}'])
})

t.test('overflow when the socket buffers too many bytes', async (t) => {
  const sink = new FakeSink()
  const queue = new OutboundQueue(sink, limits)
  t.teardown(() => queue.close())
  sink.bufferedAmount = limits.maxBufferedBytes + 1
  t.equal(queue.push('a', null), 'overflow')
  t.equal(queue.push(note('1', 'updated'), 'Team:1'), 'overflow')
  t.equal(queue.held, 0, 'nothing is held')
  t.same(sink.frames, [])
})

t.test('overflow when too many frames are held; replacing one is still fine', async (t) => {
  const { queue } = backedUp(t)
  for (let i = 0; i < limits.maxHeldFrames; i++) t.equal(queue.push(note(String(i), 'updated'), `Team:${i}`), 'held')
  t.equal(queue.push(note('0', 'updated'), 'Team:0'), 'held', 'a replacement does not grow the queue')
  t.equal(queue.push('a', null), 'overflow')
  t.equal(queue.push(note('9', 'updated'), 'Team:9'), 'overflow')
  t.equal(queue.held, limits.maxHeldFrames)
})

t.test('draining writes in order and stops again above high water', async (t) => {
  const { sink, queue, clock } = backedUp(t, { maxHeldFrames: 10 })
  for (let i = 0; i < 6; i++) queue.push(String(i), null)
  sink.growth = 400
  sink.bufferedAmount = limits.lowWaterBytes
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [], 'low water itself is not drained')
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, ['0', '1', '2'], 'three writes take the buffer past high water')
  t.equal(queue.held, 3)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, ['0', '1', '2', '3', '4', '5'])
  t.equal(queue.held, 0)
  sink.growth = 0
  sink.bufferedAmount = 0
  t.equal(queue.push('6', null), 'sent', 'once drained, frames go out at once again')
})

t.test('close drops the held frames and takes no more', async (t) => {
  const { sink, queue, clock } = backedUp(t)
  queue.push('a', null)
  queue.close()
  queue.close()
  t.equal(queue.held, 0)
  sink.bufferedAmount = 0
  clock.advance(limits.drainIntervalMs)
  t.same(sink.frames, [])
  t.equal(queue.push('b', null), 'overflow')
})
