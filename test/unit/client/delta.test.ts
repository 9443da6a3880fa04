/**
 * The SDK's side of `delta` payloads, with no server (a fake host records what a subscription sends, a fake clock
 * runs its timers): patches are applied to the document held and reach holders, the snapshot and every-notification
 * observers as whole documents; a patch on another base, or one that does not apply, never becomes a document: the
 * subscription subscribes again (with `since` from the last whole document) and holders resync unless the server
 * recovered; a full frame at a position already seen still becomes the base; feeds ignore patches.
 */
import t from 'tap'
import { Subscription, type SubscriptionHost } from '../../../lib/client/subscription.js'
import { dispatch } from '../../../lib/client/dispatch.js'
import type { ClientMessage } from '../../../lib/client/frames.js'
import type { DispatchTarget } from '../../../lib/client/receivers.js'
import type { NotificationMessage } from '../../../lib/protocol/messages.js'
import type { PatchOperation } from '../../../lib/protocol/patch.js'
import { fakeClock } from '../fixtures/fakes.js'

function fakeHost (): SubscriptionHost & { sent: ClientMessage[], resyncs: string[] } {
  const host = {
    sent: [] as ClientMessage[],
    resyncs: [] as string[],
    origin: 'me',
    random: () => 0,
    send: (message: ClientMessage) => host.sent.push(message) > 0,
    resynced: (_s: Subscription, reason: string) => { host.resyncs.push(reason) },
    released: () => {},
    snapshotted: () => {}
  }
  return host
}

const base = { entityType: 'Match', entityId: 'm1', changeType: 'updated' as const, timestamp: new Date(0).toISOString() }
const full = (position: string, payload: unknown): NotificationMessage => ({ ...base, payloadType: 'full', position, payload })
const delta = (position: string, basePosition: string, patch: PatchOperation[]): NotificationMessage =>
  ({ ...base, payloadType: 'delta', position, basePosition, patch: patch as NotificationMessage['patch'] })

function subscribed (entityId = 'm1'): { s: Subscription, host: ReturnType<typeof fakeHost>, got: NotificationMessage[], resyncs: string[] } {
  const host = fakeHost()
  const s = new Subscription('Match', entityId, undefined, host)
  const got: NotificationMessage[] = []
  const resyncs: string[] = []
  s.listeners.add({ onNotification: (n) => got.push(n as NotificationMessage), onResync: (r) => resyncs.push(r) })
  s.onOpen(false)
  s.onSubscribed(undefined)
  return { s, host, got, resyncs }
}

t.test('patches are applied to the document held; holders and the snapshot get whole documents, the patch on the side', async (t) => {
  const { s, got } = subscribed()
  s.onNotification(full('n:1', { home: 0, away: 0, players: [{ name: 'A', tries: 0 }] }), true)
  const patch: PatchOperation[] = [{ op: 'replace', path: '/home', value: 5 }, { op: 'replace', path: '/players/0/tries', value: 1 }]
  let made: NotificationMessage | undefined
  s.onNotification(delta('n:2', 'n:1', patch), true, (n) => { made = n })
  t.same(made?.payload, { home: 5, away: 0, players: [{ name: 'A', tries: 1 }] }, 'made whole before the holders get it')
  t.same(got.map((n) => n.payload), [{ home: 0, away: 0, players: [{ name: 'A', tries: 0 }] }, { home: 5, away: 0, players: [{ name: 'A', tries: 1 }] }])
  t.same(got[1].patch, patch, 'the patch comes along')
  t.equal(got[1].basePosition, 'n:1')
  t.same(s.snapshot.payload, { home: 5, away: 0, players: [{ name: 'A', tries: 1 }] })
  t.not(got[0].payload, got[1].payload, 'a new document: the one before is not changed')
  t.same(got[0].payload, { home: 0, away: 0, players: [{ name: 'A', tries: 0 }] })
  s.onNotification(delta('n:3', 'n:2', [{ op: 'remove', path: '/players/0' }]), true)
  t.same(s.snapshot.payload, { home: 5, away: 0, players: [] }, 'patches chain')
})

t.test('a patch on another base never becomes a document: the subscription asks again from the last whole one', async (t) => {
  const clock = fakeClock(t)
  const { s, host, got, resyncs } = subscribed()
  s.onNotification(full('0a0a0a0a:1', { home: 0 }), true)
  s.onNotification(delta('0a0a0a0a:3', '0a0a0a0a:2', [{ op: 'replace', path: '/home', value: 9 }]), true)
  t.equal(got.length, 1, 'the holders did not get it')
  t.same(s.snapshot.payload, { home: 0 }, 'the document is not made of it')
  t.equal(s.phase, 'resuming')
  t.match(host.sent.at(-1), { type: 'subscribe', data: { since: '0a0a0a0a:1' } }, 'since: the last whole document')
  s.onNotification(delta('0a0a0a0a:4', '0a0a0a0a:3', [{ op: 'replace', path: '/home', value: 10 }]), true)
  t.equal(host.sent.length, 2, 'no second subscribe while one is on its way')
  s.onSubscribed(true)
  s.onNotification(full('0a0a0a0a:2', { home: 3 }), true)
  s.onNotification(full('0a0a0a0a:3', { home: 9 }), true)
  clock.advance(100)
  t.same(resyncs, [], 'recovered: the replay carries what was missed')
  t.same(got.map((n) => n.payload), [{ home: 0 }, { home: 3 }, { home: 9 }])
})

t.test('a patch that does not apply: asked again; not recovered, holders resync (patch_failed)', async (t) => {
  const clock = fakeClock(t)
  const { s, host, got, resyncs } = subscribed()
  s.onNotification(full('n:1', { home: 0 }), true)
  s.onNotification(delta('n:2', 'n:1', [{ op: 'replace', path: '/nothing/here', value: 1 }]), true)
  t.equal(got.length, 1)
  t.match(host.sent.at(-1), { type: 'subscribe', data: { since: 'n:1' } })
  s.onSubscribed(false)
  clock.advance(100)
  t.same([resyncs, host.resyncs], [['patch_failed'], ['patch_failed']])
  s.onNotification(delta('n:3', 'n:2', [{ op: 'replace', path: '/home', value: 1 }]), true)
  t.equal(got.length, 1, 'no document held: a patch cannot apply')
  t.match(host.sent.at(-1), { type: 'subscribe', data: { entityId: 'm1' } })
  t.notOk((host.sent.at(-1) as { data: { since?: string } }).data.since, 'no whole document: a fresh subscribe')
  s.onSubscribed(undefined)
  s.onNotification(full('n:4', { home: 2 }), true)
  s.onNotification(delta('n:5', 'n:4', [{ op: 'replace', path: '/home', value: 3 }]), true)
  t.same(s.snapshot.payload, { home: 3 }, 'full again, then patches')
})

t.test('a full frame at a position already seen is still the base; a patch of a position held is a repeat', async (t) => {
  const { s, got } = subscribed()
  s.onNotification(full('n:1', { v: 1, read: 'first' }), true)
  s.onNotification(full('n:1', { v: 1, read: 'again' }), true)
  t.equal(got.length, 1, 'holders do not hear of a repeat')
  s.onNotification(delta('n:2', 'n:1', [{ op: 'replace', path: '/v', value: 2 }]), true)
  t.same(s.snapshot.payload, { v: 2, read: 'again' }, 'the patch applied to the document sent last')
  s.onNotification(delta('n:2', 'n:1', [{ op: 'replace', path: '/v', value: 2 }]), true)
  t.equal(got.length, 2, 'the same patch again: nothing')
  t.equal(s.phase, 'subscribed')
})

t.test('dispatch: observers get a patch only made whole; feeds and deleted changes', async (t) => {
  const { s } = subscribed()
  const feed = new Subscription('Match', '*', undefined, fakeHost())
  feed.onOpen(false)
  feed.onSubscribed(undefined)
  const seen: NotificationMessage[] = []
  const target: DispatchTarget = {
    subscriptions: new Map([[s.key, s], [feed.key, feed]]),
    filters: new Map(),
    presences: new Map(),
    batches: { answered: () => {}, refused: () => false },
    signedIn: () => {},
    tokenRefused: () => {},
    notified: (n) => seen.push(n)
  }
  dispatch({ type: 'notification', data: full('n:1', { v: 1 }) }, target)
  dispatch({ type: 'notification', data: delta('n:2', 'n:1', [{ op: 'add', path: '/w', value: 2 }]) }, target)
  dispatch({ type: 'notification', data: delta('n:4', 'n:3', [{ op: 'add', path: '/w', value: 3 }]) }, target)
  t.same(seen.map((n) => [n.payloadType, n.payload]), [['full', { v: 1 }], ['delta', { v: 1, w: 2 }]], 'the patch that did not apply reached no observer')
  t.same(feed.snapshot.payload, { v: 1 }, 'the feed took the full frame and ignored the patches')
  s.onSubscribed(undefined)
  dispatch({ type: 'notification', data: { ...full('n:5', null), changeType: 'deleted' } }, target)
  t.equal(s.snapshot.payload, null, 'deleted: no document')
})
