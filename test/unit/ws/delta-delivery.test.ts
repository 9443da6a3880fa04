/**
 * `delta` delivery per socket, without a network: bus messages made as the publisher makes them (lib/route/deltas.ts, the
 * envelope) reach real connections (lib/ws/connection.ts, subscriptions.ts, fanout.ts) on fake sockets. A socket
 * gets a patch only when the last frame of the entity it was sent is the patch's base: its first, after a subscribe
 * again, after a change it was not sent, on a channel of every tenant and on a feed it gets full. A socket that
 * reads slowly gets its held patch merged into the full frame of the latest change. A property: whatever mix of
 * changes, backed-up and draining sockets, changes a socket missed and subscribes again, the frames every socket got
 * apply as a chain to the latest document. Non-delta types carry no tracking state.
 */
import t from 'tap'
import type { WebSocket } from 'ws'
import { Connection, type ConnectionServices } from '../../../lib/ws/connection.js'
import { Fanout } from '../../../lib/ws/fanout.js'
import { ConnectionCounter } from '../../../lib/ws/limits.js'
import { WatcherCounts } from '../../../lib/ws/watchers.js'
import { EntityRegistry } from '../../../lib/entities.js'
import { AccessPolicy } from '../../../lib/auth/policy.js'
import { ANONYMOUS } from '../../../lib/auth/principal.js'
import { resolveOptions } from '../../../lib/options.js'
import { Deltas } from '../../../lib/route/deltas.js'
import { wrap } from '../../../lib/route/envelope.js'
import { applyPatch, encodeNotification, type ChangeType, type PatchOperation } from '../../../lib/protocol/index.js'
import type { Authenticator } from '../../../lib/auth/authenticate.js'
import type { InterestStore } from '../../../lib/interest/interest.js'
import type { Filters } from '../../../lib/ws/filters.js'
import fc from 'fast-check'
import { Presence } from '../../../lib/presence/presence.js'
import { LocalPresenceStore } from '../../../lib/presence/store.js'
import { fakeClock, recordingLogger, turn } from '../fixtures/fakes.js'

/** The part of ws's WebSocket a Connection uses, recording what is written. */
class FakeSocket {
  readonly frames: string[] = []
  bufferedAmount = 0
  private readonly handlers = new Map<string, (...args: unknown[]) => void>()
  on (event: string, handler: (...args: unknown[]) => void): this {
    this.handlers.set(event, handler)
    return this
  }

  send (data: string | Buffer): void {
    this.frames.push(String(data))
  }

  close (): void {}
  terminate (): void {}
  ping (): void {}

  /** a frame from the client */
  receive (message: object): void {
    this.handlers.get('message')?.call(this, Buffer.from(JSON.stringify(message)), false)
  }

  notifications (): Array<Record<string, any>> {
    return this.frames.map((f) => JSON.parse(f)).filter((m) => m.type === 'notification').map((m) => m.data)
  }
}

const options = resolveOptions({
  entities: {
    Match: { access: 'public', payload: 'delta', feed: true },
    Squad: { access: 'public', payload: 'delta', tenanted: true },
    Team: { access: 'public', payload: 'full' }
  },
  limits: { conflateAboveBytes: 100 }
})
const registry = new EntityRegistry(options)
const { log } = recordingLogger()
const fanout = new Fanout('cf', registry, log)
const services: ConnectionServices = {
  options,
  registry,
  policy: new AccessPolicy(new Map(), registry, { adminRoles: ['Admin'], anonymousAllowed: true, tenantClaim: false }),
  fanout,
  watcherCounts: new WatcherCounts({} as InterestStore, 1000, log),
  presence: new Presence(new LocalPresenceStore(), null, 'instance-1', log, {}, 1000),
  log,
  authenticator: {} as Authenticator,
  users: new ConnectionCounter(10),
  counters: { slowConsumerCloses: 0, conflated: 0, replayed: 0, resumes: {} },
  outboundLimits: { highWaterBytes: 100, lowWaterBytes: 50, maxBufferedBytes: 1 << 20, maxHeldFrames: 100, drainIntervalMs: 5 },
  onClosed: () => {},
  replay: async () => null,
  snapshot: async () => null,
  limitRead: async () => null,
  filters: {} as Filters
}

async function socket (...subscriptions: Array<{ entityType: string, entityId: string, tenantId?: string }>): Promise<{ ws: FakeSocket, connection: Connection }> {
  const ws = new FakeSocket()
  const connection = new Connection(ws as unknown as WebSocket, ANONYMOUS, '127.0.0.1', services)
  for (const data of subscriptions) await subscribe(ws, data)
  return { ws, connection }
}

/** Subscribes, and lets the request be handled (its reply may be held while the socket is backed up). */
async function subscribe (ws: FakeSocket, data: object): Promise<void> {
  ws.receive({ type: 'subscribe', id: 's', data })
  for (let i = 0; i < 10; i++) await turn()
}

/** The publisher: one Deltas, and the bus message of each change, as the router makes it. */
const deltas = new Deltas(1 << 20)
let positions = 0
function publish (entityType: string, entityId: string, document: unknown, tenantId: string | null = null, changeType: ChangeType = 'updated'): string {
  const position = `n:${++positions}`
  const channel = fanout.channel(entityType, entityId, tenantId)
  const fields = { entityType, entityId, tenantId, changeType, ts: 0, position }
  const frame = encodeNotification({ ...fields, payloadType: 'full', payload: document })
  const delta = deltas.frameOf(channel, fields, changeType === 'deleted' ? undefined : document, frame) ?? undefined
  const message = wrap({ ts: 0, payloadType: 'delta', position, tenantId, frame, delta })
  const channels = [channel]
  if (tenantId !== null) channels.push(fanout.channel(entityType, entityId))
  if (entityType === 'Match') channels.push(fanout.channel(entityType, '*'))
  for (const c of channels) fanout.onBusMessage(c, message)
  return position
}

const doc = (score: number): object => ({ score, text: 'x'.repeat(300) })
const types = (ws: FakeSocket, id = 'm1'): string[] => ws.notifications().filter((n) => n.entityId === id).map((n) => n.payloadType)

t.test('first full, then patches on the last frame sent; a socket that joins later, or subscribes again, gets full', async (t) => {
  const a = await socket({ entityType: 'Match', entityId: 'm1' })
  const p1 = publish('Match', 'm1', doc(1))
  const p2 = publish('Match', 'm1', doc(2))
  t.same(types(a.ws), ['full', 'delta'])
  t.match(a.ws.notifications()[1], { position: p2, basePosition: p1, patch: [{ op: 'replace', path: '/score', value: 2 }] })
  const b = await socket({ entityType: 'Match', entityId: 'm1' })
  publish('Match', 'm1', doc(3))
  t.same([types(a.ws), types(b.ws)], [['full', 'delta', 'delta'], ['full']])
  await subscribe(a.ws, { entityType: 'Match', entityId: 'm1' })
  publish('Match', 'm1', doc(4))
  publish('Match', 'm1', doc(5))
  t.same([types(a.ws), types(b.ws)], [['full', 'delta', 'delta', 'full', 'delta'], ['full', 'delta', 'delta']], 'subscribed again: full, then patches')
  publish('Match', 'm1', null, null, 'deleted')
  publish('Match', 'm1', doc(6), null, 'created')
  t.same(types(b.ws).slice(3), ['full', 'full'], 'deleted carries no patch, and the change after it has no base')
  t.match(fanout.counters.sentByPayload, { delta: 5 }, 'patches counted apart from full frames')
  a.connection.onClosed(1000)
  b.connection.onClosed(1000)
})

t.test('a change the socket was not sent breaks the chain: full again', async (t) => {
  const { ws, connection } = await socket({ entityType: 'Match', entityId: 'm2' })
  publish('Match', 'm2', doc(1))
  // a change this instance missed (a gap on the bus): the publisher's base moves on without the socket
  deltas.frameOf(fanout.channel('Match', 'm2'), { entityType: 'Match', entityId: 'm2', tenantId: null, changeType: 'updated', ts: 0, position: 'n:missed' }, doc(2), 'x'.repeat(1000))
  publish('Match', 'm2', doc(3))
  publish('Match', 'm2', doc(4))
  t.same(types(ws, 'm2'), ['full', 'full', 'delta'])
  connection.onClosed(1000)
})

t.test('a feed and a subscription of every tenant\'s entity get full documents; a tenant\'s own subscription, patches', async (t) => {
  const feed = await socket({ entityType: 'Match', entityId: '*' })
  const everyTenant = await socket({ entityType: 'Squad', entityId: 's1' })
  const red = await socket({ entityType: 'Squad', entityId: 's1', tenantId: 'red' })
  publish('Match', 'm3', doc(1))
  publish('Match', 'm3', doc(2))
  publish('Squad', 's1', doc(1), 'red')
  publish('Squad', 's1', doc(2), 'red')
  publish('Squad', 's1', doc(3), 'red')
  t.same(types(feed.ws, 'm3'), ['full', 'full'])
  t.same(types(everyTenant.ws, 's1'), ['full', 'full', 'full'])
  t.same(types(red.ws, 's1'), ['full', 'delta', 'delta'])
  for (const s of [feed, everyTenant, red]) s.connection.onClosed(1000)
})

t.test('a slow socket\'s held patch is merged into the full frame of the latest change; the frames still chain', async (t) => {
  const { ws, connection } = await socket({ entityType: 'Match', entityId: 'm4' })
  publish('Match', 'm4', doc(1))
  ws.bufferedAmount = 1000
  publish('Match', 'm4', doc(2))
  publish('Match', 'm4', doc(3))
  t.equal(types(ws, 'm4').length, 1, 'held while the socket is backed up')
  ws.bufferedAmount = 0
  await new Promise((resolve) => setTimeout(resolve, 20))
  publish('Match', 'm4', doc(4))
  t.same(types(ws, 'm4'), ['full', 'full', 'delta'], 'two held changes went out as one full frame; patches on it follow')
  let document: unknown
  for (const n of ws.notifications()) document = n.payloadType === 'full' ? n.payload : applyPatch(document, n.patch as PatchOperation[])
  t.same(document, doc(4))
  connection.onClosed(1000)
})

t.test('types other than delta: no tracking on the subscription, frames as before', async (t) => {
  const { ws, connection } = await socket({ entityType: 'Team', entityId: 't1' }, { entityType: 'Match', entityId: 'm5' })
  const held = connection.subscriptions
  t.notOk('base' in (held.get(fanout.channel('Team', 't1')) ?? {}), 'a full type\'s subscription has no `base`')
  t.ok('base' in (held.get(fanout.channel('Match', 'm5')) ?? {}))
  const frame = encodeNotification({ entityType: 'Team', entityId: 't1', changeType: 'updated', payloadType: 'full', ts: 0, payload: { a: 1 } })
  fanout.onBusMessage(fanout.channel('Team', 't1'), wrap({ ts: 0, payloadType: 'full', frame }))
  t.same(ws.frames.at(-1), frame)
  connection.onClosed(1000)
})

/** What a client does with one entity's frames: a patch must apply to the document at its base. */
function chain (frames: Array<Record<string, any>>): unknown {
  let document: unknown
  let at: string | undefined
  for (const n of frames) {
    if (n.payloadType === 'delta') {
      if (n.basePosition !== at) throw new Error(`a patch on ${String(n.basePosition)} after ${String(at)}`)
      document = applyPatch(document, n.patch as PatchOperation[])
    } else document = n.payload
    at = n.position
  }
  return document
}

t.test('property: any mix of changes, slow and draining sockets, missed changes and subscribes again chains', async (t) => {
  const clock = fakeClock(t)
  const action = fc.oneof(
    fc.record({ kind: fc.constant('change' as const), key: fc.constantFrom('a', 'b', 'c'), value: fc.integer({ min: 0, max: 5 }), deleted: fc.nat(9).map((n) => n === 0) }),
    fc.record({ kind: fc.constantFrom('backup' as const, 'drain' as const, 'missed' as const, 'again' as const), socket: fc.nat(2) }))
  let run = 0
  await fc.assert(fc.asyncProperty(fc.array(action, { maxLength: 40 }), async (actions) => {
    const id = `prop-${run++}`
    const sockets = [await socket({ entityType: 'Match', entityId: id }), await socket({ entityType: 'Match', entityId: id }), await socket({ entityType: 'Match', entityId: id })]
    let document: Record<string, unknown> = { text: 'y'.repeat(300) }
    for (const a of actions) {
      if (a.kind === 'change') {
        document = { ...document, [a.key]: a.value }
        publish('Match', id, a.deleted ? null : document, null, a.deleted ? 'deleted' : 'updated')
      } else if (a.kind === 'backup') sockets[a.socket].ws.bufferedAmount = 1000
      else if (a.kind === 'drain') {
        sockets[a.socket].ws.bufferedAmount = 0
        clock.advance(5)
      } else if (a.kind === 'missed') {
        deltas.frameOf(fanout.channel('Match', id), { entityType: 'Match', entityId: id, tenantId: null, changeType: 'updated', ts: 0, position: `n:${++positions}` }, { missed: true }, 'x'.repeat(1000))
      } else await subscribe(sockets[a.socket].ws, { entityType: 'Match', entityId: id })
    }
    for (const s of sockets) s.ws.bufferedAmount = 0
    clock.advance(5)
    const last = { ...document, last: true }
    publish('Match', id, last)
    const ok = sockets.every((s) => isDeepStrictEqualJson(chain(s.ws.notifications().filter((n) => n.entityId === id)), last))
    for (const s of sockets) s.connection.onClosed(1000)
    return ok
  }), { numRuns: 300 })
})

function isDeepStrictEqualJson (a: unknown, b: unknown): boolean {
  return JSON.stringify(sorted(a)) === JSON.stringify(sorted(b))
}

function sorted (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sorted)
  if (typeof value !== 'object' || value === null) return value
  return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted((value as Record<string, unknown>)[k])]))
}
