/**
 * An instance's presence (lib/presence/presence.ts) against a bus and a store in memory, on a fake clock: what it
 * publishes and writes for its own users (one entry per user, whatever its sockets), messages of other instances
 * applied (and those arriving while the store is read applied after it, the newer winning), its own messages ignored,
 * signals across instances, and the sweep that drops instances whose heartbeat lapsed and renews its own entries.
 */
import t from 'tap'
import { Presence } from '../../../lib/presence/presence.js'
import { memberMessage, signalMessage } from '../../../lib/presence/messages.js'
import type { PresenceStore, StoredEntry } from '../../../lib/presence/store.js'
import type { Entry } from '../../../lib/presence/room.js'
import type { PubSub } from '../../../lib/bus/bus.js'
import type { Receiver } from '../../../lib/ws/fanout.js'
import { WireError, encodeSignal } from '../../../lib/protocol/index.js'
import { Deferred, fakeClock, recordingLogger, turn, type TestContext } from '../fixtures/fakes.js'

const CHANNEL = 'cf:Team:team-1'
const ref = { entityType: 'Team', entityId: 'team-1', tenantId: null }
const settings = { maxMembers: 10, intervalMs: 100, infoMaxBytes: 1024 }
const signals = { ratePerSecond: 2, maxBytes: 100 }

class FakeStore implements PresenceStore {
  readonly writes: Array<[string, Entry | null]> = []
  stored: StoredEntry[] = []
  loading: Deferred | null = null
  liveSet = new Set<string>(['me'])
  refreshed: string[][] = []
  forgotten: Array<[string, string[]]> = []
  failing = false
  async write (_channel: string, userId: string, entry: Entry | null): Promise<void> {
    if (this.failing) throw new Error('store down')
    this.writes.push([userId, entry])
  }

  async load (): Promise<StoredEntry[]> {
    await this.loading?.promise
    if (this.failing) throw new Error('store down')
    return this.stored
  }

  async forget (_channel: string, instance: string, userIds: readonly string[]): Promise<void> { this.forgotten.push([instance, [...userIds]]) }
  async refresh (channels: readonly string[]): Promise<void> { this.refreshed.push([...channels]) }
  async live (): Promise<Set<string>> { return this.liveSet }
}

function setup (t: TestContext): { presence: Presence, store: FakeStore, published: string[], warnings: string[], bus: { failing: boolean } } {
  const store = new FakeStore()
  const published: string[] = []
  const failing = { failing: false }
  const bus = {
    publish: async (_channel: string, message: string) => {
      if (failing.failing) throw new Error('bus down')
      published.push(message)
    }
  } as unknown as PubSub
  const { log, warnings } = recordingLogger()
  const presence = new Presence(store, bus, 'me', log, { Team: { access: 'public', presence: settings, signals } }, 1000)
  t.teardown(() => presence.close())
  return { presence, store, published, warnings, bus: failing }
}
function socket (): Receiver & { frames: any[] } {
  const frames: any[] = []
  return { frames, deliver: (frame) => { frames.push(JSON.parse(frame)); return true } }
}

t.test('own users: one entry each, written and published; other instances\' messages applied', async (t) => {
  const clock = fakeClock(t)
  const { presence, store, published } = setup(t)
  t.same(presence.settingsOf('Team'), { presence: settings, signals })
  t.equal(presence.settingsOf('Other'), null)
  const [tab1, tab2, watcher] = [socket(), socket(), socket()]
  await presence.enter(watcher, CHANNEL, ref, settings, signals, null, undefined)
  await presence.enter(tab1, CHANNEL, ref, settings, signals, 'u1', { a: 1 })
  const reply = await presence.enter(tab2, CHANNEL, ref, settings, signals, 'u1', undefined)
  t.same(reply.members, [{ userId: 'u1', info: { a: 1 }, connections: 2 }])
  t.same(store.writes.map(([u, e]) => [u, e?.c, e?.info]), [['u1', 1, { a: 1 }], ['u1', 2, { a: 1 }]], 'one entry for the user, its connections counted')
  t.equal(published.length, 2)

  presence.onBusMessage(CHANNEL, memberMessage('other', 'u2', 5, { c: 1, info: 'x', at: Date.now(), v: 5 }))
  presence.onBusMessage(CHANNEL, memberMessage('other', 'u2', 4, null))
  presence.onBusMessage(CHANNEL, memberMessage('me', 'u9', 99, { c: 1, at: 0, v: 99 }))
  presence.onBusMessage(CHANNEL, 'pr1 garbage')
  presence.onBusMessage('cf:Team:nobody', memberMessage('other', 'u3', 6, { c: 1, at: 0, v: 6 }))
  clock.advance(1)
  t.same(watcher.frames.at(-1).data, { entityType: 'Team', entityId: 'team-1', count: 2, joined: [{ userId: 'u1', info: { a: 1 } }, { userId: 'u2', info: 'x' }] },
    'an older removal, its own message, and a room not here are ignored')
  t.equal(presence.counters.unreadable, 1)

  t.equal(presence.setInfo(tab2, CHANNEL, { a: 2 }), null)
  t.equal(presence.setInfo(watcher, CHANNEL, {}), WireError.notMember)
  t.equal(presence.setInfo(tab1, 'cf:Team:else', {}), WireError.notMember)
  presence.leave(tab1, CHANNEL)
  presence.leave(tab2, CHANNEL)
  t.same(store.writes.at(-1), ['u1', null], 'the last socket of the user: its entry removed')
  presence.leave(tab2, CHANNEL)
  presence.leave(watcher, CHANNEL)
  t.equal(presence.size, 0, 'the room goes with its last socket')
})

t.test('messages that arrive while the store is read are applied after it, the newer winning', async (t) => {
  const clock = fakeClock(t)
  const { presence, store } = setup(t)
  store.loading = new Deferred()
  store.stored = [
    { instance: 'other', userId: 'u1', entry: { c: 1, info: 'stored', at: 1, v: 7 } },
    { instance: 'other', userId: 'u2', entry: { c: 1, at: 1, v: 3 } },
    { instance: 'gone', userId: 'u3', entry: { c: 1, at: 1, v: 1 } },
    { instance: 'me', userId: 'u4', entry: { c: 1, at: 1, v: 1 } }
  ]
  store.liveSet = new Set(['me', 'other'])
  const watcher = socket()
  const entered = presence.enter(watcher, CHANNEL, ref, settings, null, null, undefined)
  presence.onBusMessage(CHANNEL, memberMessage('other', 'u1', 6, { c: 1, info: 'older', at: 1, v: 6 }))
  presence.onBusMessage(CHANNEL, memberMessage('other', 'u2', 4, null))
  store.loading.resolve()
  const reply = await entered
  t.same(reply, { count: 1, members: [{ userId: 'u1', info: 'stored', connections: 1 }], truncated: false }, 'stored entries of live instances, then the newer messages')
  t.same(store.forgotten, [['gone', ['u3']]], 'those of an instance that stopped are removed from the store')
  clock.advance(1)
})

t.test('a store and a bus that fail: logged and counted, the room works', async (t) => {
  const { presence, store, warnings, bus } = setup(t)
  store.failing = true
  bus.failing = true
  const s = socket()
  t.same(await presence.enter(s, CHANNEL, ref, settings, null, 'u1', undefined), { count: 1, members: [{ userId: 'u1', connections: 1 }], truncated: false })
  await turn()
  t.equal(presence.counters.storeErrors, 2, 'the read and the write')
  t.equal(presence.counters.publishErrors, 1)
  t.ok(warnings.length >= 2)
})

t.test('signals: to the others here and over the bus; from the bus to everyone here', async (t) => {
  fakeClock(t)
  const { presence, published } = setup(t)
  const [sender, other] = [socket(), socket()]
  await presence.enter(sender, CHANNEL, ref, settings, signals, 'u1', undefined)
  await presence.enter(other, CHANNEL, ref, settings, signals, null, undefined)
  t.equal(presence.signal(sender, CHANNEL, '{"x":1}'), null)
  t.equal(presence.signal(sender, CHANNEL, '{"x":2}'), null)
  t.equal(presence.signal(sender, CHANNEL, '{"x":3}'), WireError.rateLimited)
  t.equal(presence.signal(other, CHANNEL, '1'), WireError.notMember)
  t.same(other.frames.filter((f) => f.type === 'signal').map((f) => f.data.data), [{ x: 1 }, { x: 2 }])
  t.same(sender.frames.filter((f) => f.type === 'signal'), [], 'never echoed')
  t.ok(published.at(-1)?.startsWith('pr1 s me u1\n'))
  presence.onBusMessage(CHANNEL, signalMessage('other', 'u7', encodeSignal(ref, 'u7', '"hi"')))
  t.same(sender.frames.filter((f) => f.type === 'signal').map((f) => f.data.from.userId), ['u7'], 'another instance\'s signal reaches the sender here too')
  t.equal(presence.signalsOf(CHANNEL), signals)
})

t.test('the sweep: renews its own entries, drops instances whose heartbeat lapsed', async (t) => {
  const clock = fakeClock(t)
  const { presence, store } = setup(t)
  const [mine, watcher] = [socket(), socket()]
  await presence.enter(mine, CHANNEL, ref, settings, null, 'u1', undefined)
  await presence.enter(watcher, CHANNEL, ref, settings, null, null, undefined)
  presence.onBusMessage(CHANNEL, memberMessage('other', 'u2', 1, { c: 1, at: 1, v: 1 }))
  store.liveSet = new Set(['me', 'other'])
  clock.advance(1000)
  await turn()
  t.same(store.refreshed, [[CHANNEL]], 'its own entries renewed')
  t.same(store.forgotten, [], 'a live instance stays')
  store.liveSet = new Set(['me'])
  clock.advance(1000)
  await turn()
  await turn()
  t.same(store.forgotten, [['other', ['u2']]], 'a lapsed one goes, in the store too')
  clock.advance(100)
  t.same(watcher.frames.at(-1).data.left, [{ userId: 'u2' }])
})
