/**
 * Receiver counts (lib/ws/watchers.ts) on a fake clock, with a store whose count the test sets: a socket gets the
 * count when it asks, then only a count that differs from the one it was sent last, whenever the interval's poll
 * finds one; a socket that joins later gets the count at once without the others being sent it again.
 */
import t from 'tap'
import { WatcherCounts } from '../../../lib/ws/watchers.js'
import type { Receiver } from '../../../lib/ws/fanout.js'
import type { InterestStore } from '../../../lib/interest/interest.js'
import { fakeClock, recordingLogger, turn } from '../fixtures/fakes.js'

const INTERVAL = 1000
const ref = { entityType: 'RugbyGameState', entityId: 'match-1' }

/** A socket that keeps the counts it was sent. */
function socket (): Receiver & { counts: number[] } {
  const counts: number[] = []
  return { counts, deliver: (frame) => { counts.push((JSON.parse(frame) as { data: { count: number } }).data.count); return true } }
}

t.test('a count goes to a socket once, and again only when it changed', async (t) => {
  const clock = fakeClock(t)
  let count = 1
  const store = { watchers: async () => count } as unknown as InterestStore
  const counts = new WatcherCounts(store, INTERVAL, recordingLogger().log)
  t.teardown(() => counts.close())
  const poll = async (): Promise<void> => {
    clock.advance(INTERVAL)
    await turn()
  }

  const a = socket()
  counts.add(a, 'c:RugbyGameState:match-1', ref)
  await turn()
  t.same(a.counts, [1], 'the count when it asks')
  await poll()
  await poll()
  t.same(a.counts, [1], 'not again while it stays the same')

  count = 2
  const b = socket()
  counts.add(b, 'c:RugbyGameState:match-1', ref)
  await turn()
  t.same(b.counts, [2], 'a socket that joins gets the count at once')
  await poll()
  t.same(a.counts, [1, 2], 'the others get the change at the next poll')
  t.same(b.counts, [2], 'and the one that has it, nothing')
  await poll()
  t.same([a.counts, b.counts], [[1, 2], [2]], 'nothing while it stays the same')

  count = 1
  counts.remove(b, 'c:RugbyGameState:match-1')
  await poll()
  t.same([a.counts, b.counts], [[1, 2, 1], [2]], 'a socket that stopped asking gets nothing')
})
