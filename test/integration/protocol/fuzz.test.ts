/**
 * A property-based fuzz of the wire protocol (fast-check): random sequences of valid and invalid messages from
 * 2–4 sockets against one app with an owner-scoped type on PostgreSQL and JWT sign-in. A model of each socket (who
 * it is, what it watches, how many bad frames it sent) predicts every reply; after each sequence:
 *   - every request with an id got exactly one reply carrying that id, the one the model predicts; every ping a
 *     pong; every bad frame without a usable id an `error` of the predicted code — unless the server closed the
 *     socket (then only with a close code the socket earned: 1009 an oversized frame, 1008 too many bad frames,
 *     4401 a token that expired) or the client did;
 *   - a change published once every request is answered reaches exactly the sockets the model says watch the
 *     entity, once; one published while requests are on their way reaches a socket at most once, and only a
 *     socket that watched the entity at some time;
 *   - queued requests (subscribe, unsubscribe, auth) are answered in the order sent;
 *   - the server stays up (a fresh socket subscribes and is notified), and once every socket is closed nothing is
 *     left: no connection, subscription, bus subscription or watcher count.
 *
 * FUZZ_SEED and FUZZ_RUNS change the seed and the number of sequences (both printed).
 */
import t from 'tap'
import fc from 'fast-check'
import WebSocket from 'ws'
import { startApp } from '../../helpers/app.js'
import { TestClient, isNotification, type Frame } from '../../helpers/client.js'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { now, signHs256, unsigned } from '../../helpers/tokens.js'
import { until } from '../../helpers/wait.js'
import { WireError } from '../../../lib/errors.js'

const SEED = Number(process.env.FUZZ_SEED ?? 20251008)
const RUNS = Number(process.env.FUZZ_RUNS ?? 120)
const MAX_MESSAGE_BYTES = 2048
/** low, so that some sequences reach it: the next bad frame closes the socket with 1008 */
const MAX_BAD_FRAMES = 10

const SECRET = 'a-fuzz-secret-of-enough-length-0123456789'
const TOKENS = {
  'user-1': signHs256({ sub: 'user-1', exp: now() + 3600 }, SECRET),
  'user-2': signHs256({ sub: 'user-2', exp: now() + 3600 }, SECRET),
  admin: signHs256({ sub: 'admin-1', roles: ['Admin'], exp: now() + 3600 }, SECRET),
  expired: signHs256({ sub: 'user-1', exp: now() - 60 }, SECRET),
  'no expiry': signHs256({ sub: 'user-1' }, SECRET),
  'bad signature': signHs256({ sub: 'user-1', exp: now() + 3600 }, SECRET + '-other'),
  'alg none': unsigned({ sub: 'admin-1', roles: ['Admin'], exp: now() + 3600 }),
  garbage: 'not.a.jwt'
} as const
type TokenName = keyof typeof TOKENS | 'user-1, expiring'
/** how long the expiring token is valid (long enough to be checked in time on a busy machine): the socket is
 * closed with 4401 then */
const EXPIRING_MS = 1000
const tokenOf = (name: TokenName): string => name === 'user-1, expiring'
  ? signHs256({ sub: 'user-1', exp: (Date.now() + EXPIRING_MS) / 1000 }, SECRET)
  : TOKENS[name]
const SIGN_INS: Partial<Record<TokenName, { userId: string, admin: boolean }>> = {
  'user-1': { userId: 'user-1', admin: false },
  'user-1, expiring': { userId: 'user-1', admin: false },
  'user-2': { userId: 'user-2', admin: false },
  admin: { userId: 'admin-1', admin: true }
}

const url = await freshDatabase(t, 'protocol_fuzz')
const sql = await sqlClient(t, url)
await sql.query(martenTableSql('mt_doc_team'))
await sql.query(martenTableSql('mt_doc_usersettings'))
await sql.query('INSERT INTO mt_doc_usersettings (id, data) VALUES (\'us-1\', \'{"userId":"user-1"}\'), (\'us-2\', \'{"userId":"user-2"}\')')

const { app, url: wsUrl } = await startApp(t, {
  databases: [{ name: 'main', url }],
  entities: { Team: { access: 'public' }, UserSettings: { access: 'owner', ownerPath: ['userId'] } },
  auth: { anonymous: true, jwt: { secret: SECRET }, adminRoles: ['Admin'] },
  limits: {
    maxMessageBytes: MAX_MESSAGE_BYTES,
    maxBadFramesPerMinute: MAX_BAD_FRAMES,
    subscribeRatePerSecond: 100_000,
    maxSubscriptionsPerConnection: 1000,
    maxAuthFailuresPerMinute: 1_000_000,
    authMessagesPerMinute: 1_000_000,
    maxConnectionsPerUser: 1000
  }
})

// ---- what the sequences are made of

interface Target { entityType: string, entityId: string }
const team = (entityId: string): Target => ({ entityType: 'Team', entityId })
const settings = (entityId: string): Target => ({ entityType: 'UserSettings', entityId })
/** entities that can change (published) */
const ENTITIES: Target[] = [team('t-1'), team('t-2'), team('a:b'), team('x@y'), team('ünï cödé ☃ 🏉'), team('L'.repeat(512)),
  settings('us-1'), settings('us-2'), settings('us-missing')]
/** what a socket may ask for: those, a type's feed (not enabled here), a type nobody declared, and a declared
 * one in another case (declared names match exactly) */
const TARGETS: Target[] = [...ENTITIES, team('*'), settings('*'), { entityType: 'Nope', entityId: 'n-1' }, { entityType: 'team', entityId: 't-1' }]
const DECLARED = new Set(['Team', 'UserSettings'])

type Command =
  | { kind: 'subscribe', s: number, target: Target, since?: string, watchers?: boolean, tenantId?: string, numericId: boolean, extraField: boolean }
  | { kind: 'unsubscribe', s: number, target: Target, by: 'subscriptionId' | 'entity', tenantId?: string, numericId: boolean }
  | { kind: 'unsubscribeRaw', s: number, subscriptionId: string }
  | { kind: 'ping', s: number, id?: 'string' | 'numeric', data?: unknown }
  | { kind: 'auth', s: number, token: TokenName, numericId: boolean }
  | { kind: 'bad', s: number, bad: BadShape, times: number }
  | { kind: 'oversized', s: number }
  | { kind: 'reconnect', s: number }
  | { kind: 'publish', target: Target }
  | { kind: 'publishNow', target: Target }

/** A bad frame, built by buildBad() around the request id it may carry */
type BadShape =
  | { shape: 'not json', text: string }
  | { shape: 'binary', bytes: number[] }
  | { shape: 'not an object', text: string }
  | { shape: 'unknown type', type: string }
  | { shape: 'unusable id', id: unknown }
  | { shape: 'bad data', type: 'subscribe' | 'unsubscribe' | 'auth', data?: unknown }

const controlChar = fc.oneof(fc.integer({ min: 0, max: 0x1f }), fc.constant(0x7f)).map((c) => String.fromCharCode(c))
const withControl = (base: string): fc.Arbitrary<string> => fc.tuple(controlChar, fc.nat(base.length)).map(([c, at]) => base.slice(0, at) + c + base.slice(at))
const notJson = fc.string({ maxLength: 40 }).map((s) => '{' + s).filter((s) => { try { JSON.parse(s); return false } catch { return true } })
const knownTypes = new Set(['subscribe', 'unsubscribe', 'ping', 'auth'])

const badShape: fc.Arbitrary<BadShape> = fc.oneof(
  fc.oneof(notJson, fc.constantFrom('', 'nope', '{"type":"subscribe"', "{'type':'ping'}", '\u0000')).map((text) => ({ shape: 'not json' as const, text })),
  fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 16 }).map((bytes) => ({ shape: 'binary' as const, bytes })),
  fc.constantFrom('null', '[]', '5', '"subscribe"', 'true', '[{"type":"ping"}]').map((text) => ({ shape: 'not an object' as const, text })),
  fc.oneof(fc.constantFrom('notification', 'subscribed', 'pong', 'Subscribe', 'PING', '', 'x'.repeat(33)), fc.string({ maxLength: 40 }))
    .filter((type) => !knownTypes.has(type)).map((type) => ({ shape: 'unknown type' as const, type })),
  fc.constantFrom<unknown>(1.5, -0.25, true, null, {}, [], 'i'.repeat(129)).map((id) => ({ shape: 'unusable id' as const, id })),
  fc.oneof(
    fc.constantFrom<unknown>(undefined, null, 5, 'x', [], {}, { entityType: 'Team' }, { entityId: 't-1' }, { entityType: 'Team', entityId: 't-1', extra: 1 },
      { entityType: 'Team', entityId: '' }, { entityType: 'Team', entityId: 'L'.repeat(513) }, { entityType: '1Team', entityId: 't-1' },
      { entityType: 'Team:x', entityId: 't-1' }, { entityType: 'Team', entityId: 't-1', since: 5 }, { entityType: 'Team', entityId: 't-1', since: 's'.repeat(129) },
      { entityType: 'Team', entityId: 't-1', watchers: 'yes' }, { entityType: 'Team', entityId: 't-1', tenantId: '' }, { entityType: 'Team', entityId: 5 },
      // lone surrogates: they have no UTF-8 (a broker channel, a query would carry another id)
      { entityType: 'Team', entityId: 'x\ud800' }, { entityType: 'Team', entityId: '\udc00x' }, { entityType: 'Team', entityId: 't-1', tenantId: 'x\udbff' }),
    withControl('t-1').map((entityId) => ({ entityType: 'Team', entityId })),
    withControl('tenant').map((tenantId) => ({ entityType: 'Team', entityId: 't-1', tenantId }))
  ).map((data) => ({ shape: 'bad data' as const, type: 'subscribe' as const, data })),
  fc.oneof(
    fc.constantFrom<unknown>(undefined, null, {}, { subscriptionId: '' }, { subscriptionId: 5 }, { subscriptionId: 'Team:t-1', entityType: 'Team' },
      { entityType: 'Team' }, { entityId: 't-1' }, { subscriptionId: 'Team:\u0007' }, { subscriptionId: 'Team:x\ud800' }, { entityType: 'Team', entityId: 'x\udfff' }),
    withControl('Team:t-1').map((subscriptionId) => ({ subscriptionId })),
    withControl('t-1').map((entityId) => ({ entityType: 'Team', entityId }))
  ).map((data) => ({ shape: 'bad data' as const, type: 'unsubscribe' as const, data })),
  fc.constantFrom<unknown>(undefined, null, {}, { token: '' }, { token: 5 }, { token: 'x', extra: 1 }, { token: ['x'] })
    .map((data) => ({ shape: 'bad data' as const, type: 'auth' as const, data }))
)

/** `arbitrary`'s value one time in `n`, else undefined */
const oneIn = <T>(n: number, arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: n - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary })
const socket = fc.nat(3)
const requestIdKind = fc.boolean()
const command: fc.Arbitrary<Command> = fc.oneof(
  {
    weight: 20,
    arbitrary: fc.record({
      kind: fc.constant('subscribe' as const),
      s: socket,
      target: fc.constantFrom(...TARGETS),
      since: oneIn(5, fc.constantFrom('p:abc:1', '', 'n:42', 's'.repeat(128))),
      watchers: oneIn(4, fc.boolean()),
      tenantId: oneIn(10, fc.constant('tenant-1')),
      numericId: requestIdKind,
      extraField: fc.boolean()
    })
  },
  {
    weight: 12,
    arbitrary: fc.record({
      kind: fc.constant('unsubscribe' as const),
      s: socket,
      target: fc.constantFrom(...TARGETS),
      by: fc.constantFrom('subscriptionId' as const, 'entity' as const),
      tenantId: oneIn(10, fc.constant('tenant-1')),
      numericId: requestIdKind
    })
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('unsubscribeRaw' as const), s: socket, subscriptionId: fc.constantFrom('garbage', 'Nope:x', 'Team@t:t-1', ':t-1', 'Team:') }) },
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant('ping' as const), s: socket, id: oneIn(3, fc.constantFrom('string' as const, 'numeric' as const)), data: oneIn(3, fc.constantFrom<unknown>(5, {}, 'x')) })
  },
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('auth' as const),
      s: socket,
      token: fc.oneof(
        { weight: 20, arbitrary: fc.constantFrom(...Object.keys(TOKENS) as TokenName[]) },
        { weight: 1, arbitrary: fc.constant<TokenName>('user-1, expiring') }),
      numericId: requestIdKind
    })
  },
  { weight: 16, arbitrary: fc.record({ kind: fc.constant('bad' as const), s: socket, bad: badShape, times: fc.constant(1) }) },
  // persistent abuse: past limits.maxBadFramesPerMinute the socket is closed with 1008
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('bad' as const), s: socket, bad: badShape, times: fc.integer({ min: 2, max: MAX_BAD_FRAMES + 2 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('oversized' as const), s: socket }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('reconnect' as const), s: socket }) },
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('publish' as const), target: fc.constantFrom(...ENTITIES) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('publishNow' as const), target: fc.constantFrom(...ENTITIES) }) }
)

// ---- the model of one socket

type Expected =
  | { type: 'subscribed', subscriptionId: string, target: Target, recovered?: boolean }
  | { type: 'subscription_error' | 'error', code: string }
  | { type: 'unsubscribed', subscriptionId: string }
  | { type: 'authenticated', userId: string }
  | { type: 'pong' }

const keyOf = (id: string | number): string => typeof id + ':' + String(id)
const subscriptionIdOf = ({ entityType, entityId }: Target, tenantId?: string): string =>
  tenantId === undefined ? `${entityType}:${entityId}` : `${entityType}@${tenantId}:${entityId}`

class FuzzSocket {
  user: { userId: string, admin: boolean } | null = null
  /** subscriptionIds it watches */
  readonly watched = new Set<string>()
  /** subscriptionIds it watched at some time */
  readonly everWatched = new Set<string>()
  /** requests answered from the socket's queue, in the order sent (keyOf) */
  readonly queued: string[] = []
  /** by request id (keyOf) */
  readonly requests = new Map<string, Expected>()
  /** codes of the `error` frames without an id it must get */
  readonly idless: string[] = []
  pings = 0
  badFrames = 0
  oversized = false
  /** signed in with a token that expires at once: the server closes it with 4401 */
  expiring = false
  closedByClient = false

  constructor (readonly name: string, readonly client: TestClient) {}

  /** The server must close it: an oversized frame, an expiring token, or bad frames past the limit (with one token
   * of refill to spare). */
  get doomed (): boolean {
    return this.oversized || this.expiring || this.badFrames >= MAX_BAD_FRAMES + 2
  }

  get open (): boolean {
    return this.client.ws.readyState === WebSocket.OPEN
  }

  /** Every reply it is owed has come (for a socket that stays open). */
  answered (): boolean {
    const ids = new Set<string>()
    let pongs = 0
    let idless = 0
    for (const m of this.client.messages) {
      if (m.id !== undefined) ids.add(keyOf(m.id))
      else if (m.type === 'pong') pongs++
      else if (m.type === 'error') idless++
    }
    return [...this.requests.keys()].every((k) => ids.has(k)) && pongs >= this.pings && idless >= this.idless.length
  }

  /** What the server should answer a subscribe. */
  subscribe (target: Target, since: string | undefined, tenantId: string | undefined): Expected {
    const subscriptionId = subscriptionIdOf(target)
    const subscribed: Expected = since === undefined ? { type: 'subscribed', subscriptionId, target } : { type: 'subscribed', subscriptionId, target, recovered: false }
    if (!DECLARED.has(target.entityType)) return { type: 'subscription_error', code: WireError.unknownEntityType }
    // access is decided before the tenant is looked at: a type closed to the socket is refused whatever it names
    if (tenantId !== undefined) return { type: 'subscription_error', code: this.closed(target) ?? WireError.badRequest }
    if (this.watched.has(subscriptionId)) return subscribed
    const denial = this.denial(target)
    if (denial !== null) return { type: 'subscription_error', code: denial }
    this.watched.add(subscriptionId)
    this.everWatched.add(subscriptionId)
    return subscribed
  }

  /** The refusal of every entity of the type, whatever the request names. */
  private closed ({ entityType }: Target): string | null {
    return entityType === 'UserSettings' && this.user === null ? WireError.unauthenticated : null
  }

  private denial (target: Target): string | null {
    const closed = this.closed(target)
    if (closed !== null) return closed
    const { entityType, entityId } = target
    if (entityId === '*') return WireError.forbidden
    if (entityType === 'Team' || this.user?.admin === true) return null
    const owners: Record<string, string> = { 'us-1': 'user-1', 'us-2': 'user-2' }
    return owners[entityId] === this.user?.userId ? null : WireError.forbidden
  }

  authenticate (token: TokenName): Expected {
    const next = SIGN_INS[token]
    if (next === undefined) return this.reject(WireError.unauthenticated)
    if (this.user !== null && this.user.userId !== next.userId) return this.reject(WireError.forbidden)
    this.user = next
    // unless a later token of the same user renews it in time
    this.expiring = token === 'user-1, expiring'
    return { type: 'authenticated', userId: next.userId }
  }

  /** A request refused as bad input: it counts towards the limit of bad frames. */
  reject (code: string): Expected {
    this.badFrames++
    return { type: 'error', code }
  }
}

/** The frame, the code of its `error` reply, and whether that reply carries `id`. */
function buildBad (bad: BadShape, id: string): { frame: string | Buffer, code: string, echoesId: boolean } {
  switch (bad.shape) {
    case 'not json': return { frame: bad.text, code: WireError.invalidJson, echoesId: false }
    case 'binary': return { frame: Buffer.from(bad.bytes), code: WireError.binaryFrame, echoesId: false }
    case 'not an object': return { frame: bad.text, code: WireError.badRequest, echoesId: false }
    case 'unknown type': return { frame: JSON.stringify({ type: bad.type, id, data: {} }), code: WireError.badRequest, echoesId: true }
    case 'unusable id': return { frame: JSON.stringify({ type: 'subscribe', id: bad.id, data: { entityType: 'Team', entityId: 't-1' } }), code: WireError.badRequest, echoesId: false }
    case 'bad data': return { frame: JSON.stringify({ type: bad.type, id, data: bad.data }), code: WireError.badRequest, echoesId: true }
  }
}

// ---- one sequence

class Run {
  readonly sockets: FuzzSocket[] = []
  readonly retired: FuzzSocket[] = []
  readonly violations: string[] = []
  private nextId = 0
  private generation = 0

  async open (slot: number): Promise<FuzzSocket> {
    const s = new FuzzSocket(`socket ${slot}.${this.generation++}`, await TestClient.open(wsUrl))
    this.sockets[slot] = s
    return s
  }

  /** A request id never used before in this sequence: a string or an integer. */
  private requestId (numeric: boolean): string | number {
    const n = this.nextId++
    return numeric ? 1_000_000 + n : `r${n}`
  }

  /** A request with a valid body: it waits its turn in the socket's queue. */
  private request (s: FuzzSocket, id: string | number, message: object, expected: Expected): void {
    s.requests.set(keyOf(id), expected)
    s.queued.push(keyOf(id))
    s.client.send(JSON.stringify({ ...message, id }))
  }

  async execute (c: Command): Promise<void> {
    if (c.kind === 'publish') return await this.publish(c.target)
    // with requests on their way; checked by check(): at most once, and only where the entity was watched
    if (c.kind === 'publishNow') {
      await app.changefeed.publish({ ...c.target, changeType: 'created' })
      return
    }
    const s = this.sockets[c.s % this.sockets.length]
    switch (c.kind) {
      case 'subscribe': {
        const data: Record<string, unknown> = { ...c.target }
        if (c.since !== undefined) data.since = c.since
        if (c.watchers !== undefined) data.watchers = c.watchers
        if (c.tenantId !== undefined) data.tenantId = c.tenantId
        // unknown top-level fields are ignored (newer clients may send more)
        const message = c.extraField ? { type: 'subscribe', data, v: 2 } : { type: 'subscribe', data }
        return this.request(s, this.requestId(c.numericId), message, s.subscribe(c.target, c.since, c.tenantId))
      }
      case 'unsubscribe': {
        const subscriptionId = subscriptionIdOf(c.target, c.tenantId)
        const data = c.by === 'subscriptionId' ? { subscriptionId } : c.tenantId === undefined ? { ...c.target } : { ...c.target, tenantId: c.tenantId }
        // a tenant named for an untenanted type matches none of its subscriptions
        if (c.tenantId === undefined) s.watched.delete(subscriptionId)
        return this.request(s, this.requestId(c.numericId), { type: 'unsubscribe', data }, { type: 'unsubscribed', subscriptionId })
      }
      case 'unsubscribeRaw':
        return this.request(s, this.requestId(false), { type: 'unsubscribe', data: { subscriptionId: c.subscriptionId } }, { type: 'unsubscribed', subscriptionId: c.subscriptionId })
      case 'ping': {
        // answered at once, not in the socket's queue; with an id, the pong carries it
        const id = c.id === undefined ? undefined : this.requestId(c.id === 'numeric')
        if (id === undefined) s.pings++
        else s.requests.set(keyOf(id), { type: 'pong' })
        s.client.send(JSON.stringify({ type: 'ping', id, data: c.data }))
        return
      }
      case 'auth':
        return this.request(s, this.requestId(c.numericId), { type: 'auth', data: { token: tokenOf(c.token) } }, s.authenticate(c.token))
      case 'bad':
        for (let i = 0; i < c.times; i++) {
          const id = String(this.requestId(false))
          const { frame, code, echoesId } = buildBad(c.bad, id)
          const expected = s.reject(code)
          if (echoesId) s.requests.set(keyOf(id), expected)
          else s.idless.push(code)
          s.client.ws.send(frame, { binary: Buffer.isBuffer(frame) })
        }
        return
      case 'oversized':
        s.oversized = true
        s.client.send({ type: 'subscribe', id: 'big', data: { entityType: 'Team', entityId: 'x'.repeat(MAX_MESSAGE_BYTES) } })
        return
      case 'reconnect':
        // closed with its requests perhaps still on their way
        s.closedByClient = true
        s.client.close()
        this.retired.push(s)
        await this.open(c.s % this.sockets.length)
    }
  }

  /** Waits until every socket is answered or closed, and the server has seen every close. */
  async settle (): Promise<void> {
    const all = [...this.sockets, ...this.retired]
    const settled = (): boolean => all.every((s) => s.client.ws.readyState === WebSocket.CLOSED ||
      (!s.closedByClient && !s.doomed && s.open && s.answered()))
    if (!await until(settled, 5000)) this.violations.push(`not settled: ${all.filter((s) => !settled()).map((s) => s.name).join(', ')}`)
    const open = this.sockets.filter((s) => s.open).length
    if (!await until(() => app.changefeed.stats().connections.active === open, 5000)) {
      this.violations.push(`the server holds ${app.changefeed.stats().connections.active} connections, the clients ${open}`)
    }
  }

  /** A change of `target`: exactly the open sockets that watch it get it, once. */
  private async publish (target: Target): Promise<void> {
    await this.settle()
    const live = this.sockets.filter((s) => s.open)
    const held = live.reduce((n, s) => n + s.watched.size, 0)
    if (app.changefeed.stats().subscriptions.active !== held) this.violations.push(`the server holds ${app.changefeed.stats().subscriptions.active} subscriptions, the model ${held}`)
    const before = live.map((s) => s.client.messages.length)
    const watchers = live.filter((s) => s.watched.has(subscriptionIdOf(target)))
    // 'updated' tells it from the 'created' of publishNow, which may still be on its way
    const delivered = await app.changefeed.publish({ ...target, changeType: 'updated' })
    // (a channel whose last watcher left lately still takes changes into its history: true with none is allowed)
    if (!delivered && watchers.length > 0) this.violations.push(`publish ${subscriptionIdOf(target)} returned false with ${watchers.length} watchers`)
    // the change was written to the sockets before publish resolved: a pong after it comes behind it
    for (const s of live) s.pings++
    for (const s of live) s.client.send({ type: 'ping' })
    await this.settle()
    for (const [i, s] of live.entries()) {
      const got = s.client.messages.slice(before[i]).filter((m) => isNotification(target.entityType, target.entityId)(m) && m.data.changeType === 'updated').length
      const expected = watchers.includes(s) ? 1 : 0
      if (got !== expected && s.open) this.violations.push(`${s.name} got ${got} notifications of ${subscriptionIdOf(target)}, expected ${expected}`)
    }
  }

  /** Checks every socket's replies against the model. */
  check (): void {
    for (const s of [...this.sockets, ...this.retired]) {
      const closedByServer = !s.closedByClient && s.client.ws.readyState === WebSocket.CLOSED
      const complete = !s.closedByClient && !closedByServer
      const seen = new Set<string>()
      let pongs = 0
      const idless: string[] = []
      const positions = new Set<string>()
      const queuedOrder: number[] = []
      for (const m of s.client.messages) {
        if (m.type === 'notification' || m.type === 'watchers') {
          const subscriptionId = subscriptionIdOf(m.data)
          if (!s.everWatched.has(subscriptionId)) this.violations.push(`${s.name}: a ${m.type} frame of ${subscriptionId}, never watched`)
          if (m.type === 'watchers' && !(m.data.count >= 1)) this.violations.push(`${s.name}: ${m.data.count} watchers of ${subscriptionId}, itself one`)
          if (m.type === 'notification') {
            if (positions.has(m.data.position)) this.violations.push(`${s.name}: ${subscriptionId} notified twice of ${m.data.position}`)
            positions.add(m.data.position)
          }
          continue
        }
        if (m.id === undefined) {
          if (m.type === 'pong') pongs++
          else if (m.type === 'error') idless.push(m.data?.code)
          else this.violations.push(`${s.name}: unexpected ${JSON.stringify(m).slice(0, 200)}`)
          continue
        }
        const key = keyOf(m.id)
        const expected = s.requests.get(key)
        if (expected === undefined) this.violations.push(`${s.name}: a frame for no request of it: ${JSON.stringify(m).slice(0, 200)}`)
        else if (seen.has(key)) this.violations.push(`${s.name}: a second reply to ${key}: ${JSON.stringify(m).slice(0, 200)}`)
        else if (!matches(m, expected)) this.violations.push(`${s.name}: ${key} answered ${JSON.stringify(m).slice(0, 300)}, expected ${JSON.stringify(expected)}`)
        seen.add(key)
        const turn = s.queued.indexOf(key)
        if (turn >= 0) queuedOrder.push(turn)
      }
      if (queuedOrder.some((turn, i) => i > 0 && turn < queuedOrder[i - 1])) this.violations.push(`${s.name}: queued requests answered out of order: ${JSON.stringify(queuedOrder)}`)
      if (complete) {
        const unanswered = [...s.requests.keys()].filter((k) => !seen.has(k))
        if (unanswered.length > 0) this.violations.push(`${s.name}: no reply to ${unanswered.join(', ')}`)
        if (pongs !== s.pings) this.violations.push(`${s.name}: ${pongs} pongs for ${s.pings} pings`)
        if (JSON.stringify(idless.sort()) !== JSON.stringify([...s.idless].sort())) this.violations.push(`${s.name}: errors without id ${JSON.stringify(idless)}, expected ${JSON.stringify(s.idless)}`)
      } else if (pongs > s.pings || idless.length > s.idless.length) {
        this.violations.push(`${s.name}: more pongs (${pongs}/${s.pings}) or errors without id (${idless.length}/${s.idless.length}) than asked for`)
      }
      if (s.doomed && !s.closedByClient && !closedByServer) {
        this.violations.push(`${s.name}: still open after ${s.badFrames} bad frames${s.oversized ? ', an oversized one' : ''}${s.expiring ? ', an expiring token' : ''}`)
      }
    }
  }

  /** The close codes of the sockets the server closed, each one earned. */
  async checkCloseCodes (): Promise<void> {
    for (const s of [...this.sockets, ...this.retired]) {
      if (s.closedByClient || s.client.ws.readyState !== WebSocket.CLOSED) continue
      const { code } = await s.client.closed
      const earned = (code === 1009 && s.oversized) || (code === 1008 && s.badFrames > MAX_BAD_FRAMES) || (code === 4401 && s.expiring)
      if (!earned) this.violations.push(`${s.name}: closed with ${code} after ${s.badFrames} bad frames${s.oversized ? ', an oversized one' : ''}${s.expiring ? ', an expiring token' : ''}`)
    }
  }

  /** The server still serves a fresh socket; then every socket closes and nothing is left. */
  async finish (label: string): Promise<void> {
    const fresh = await TestClient.open(wsUrl)
    const reply = await fresh.subscribe('Team', `fresh-${label}`).catch((err: Error) => ({ type: err.message }))
    if (reply.type !== 'subscribed') this.violations.push(`a fresh socket could not subscribe: ${reply.type}`)
    await app.changefeed.publish({ entityType: 'Team', entityId: `fresh-${label}`, changeType: 'created' })
    if (await fresh.next(isNotification('Team', `fresh-${label}`), 5000).catch(() => null) === null) this.violations.push('a fresh socket was not notified')
    const clients = [fresh, ...[...this.sockets, ...this.retired].map((s) => s.client)]
    for (const c of clients) c.close()
    await Promise.all(clients.map(async (c) => await c.closed))
    const leftovers = (): string => {
      const { connections, subscriptions, bus } = app.changefeed.stats()
      return JSON.stringify({ connections: connections.active, subscriptions: subscriptions.active, counted: subscriptions.counted, channels: bus.channels })
    }
    const none = JSON.stringify({ connections: 0, subscriptions: 0, counted: 0, channels: 0 })
    if (!await until(() => leftovers() === none, 5000)) this.violations.push(`left behind after every socket closed: ${leftovers()}`)
  }
}

function matches (m: Frame, expected: Expected): boolean {
  if (m.type !== expected.type) return false
  switch (expected.type) {
    case 'subscribed':
      return m.data?.subscriptionId === expected.subscriptionId && m.data.entityType === expected.target.entityType &&
        m.data.entityId === expected.target.entityId && m.data.recovered === expected.recovered
    case 'unsubscribed': return m.data?.subscriptionId === expected.subscriptionId
    case 'authenticated': return m.data?.userId === expected.userId
    case 'pong': return m.data === undefined
    default: return m.data?.code === expected.code
  }
}

t.test('random message sequences from 2–4 sockets: one right reply per request, earned closes, exact delivery, no leaks', async (t) => {
  t.comment(`seed ${SEED}, ${RUNS} sequences (FUZZ_SEED=${SEED} FUZZ_RUNS=${RUNS} repeats them)`)
  let sequence = 0
  /** sockets the server closed, by close code */
  const closes = new Map<number, number>()
  let commands = 0
  /** frames received, by type (and code): what the sequences reached */
  const seen = new Map<string, number>()
  const started = Date.now()
  await fc.assert(fc.asyncProperty(fc.integer({ min: 2, max: 4 }), fc.array(command, { minLength: 5, maxLength: 60, size: 'large' }), async (sockets, sequenceOfCommands) => {
    const run = new Run()
    for (let slot = 0; slot < sockets; slot++) await run.open(slot)
    for (const c of sequenceOfCommands) await run.execute(c)
    await run.settle()
    run.check()
    await run.checkCloseCodes()
    for (const s of [...run.sockets, ...run.retired]) {
      if (s.closedByClient || s.open) continue
      const { code } = await s.client.closed
      closes.set(code, (closes.get(code) ?? 0) + 1)
    }
    commands += sequenceOfCommands.length
    for (const s of [...run.sockets, ...run.retired]) {
      for (const m of s.client.messages) {
        const kind = m.data?.code === undefined ? m.type : `${m.type}/${m.data.code}`
        seen.set(kind, (seen.get(kind) ?? 0) + 1)
      }
    }
    await run.finish(String(sequence++))
    if (run.violations.length > 0) throw new Error(run.violations.slice(0, 8).join('\n'))
  }), { seed: SEED, numRuns: RUNS, interruptAfterTimeLimit: 120_000, markInterruptAsFailure: true })
  t.comment(`${sequence} sequences run, ${commands} commands, in ${Date.now() - started} ms`)
  t.comment(`sockets closed by the server: ${[...closes].sort().map(([code, n]) => `${code} ×${n}`).join(', ')}`)
  t.comment(`frames received: ${[...seen].sort().map(([kind, n]) => `${kind} ${n}`).join(', ')}`)
  t.pass('every sequence held every invariant')
})
