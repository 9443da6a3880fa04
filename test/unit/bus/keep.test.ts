/**
 * keepHistories (lib/bus/history.ts), on a fake clock: every third of the shortest history ttl the channels this
 * instance's sockets watch are kept, grouped by their type's limits; a type without history is left alone; a failure
 * is logged once per sweep and the next sweep tries again; no sweep overlaps another; the stop ends it.
 */
import t from 'tap'
import { keepHistories } from '../../../lib/bus/history.js'
import type { ChannelHistory, HistoryLimits } from '../../../lib/bus/history.js'
import { resolveOptions } from '../../../lib/options.js'
import { Deferred, fakeClock, recordingLogger, turn } from '../fixtures/fakes.js'

const options = resolveOptions({
  entities: { Match: { access: 'public' }, Board: { access: 'public', history: { ttlSeconds: 30 } }, Chat: { access: 'public', history: false } },
  history: { ttlSeconds: 60 }
})

t.test('the watched channels are kept every third of the shortest ttl, by their type\'s limits', async (t) => {
  const clock = fakeClock(t)
  const calls: Array<{ channels: readonly string[], limits: HistoryLimits }> = []
  let hold: Deferred | null = null
  let failing: Error | null = null
  const history = {
    keep: async (channels: readonly string[], limits: HistoryLimits) => {
      calls.push({ channels, limits })
      if (hold !== null) await hold.promise
      if (failing !== null) throw failing
    }
  } as unknown as ChannelHistory
  const watched = new Map([['cf:Match:1', { entityType: 'Match' }], ['cf:Match:2', { entityType: 'Match' }], ['cf:Board:1', { entityType: 'Board' }], ['cf:Chat:1', { entityType: 'Chat' }]])
  const { log, warnings } = recordingLogger()
  const stop = keepHistories(history, { channels: () => watched.entries() }, options, log)
  clock.advance(9_999)
  await turn()
  t.same(calls, [], 'nothing before a third of the shortest ttl (30 s)')
  clock.advance(1)
  await turn()
  t.same(calls, [
    { channels: ['cf:Match:1', 'cf:Match:2'], limits: { size: 100, ttlSeconds: 60 } },
    { channels: ['cf:Board:1'], limits: { size: 100, ttlSeconds: 30 } }
  ], 'each type\'s channels together, by its limits; a type without history left alone')

  calls.length = 0
  hold = new Deferred()
  failing = new Error('broker gone')
  clock.advance(10_000)
  await turn()
  clock.advance(10_000)
  await turn()
  t.equal(calls.length, 1, 'a sweep under way is not overlapped')
  hold.resolve()
  for (let i = 0; i < 5; i++) await turn()
  t.match(warnings, [/keeping the watched channels' history failed/], 'a failure is logged once for the sweep')

  calls.length = 0
  hold = null
  failing = null
  stop()
  clock.advance(60_000)
  await turn()
  t.same(calls, [], 'stopped')
})

t.test('no history, or outbox mode: nothing to keep', async (t) => {
  const clock = fakeClock(t)
  const { log } = recordingLogger()
  let kept = 0
  const history = { keep: async () => { kept++ } } as unknown as ChannelHistory
  const watched = { channels: () => new Map([['cf:Match:1', { entityType: 'Match' }]]).entries() }
  keepHistories(null, watched, options, log)()
  const outbox = resolveOptions({ entities: { Match: { access: 'public' } }, capture: { mode: 'outbox' }, databases: [{ name: 'main', url: 'postgres://unused/main' }] })
  const stop = keepHistories(history, watched, outbox, log)
  clock.advance(600_000)
  await turn()
  t.equal(kept, 0)
  stop()
})
