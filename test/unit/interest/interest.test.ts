/**
 * What the bus and the cluster are told of this instance's watchers. Bus membership, against a bus in memory whose
 * subscribe and unsubscribe calls the test answers: whatever the order of sync() calls and answers, the bus ends
 * subscribed exactly to the watched channels; syncs made during a round go out together as the next one; a failed
 * round rejects its waiters and a later one retries; the interest store is told the counts, after the subscribe.
 * What every cluster interest store shares, through a subclass keeping its writes in memory, on a fake clock: first
 * and last watchers written before update() resolves, counts in between at the 250 ms flush, type totals, the
 * heartbeat, and rewrite() after the broker lost its state. The memory bus's store: a channel whose last watcher left
 * counts as watched for its type's linger, then not.
 */
import t from 'tap'
import { BusMembership } from '../../../lib/ws/membership.js'
import { ClusterInterest } from '../../../lib/interest/cluster.js'
import { LocalInterest, type InterestStore, type InterestUpdate } from '../../../lib/interest/interest.js'
import { LocalSubscriptionStore } from '../../../lib/interest/local.js'
import { ScriptedBus, fakeClock, recordingLogger, stateOf, turn, type TestContext } from '../fixtures/fakes.js'

/** The interest store's side: what it was told, in calls. */
class RecordingInterest implements InterestStore {
  readonly local = false
  readonly updates: InterestUpdate[][] = []
  failing: Error | null = null

  async update (updates: readonly InterestUpdate[]): Promise<void> {
    if (this.failing !== null) throw this.failing
    this.updates.push([...updates])
  }

  /** the last count each channel was given */
  counts (): Map<string, number> {
    return new Map(this.updates.flat().map((u) => [u.channel, u.count]))
  }

  isWatched (): boolean { return false }
  async watchers (): Promise<number> { return 0 }
  async totals (): Promise<Record<string, number>> { return {} }
  async close (): Promise<void> {}
}

function setup (): { bus: ScriptedBus, interest: RecordingInterest, watchers: Map<string, number>, membership: BusMembership } {
  const bus = new ScriptedBus()
  const interest = new RecordingInterest()
  const watchers = new Map<string, number>()
  const membership = new BusMembership(bus, interest, (channel) => watchers.get(channel) ?? 0)
  return { bus, interest, watchers, membership }
}

/** Answers every call, as they come, until no round is left. */
async function answerAll (bus: ScriptedBus): Promise<void> {
  await turn()
  while (bus.answerNext()) await turn()
}

const watched = (watchers: Map<string, number>): string[] => [...watchers].filter(([, n]) => n > 0).map(([channel]) => channel).sort()

t.test('BusMembership: a first watcher: subscribed, then the interest told, then the sync resolves', async (t) => {
  const { bus, interest, watchers, membership } = setup()
  watchers.set('A', 3)
  const synced = membership.sync('A', 'Team')
  await turn()
  t.same(bus.callLog, [{ op: 'subscribe', channels: ['A'] }])
  t.same(interest.updates, [], 'the interest waits for the subscribe: a publisher that sees it finds the subscription')
  t.equal(await stateOf(synced), 'pending')
  bus.answerNext()
  await synced
  t.same(interest.updates, [[{ channel: 'A', entityType: 'Team', count: 3 }]])
  t.same([...bus.channels], ['A'])
  t.equal(membership.channels, 1)

  watchers.set('A', 2)
  await membership.sync('A', 'Team')
  t.equal(bus.callLog.length, 1, 'a count change needs no bus call')
  t.same(interest.updates.at(-1), [{ channel: 'A', entityType: 'Team', count: 2 }], 'but the new count is told')
})

t.test('BusMembership: syncs made while a round is under way go out as one next round', async (t) => {
  const { bus, interest, watchers, membership } = setup()
  watchers.set('A', 1)
  const first = membership.sync('A', 'Team')
  await turn()
  const channels = Array.from({ length: 100 }, (_, i) => `C${i}`)
  const later: Array<Promise<void>> = []
  for (const channel of channels) {
    watchers.set(channel, 1)
    later.push(membership.sync(channel, 'Team'), membership.sync(channel, 'Team'))
  }
  await turn()
  t.equal(bus.calls.length, 1, 'nothing more goes out while the first round waits')
  bus.answerNext()
  await first
  await turn()
  t.same(bus.callLog.slice(1), [{ op: 'subscribe', channels }], 'one subscribe call for the hundred channels')
  t.equal(await stateOf(Promise.race(later)), 'pending', 'their syncs wait for their round')
  bus.answerNext()
  await Promise.all(later)
  t.equal(interest.updates.length, 2)
  t.equal(interest.updates[1].length, 100, 'one count per channel, however many syncs asked')
  t.equal(membership.channels, 101)
})

t.test('BusMembership: a watcher that leaves while its subscribe is on the way, and one that comes back during the unsubscribe', async (t) => {
  const { bus, watchers, membership } = setup()
  watchers.set('A', 1)
  const joined = membership.sync('A', 'Team')
  await turn()
  watchers.set('A', 0)
  const left = membership.sync('A', 'Team')
  bus.answerNext()
  await joined
  await turn()
  t.same(bus.callLog.at(-1), { op: 'unsubscribe', channels: ['A'] }, 'the next round sees nobody watches')
  watchers.set('A', 1)
  const back = membership.sync('A', 'Team')
  bus.answerNext()
  await left
  await answerAll(bus)
  await back
  t.same(bus.callLog.map((c) => c.op), ['subscribe', 'unsubscribe', 'subscribe'], 'a late unsubscribe does not cancel the new watcher')
  t.same([...bus.channels], ['A'])
})

t.test('BusMembership: a failed subscribe rejects that round\'s waiters; a later round subscribes again', async (t) => {
  const { bus, interest, watchers, membership } = setup()
  for (const channel of ['X', 'A', 'B', 'C']) watchers.set(channel, 1)
  const x = membership.sync('X', 'Team')
  await turn()
  // A and B wait for the next round, which takes them together
  const a = membership.sync('A', 'Team')
  const b = membership.sync('B', 'Team')
  bus.answerNext()
  await x
  await turn()
  t.same(bus.callLog.at(-1), { op: 'subscribe', channels: ['A', 'B'] })
  const c = membership.sync('C', 'Team')
  bus.answerNext(new Error('broker down'))
  await Promise.all([t.rejects(a, { message: 'broker down' }), t.rejects(b, { message: 'broker down' }, 'every waiter of the round')])
  t.equal(interest.updates.length, 1, 'the interest is not told of a subscription that failed')
  await turn()
  t.same(bus.callLog.at(-1), { op: 'subscribe', channels: ['C'] }, 'the next round runs anyway')
  bus.answerNext()
  await c
  t.same([...bus.channels].sort(), ['C', 'X'])
  t.equal(membership.channels, 2, 'A and B are not counted as subscribed')

  const again = membership.sync('A', 'Team')
  await answerAll(bus)
  await again
  t.same(bus.callLog.at(-1), { op: 'subscribe', channels: ['A'] }, 'retried')
  t.same([...bus.channels].sort(), ['A', 'C', 'X'])
})

t.test('BusMembership: a failed unsubscribe keeps the channel subscribed; a later round unsubscribes', async (t) => {
  const { bus, watchers, membership } = setup()
  bus.answerAtOnce = true
  watchers.set('A', 1)
  await membership.sync('A', 'Team')
  bus.answerAtOnce = false
  watchers.set('A', 0)
  const left = membership.sync('A', 'Team')
  await turn()
  bus.answerNext(new Error('broker down'))
  await t.rejects(left, { message: 'broker down' })
  t.equal(membership.channels, 1)
  const again = membership.sync('A', 'Team')
  await answerAll(bus)
  await again
  t.same(bus.callLog.map((c) => c.op), ['subscribe', 'unsubscribe', 'unsubscribe'])
  t.equal(membership.channels, 0)
  t.same([...bus.channels], [])
})

t.test('BusMembership: a failed interest update rejects the waiters, the subscription stays, a later round tells the count', async (t) => {
  const { bus, interest, watchers, membership } = setup()
  bus.answerAtOnce = true
  interest.failing = new Error('store down')
  watchers.set('A', 1)
  await t.rejects(membership.sync('A', 'Team'), { message: 'store down' })
  t.same([...bus.channels], ['A'])
  interest.failing = null
  await membership.sync('A', 'Team')
  t.equal(bus.callLog.length, 1, 'not subscribed twice')
  t.same(interest.counts(), new Map([['A', 1]]))
})

/** mulberry32: a small seeded generator, so a failing interleaving can be replayed by its seed */
function random (seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6D2B79F5) | 0
    let r = Math.imul(a ^ (a >>> 15), 1 | a)
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296
  }
}

t.test('BusMembership: any interleaving of syncs and answers ends with the bus subscribed exactly to the watched channels', async (t) => {
  const channels = ['A', 'B', 'C', 'D', 'E']
  for (let seed = 1; seed <= 300; seed++) {
    const next = random(seed)
    const { bus, interest, watchers, membership } = setup()
    // each sync's outcome, followed from the call on (a rejection is an outcome here, not an unhandled error)
    const outcomes: Array<'pending' | 'resolved' | 'rejected'> = []
    const sync = (channel: string): void => {
      const i = outcomes.push('pending') - 1
      membership.sync(channel, 'Team').then(() => { outcomes[i] = 'resolved' }, () => { outcomes[i] = 'rejected' })
    }
    let failures = 0
    for (let step = 0; step < 60; step++) {
      const r = next()
      if (r < 0.5) {
        const channel = channels[Math.floor(next() * channels.length)]
        const n = watchers.get(channel) ?? 0
        watchers.set(channel, Math.max(0, n + (next() < 0.6 ? 1 : -1)))
        sync(channel)
      } else if (r < 0.85) {
        bus.answerNext()
      } else if (r < 0.92) {
        if (bus.answerNext(new Error('broker down'))) failures++
      } else {
        await turn()
      }
    }
    // a caller whose sync failed syncs again (Fanout does): here, every channel once more
    for (const channel of channels) sync(channel)
    await answerAll(bus)
    const expected = watched(watchers)
    const ok = t.equal(outcomes.filter((s) => s === 'pending').length, 0, `seed ${seed}: every sync settled`) &&
      t.same([...bus.channels].sort(), expected, `seed ${seed}: the bus delivers exactly the watched channels`) &&
      t.equal(membership.channels, expected.length, `seed ${seed}: membership agrees`) &&
      t.same([...interest.counts()].filter(([channel, n]) => n !== (watchers.get(channel) ?? 0)), [],
        `seed ${seed}: the last count told of each channel is its count now`) &&
      t.equal(outcomes.filter((s) => s === 'rejected').length > 0, failures > 0, `seed ${seed}: rejections only from failed calls`)
    if (!ok) break
  }
})

/** Writes what a store would write, as it is when the write is issued. */
class MemoryInterest extends ClusterInterest {
  /** each writeChannels call: channel → the count written (0: the entry removed) */
  readonly channelWrites: Array<Record<string, number>> = []
  /** each writeChannels call: whether its channels crossed between no watcher and some */
  readonly crossings: boolean[] = []
  /** while set, channel writes wait for it (a slow store) */
  slow: Promise<void> | null = null
  /** channel writes under way */
  writing = 0
  readonly typeWrites: Array<Record<string, number>> = []
  heartbeats = 0
  /** while set, heartbeats wait for it (a slow store) */
  slowBeat: Promise<void> | null = null
  failing: Error | null = null
  snapshotRows: InterestUpdate[] = []
  readonly warnings: string[]

  constructor (ttlMs = 15_000) {
    const { log, warnings } = recordingLogger()
    super('instance-1', ttlMs, () => this.snapshotRows, log)
    this.warnings = warnings
    this.startTimers()
  }

  async liveInstances (): Promise<Set<string>> {
    return new Set([this.instanceId])
  }

  protected async writeChannels (channels: readonly string[], crossed: boolean): Promise<void> {
    if (this.failing !== null) throw this.failing
    this.channelWrites.push(Object.fromEntries(channels.map((c) => [c, this.countOf(c)])))
    this.crossings.push(crossed)
    this.writing++
    if (this.slow !== null) await this.slow
    this.writing--
  }

  protected async writeTypes (types: readonly string[]): Promise<void> {
    this.typeWrites.push(Object.fromEntries(types.map((type) => [type, this.typeCounts.get(type) ?? 0])))
  }

  protected async heartbeat (): Promise<void> {
    this.heartbeats++
    if (this.slowBeat !== null) await this.slowBeat
  }

  /** the broker lost its state: what a heartbeat that notices does */
  async lost (): Promise<void> {
    await this.rewrite()
  }

  async isWatched (channel: string): Promise<boolean> { return this.countOf(channel) > 0 }
  async watchers (channel: string): Promise<number> { return this.countOf(channel) }
  async totals (): Promise<Record<string, number>> { return Object.fromEntries(this.typeCounts) }
  async close (): Promise<void> { await this.stopTimers() }
}

function store (t: TestContext, ttlMs?: number): { clock: ReturnType<typeof fakeClock>, interest: MemoryInterest } {
  const clock = fakeClock(t)
  const interest = new MemoryInterest(ttlMs)
  t.teardown(async () => await interest.close())
  return { clock, interest }
}

/** Advances to the next flush and lets its writes run. */
async function flush (clock: ReturnType<typeof fakeClock>): Promise<void> {
  clock.advance(250)
  await turn()
}

const team = (channel: string, count: number): InterestUpdate => ({ channel, entityType: 'Team', count })

t.test('ClusterInterest: a first watcher is written before update() resolves; counts in between wait for the flush', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 1)])
  t.same(interest.channelWrites, [{ A: 1 }], 'the first watcher, at once')
  await interest.update([team('A', 2)])
  await interest.update([team('A', 3)])
  t.equal(interest.channelWrites.length, 1, 'not the counts in between')
  clock.advance(249)
  await turn()
  t.equal(interest.channelWrites.length, 1)
  await flush(clock)
  t.same(interest.channelWrites, [{ A: 1 }, { A: 3 }], 'the flush writes the latest count once')
  t.same(interest.crossings, [true, false], 'the first watcher crossed from none; the flush writes a count only')
  t.same(interest.typeWrites, [{ Team: 3 }], 'and the type total')
  await flush(clock)
  t.equal(interest.channelWrites.length, 2, 'nothing changed: nothing written')
  t.equal(interest.typeWrites.length, 1)
})

t.test('ClusterInterest: the last watcher is written at once, and the flush does not write it again', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 2)])
  await interest.update([team('A', 1)])
  await interest.update([team('A', 0)])
  t.same(interest.channelWrites, [{ A: 2 }, { A: 0 }], 'the entry removed at once')
  t.equal(await interest.watchers('A'), 0)
  await flush(clock)
  t.same(interest.channelWrites, [{ A: 2 }, { A: 0 }])
  t.same(interest.typeWrites, [{ Team: 0 }])
})

t.test('ClusterInterest: many firsts and lasts in one update: one write', async (t) => {
  const { interest } = store(t)
  await interest.update([team('A', 1), team('B', 1)])
  await interest.update([team('A', 0), team('B', 2), team('C', 1), { channel: 'P', entityType: 'Player', count: 4 }])
  t.same(interest.channelWrites, [{ A: 1, B: 1 }, { A: 0, C: 1, P: 4 }], 'B went 1 → 2: not at once')
})

t.test('ClusterInterest: type totals add up the channels of each type', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 2), team('B', 3), { channel: 'P', entityType: 'Player', count: 1 }])
  await flush(clock)
  t.same(interest.typeWrites.at(-1), { Team: 5, Player: 1 })
  await interest.update([team('A', 0)])
  await flush(clock)
  t.same(interest.typeWrites.at(-1), { Team: 3 }, 'only the types that changed')
  t.same(await interest.totals(), { Team: 3, Player: 1 })
})

/** Advances the clock `ms` in steps of 100 ms, letting what each step started run. */
async function pass (clock: ReturnType<typeof fakeClock>, ms: number): Promise<void> {
  for (let i = 0; i < ms / 100; i++) {
    clock.advance(100)
    await turn()
  }
}

t.test('ClusterInterest: the heartbeat runs every third of the TTL, at least every 100 ms', async (t) => {
  const { clock, interest } = store(t, 3000)
  await pass(clock, 1000)
  t.equal(interest.heartbeats, 1, 'TTL 3 s: every second')
  await pass(clock, 1000)
  t.equal(interest.heartbeats, 2)
  const fast = new MemoryInterest(30)
  t.teardown(async () => await fast.close())
  clock.advance(99)
  t.equal(fast.heartbeats, 0)
  clock.advance(1)
  t.equal(fast.heartbeats, 1, 'TTL 30 ms: every 100 ms, not every 10')
})

t.test('ClusterInterest: a slow heartbeat is not overlapped; a close waits for it (bounded), so none lands after', async (t) => {
  const { clock, interest } = store(t, 3000)
  let release!: () => void
  interest.slowBeat = new Promise((resolve) => { release = resolve })
  await pass(clock, 3000)
  t.equal(interest.heartbeats, 1, 'three intervals, one heartbeat on its way')
  const closed = interest.close()
  t.equal(await stateOf(closed), 'pending', 'the close waits for it')
  release()
  t.equal(await stateOf(closed), 'resolved')
  await pass(clock, 3000)
  t.equal(interest.heartbeats, 1, 'none after the close')

  const stuck = new MemoryInterest(3000)
  stuck.slowBeat = new Promise(() => {})
  await pass(clock, 1000)
  const closing = stuck.close()
  clock.advance(999)
  t.equal(await stateOf(closing), 'pending')
  clock.advance(1)
  t.equal(await stateOf(closing), 'resolved', 'a store that never answers holds the close a second at most')
})

t.test('ClusterInterest: a failed flush is logged, and what it did not write is written at the next one', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 1)])
  await interest.update([team('A', 2)])
  interest.failing = new Error('broker down')
  await flush(clock)
  t.same(interest.warnings, ['changefeed: cluster count flush failed'])
  interest.failing = null
  await flush(clock)
  t.same(interest.channelWrites, [{ A: 1 }, { A: 2 }], 'a count that does not change again still reaches the cluster')
  t.same(interest.typeWrites, [{ Team: 2 }])
  await flush(clock)
  t.equal(interest.channelWrites.length, 2, 'once')
})

t.test('ClusterInterest: rewrite() after a loss writes every channel from the local store at once, the type totals at the flush', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 1), team('B', 1)])
  interest.snapshotRows = [team('A', 4), { channel: 'P', entityType: 'Player', count: 2 }]
  await interest.lost()
  t.same(interest.channelWrites.at(-1), { A: 4, B: 0, P: 2 }, 'what the local store holds now; B, gone from it, written as none (an entry of it may have been written again after the loss)')
  t.equal(await interest.watchers('B'), 0)
  await flush(clock)
  t.same(interest.typeWrites.at(-1), { Team: 4, Player: 2 })
  await interest.update([team('A', 5)])
  t.equal(interest.channelWrites.length, 2, 'the counts continue from the rewritten state: A 4 → 5 is not a first')
})

t.test('ClusterInterest: flushes never overlap; a slow one spaces out the next; what changed meanwhile goes in it', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 1)])
  await interest.update([team('A', 2)])
  let release = (): void => {}
  interest.slow = new Promise((resolve) => { release = resolve })
  await flush(clock)
  t.equal(interest.writing, 1, 'the flush writes A: 2, slowly')
  await interest.update([team('A', 3)])
  for (let i = 0; i < 4; i++) await flush(clock)
  t.equal(interest.writing, 1, 'no second flush starts while it writes')
  interest.slow = null
  release()
  await turn()
  await flush(clock)
  t.equal(interest.channelWrites.length, 2, 'the flush took 1 s: the next waits twice that')
  clock.advance(1749)
  await turn()
  t.equal(interest.channelWrites.length, 2)
  clock.advance(1)
  await turn()
  t.same(interest.channelWrites, [{ A: 1 }, { A: 2 }, { A: 3 }], 'then the count that changed meanwhile, once')
  t.same(interest.crossings, [true, false, false])
})

t.test('ClusterInterest: close stops the timers', async (t) => {
  const { clock, interest } = store(t)
  await interest.update([team('A', 1)])
  await interest.update([team('A', 2)])
  await interest.close()
  for (let i = 0; i < 100; i++) clock.advance(250)
  await turn()
  t.equal(interest.channelWrites.length, 1)
  t.equal(interest.heartbeats, 0)
})

t.test('memory bus: a channel whose last watcher left counts as watched for its type\'s linger, then not', async (t) => {
  let now = 1000
  const store = new LocalSubscriptionStore<string>()
  const interest = new LocalInterest(store, (type) => type === 'Kept' ? 5000 : 0, () => now)
  const leave = async (channel: string, entityType: string): Promise<void> => {
    store.remove(channel, 'socket')
    await interest.update([{ channel, entityType, count: 0 }])
  }
  for (const [channel, type] of [['k1', 'Kept'], ['k2', 'Kept'], ['n1', 'None']]) store.add(channel, type, channel, null, 'socket')
  t.ok(interest.isWatched('k1') && interest.isWatched('n1'), 'watched while a socket watches')
  await leave('k1', 'Kept')
  await leave('n1', 'None')
  t.ok(interest.isWatched('k1'), 'a type with a linger: still watched')
  t.notOk(interest.isWatched('n1'), 'a type without: not at once')
  now += 3000
  await leave('k2', 'Kept')
  // k1 comes back and leaves again: its linger starts again
  store.add('k1', 'Kept', 'k1', null, 'socket')
  await interest.update([{ channel: 'k1', entityType: 'Kept', count: 1 }])
  t.equal(interest.lingering, 1, 'a channel watched again does not linger')
  now += 2500
  t.notOk(interest.isWatched('n1'))
  t.ok(interest.isWatched('k2'), 'k2 within its linger')
  await leave('k1', 'Kept')
  now += 3000
  t.notOk(interest.isWatched('k2'), 'k2 past its linger')
  t.ok(interest.isWatched('k1'), 'k1 lingers from its second leave')
  await interest.update([])
  t.equal(interest.lingering, 1, 'those past their linger are forgotten at the next update')
  now += 2000
  t.notOk(interest.isWatched('k1'))
})
