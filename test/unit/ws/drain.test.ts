/**
 * A deploy's drain (lib/ws/drain.ts): every open socket is closed with 1012 and a reason saying when to come back,
 * a slice at a time over the drain window, so the other instances never see them all at once; a second drain waits
 * for the first.
 */
import t from 'tap'
import { drain, DRAIN_TICK_MS, RETRY_HINT_MS } from '../../../lib/ws/drain.js'
import { CloseCode, retryHintOf, restartReason } from '../../../lib/protocol/index.js'
import { fakeClock, recordingLogger } from '../fixtures/fakes.js'

const quietLog = (): ReturnType<typeof recordingLogger>['log'] => recordingLogger().log

class FakeSocket {
  isOpen = true
  closedWith: { code: number, reason: string } | null = null
  constructor (private readonly set: Set<FakeSocket>, private readonly lingers: boolean) {}
  close (code: number, reason: string): void {
    this.isOpen = false
    this.closedWith = { code, reason }
    // a socket leaves the set once its close handshake ends: some at once, some later
    if (!this.lingers) this.set.delete(this)
  }
}

function sockets (n: number): { open: Set<FakeSocket>, all: FakeSocket[], draining: boolean } {
  const open = new Set<FakeSocket>()
  const all = Array.from({ length: n }, (_, i) => new FakeSocket(open, i % 2 === 0))
  for (const s of all) open.add(s)
  return { open, all, draining: false }
}

t.test('the reason says when to come back', async (t) => {
  t.equal(retryHintOf(restartReason(500)), 500)
  t.equal(retryHintOf(restartReason(-3)), 0)
  t.equal(retryHintOf('server going away'), null)
})

t.test('sockets close with 1012 a slice per tick over the window', async (t) => {
  const clock = fakeClock(t)
  const set = sockets(100)
  // one second: ten ticks of ten sockets
  const done = drain(set, 1, quietLog())
  let finished = false
  void done.then(() => { finished = true })
  const closed = (): number => set.all.filter((s) => s.closedWith !== null).length
  t.equal(set.draining, true, 'new sockets are refused from the start')
  t.equal(closed(), 10, 'the first slice at once')
  const slices = [closed()]
  for (let i = 0; i < 12; i++) {
    clock.advance(DRAIN_TICK_MS)
    await Promise.resolve()
    slices.push(closed())
  }
  t.same(slices.slice(0, 10), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 'ten a tick')
  await done
  t.ok(finished)
  t.ok(set.all.every((s) => s.closedWith?.code === CloseCode.serviceRestart && retryHintOf(s.closedWith.reason) === RETRY_HINT_MS), '1012, with the hint')
  t.equal(await drain(set, 1, quietLog()), undefined, 'a second drain has nothing left to do')
})

t.test('a window of 0 closes every socket at once', async (t) => {
  const set = sockets(7)
  await drain(set, 0, quietLog())
  t.ok(set.all.every((s) => s.closedWith?.code === 1012))
})
