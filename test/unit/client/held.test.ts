/**
 * What an entity's subscription and a live query's filter share (lib/client/held.ts), on a fake clock with a host
 * that records what is sent: counted holds released a tick late, retries after a refusal of the moment, and the state
 * handles read, replaced on each change.
 */
import t from 'tap'
import { Held, type HeldHost } from '../../../lib/client/held.js'
import type { ClientMessage } from '../../../lib/client/frames.js'
import { fakeClock } from '../fixtures/fakes.js'

interface Counter { revision: number, n: number }

/** The least a Held is: its subscribe sent, a refusal retried, a change made. */
class Probe extends Held<Counter> {
  subscribes = 0
  override subscribe (): void {
    if (this.host.send({ type: 'subscribe', id: this.key, data: { entityType: 'Probe', entityId: 'p1' } })) {
      this.subscribes++
      this.phase = 'subscribed'
    }
  }

  refused (): void { this.retry() }
  changed (n: number, bump?: boolean): void { this.update({ n }, bump) }
}

/** A held probe, and what its host was asked: the frames sent, the ends told. */
function probe (random = 0): { held: Probe, host: { sent: ClientMessage[], released: unknown[] } } {
  const sent: ClientMessage[] = []
  const released: unknown[] = []
  const host: HeldHost = { send: (message) => sent.push(message) > 0, random: () => random, released: (h) => { released.push(h) } }
  return { held: new Probe('Probe:p1', { revision: 0, n: 0 }, host), host: { sent, released } }
}

const unsubscribe = { type: 'unsubscribe', data: { subscriptionId: 'Probe:p1' } }

t.test('holds are counted: the last release unsubscribes a tick later, once', async (t) => {
  const clock = fakeClock(t)
  const { held, host } = probe()
  held.subscribe()
  held.hold()
  held.hold()
  held.release()
  clock.advance(1)
  t.same([held.phase, host.sent.length], ['subscribed', 1], 'one holder left: nothing sent')
  held.release()
  t.equal(host.sent.length, 1, 'not at once')
  clock.advance(1)
  t.same(host.sent.at(-1), unsubscribe, 'the next tick unsubscribes')
  t.equal(held.phase, 'released')
  t.same(host.released, [held], 'the client is told to forget it')
  held.release()
  clock.advance(1)
  t.same([host.sent.length, host.released.length], [2, 1], 'a release after the end sends nothing')
})

t.test('a hold within the tick calls the release off (React StrictMode\'s unmount and mount)', async (t) => {
  const clock = fakeClock(t)
  const { held, host } = probe()
  held.subscribe()
  held.hold()
  held.release()
  held.hold()
  clock.advance(10)
  t.same([held.phase, host.sent.length, host.released.length], ['subscribed', 1, 0])
  held.release()
  held.close()
  clock.advance(10)
  t.same([held.phase, host.sent.length, host.released.length], ['released', 1, 0], 'closed (the client destroyed): no unsubscribe')
})

t.test('a refusal of the moment is sent again after a random delay; a closed socket or the end drops the retry', async (t) => {
  const clock = fakeClock(t)
  const { held } = probe(0.5)
  held.subscribe()
  held.refused()
  t.equal(held.phase, 'unsubscribed', 'the server holds nothing of it')
  clock.advance(749)
  t.equal(held.subscribes, 1)
  clock.advance(1)
  t.same([held.subscribes, held.phase], [2, 'subscribed'], 'sent again after 250 + 0.5 × 1000 ms')

  held.refused()
  held.refused()
  clock.advance(750)
  t.equal(held.subscribes, 3, 'two refusals in a row: one retry')

  held.refused()
  held.onClose()
  clock.advance(2000)
  t.same([held.subscribes, held.phase], [3, 'unsubscribed'], 'the socket closed: the reopen sends it, not the retry')

  held.subscribe()
  held.refused()
  held.close()
  clock.advance(2000)
  t.same([held.subscribes, held.phase], [4, 'released'], 'ended: no retry')
  held.onClose()
  t.equal(held.phase, 'released', 'and a closing socket does not bring it back')
})

t.test('the state is replaced on each change and told to the watchers', async (t) => {
  const { held } = probe()
  const seen: Counter[] = []
  held.watchers.add((state) => seen.push(state))
  const first = held.snapshot
  held.changed(1)
  t.not(held.snapshot, first, 'a new object')
  t.same(first, { revision: 0, n: 0 }, 'the one before unchanged')
  t.same(held.snapshot, { revision: 1, n: 1 })
  held.changed(2, false)
  t.same(held.snapshot, { revision: 1, n: 2 }, 'a change that does not count keeps the revision')
  t.same(seen, [{ revision: 1, n: 1 }, { revision: 1, n: 2 }], 'each watcher gets each new state')
  t.equal(seen[1], held.snapshot)
})
