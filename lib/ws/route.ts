/**
 * The /ws route on @fastify/websocket: identifies the peer before the upgrade, admits it (per-IP and per-user
 * limits), wraps it in a Connection, pings and times out idle peers with one server-wide sweep, and closes every
 * socket with 1001 on shutdown. Authentication plugins live in the route's own encapsulated scope.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import websocket from '@fastify/websocket'
import type { WebSocket } from 'ws'
import type { Identity } from '../auth/authenticate.js'
import { ANONYMOUS } from '../auth/principal.js'
import { requestLogSerializer } from '../auth/redact.js'
import { CloseCode } from '../errors.js'
import { Connection, userKey, type ConnectionServices } from './connection.js'
import { ConnectionCounter, ReplayLimiter } from './limits.js'
import { Filters } from './filters.js'
import type { SnapshotReader } from '../reads/snapshot.js'
import { closeCodeLabel, type Telemetry } from '../telemetry.js'
import type { InterestStore } from '../interest/interest.js'
import { WatcherCounts } from './watchers.js'
import type { Presence } from '../presence/presence.js'
import { RETRY_HINT_MS } from './drain.js'
import { restartReason } from '../protocol/index.js'

/** the sweep visits this many slices of the sockets, one per tick, each socket once per ping interval */
const SWEEP_SLICES = 10

export class ConnectionSet {
  readonly open = new Set<Connection>()
  opened = 0
  closed = 0
  /** `resumes`: subscribes with `since`, by outcome (recovered, not_recovered, foreign, failed) */
  readonly counters = { slowConsumerCloses: 0, conflated: 0, replayed: 0, resumes: {} as Record<string, number> }
  readonly closedByCode: Record<string, number> = {}
  private sweepTimer: NodeJS.Timeout | null = null

  /** a deploy: new sockets are closed at once (lib/ws/drain.ts) */
  draining = false

  /** the filtered feeds of this instance's sockets (set when the route is registered) */
  filters: Filters | null = null

  /** `watcherCounts`: the sockets that asked for watcher counts; `presence`: presence on this instance's entities */
  constructor (readonly watcherCounts: WatcherCounts, readonly presence: Presence) {}

  /**
   * One timer for every socket: ping the live ones, close those silent for longer than the idle timeout. Each
   * socket is visited once per interval, a tenth of them at a time: ten thousand pings written in one turn would
   * hold up the notifications due meanwhile.
   */
  startSweep (pingIntervalSeconds: number, idleTimeoutSeconds: number): void {
    if (pingIntervalSeconds <= 0) return
    let tick = 0
    this.sweepTimer = setInterval(() => {
      const slice = tick++ % SWEEP_SLICES
      const idleBefore = Date.now() - idleTimeoutSeconds * 1000
      for (const c of this.open) {
        if (c.id % SWEEP_SLICES !== slice) continue
        if (idleTimeoutSeconds > 0 && c.lastSeen < idleBefore) c.close(CloseCode.idleTimeout, 'idle timeout')
        else c.ping()
      }
    }, (pingIntervalSeconds * 1000) / SWEEP_SLICES)
    this.sweepTimer.unref()
  }

  closeAll (code: number, reason: string): void {
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer)
    for (const c of this.open) c.close(code, reason)
  }
}

const identities = new WeakMap<FastifyRequest, Identity>()

/**
 * After the upgrade nothing of the HTTP request is needed, but @fastify/websocket's error listener on the socket
 * holds the Fastify request and reply, and the TCP socket holds the HTTP response (and through it the request): a
 * few kilobytes per open socket, for as long as it is open. The connection handles the socket's errors itself.
 */
function release (socket: WebSocket, request: FastifyRequest): void {
  socket.removeAllListeners('error')
  // (an injected socket, app.injectWS, has no TCP socket behind it)
  const tcp = request.raw.socket as (typeof request.raw.socket & { _httpMessage?: { detachSocket?: (s: unknown) => void } | null }) | undefined
  tcp?._httpMessage?.detachSocket?.(tcp)
}

type RouteServices = Omit<ConnectionServices, 'onClosed' | 'users' | 'counters' | 'watcherCounts' | 'outboundLimits' | 'filters' | 'snapshot' | 'limitRead'> & {
  telemetry?: Telemetry
  interest: InterestStore
  snapshots: SnapshotReader
}

export async function registerRoute (fastify: FastifyInstance, services: RouteServices): Promise<ConnectionSet> {
  const { options, authenticator } = services
  const watcherCounts = new WatcherCounts(services.interest, options.limits.watcherCountIntervalMs, services.log)
  const connections = new ConnectionSet(watcherCounts, services.presence)
  const allowedOrigins = options.server.allowedOrigins === null ? null : new Set(options.server.allowedOrigins)
  const perIp = new ConnectionCounter(options.limits.maxConnectionsPerIp)
  const users = new ConnectionCounter(options.limits.maxConnectionsPerUser)
  const replays = new ReplayLimiter(options.limits.replaysPerIpPerSecond)
  // notify mode resumes from the bus's history, no database read: only the subscribe rate bounds it
  const limited: ConnectionServices['replay'] = async (entity, entityId, tenantId, since, ip) =>
    await replays.run(ip, async () => await services.replay(entity, entityId, tenantId, since, ip))
  const replay = options.capture.mode === 'notify' ? services.replay : limited
  // snapshots are database reads too: the same limiter
  const snapshot: ConnectionServices['snapshot'] = async (entity, tenantId, entityIds, ip) =>
    await replays.run(ip, async () => await services.snapshots.entities(entity, tenantId, entityIds))
  const limitRead: ConnectionServices['limitRead'] = async (ip, read) => await replays.run(ip, read)
  const filters = connections.filters = new Filters(services.fanout, services.snapshots, options.limits)
  fastify.addHook('onClose', async () => watcherCounts.close())

  if (!fastify.hasDecorator('websocketServer')) {
    await fastify.register(websocket, {
      options: { maxPayload: options.limits.maxMessageBytes },
      preClose (done) {
        connections.closeAll(CloseCode.goingAway, 'server going away')
        done()
      }
    })
  } else {
    // a host's own @fastify/websocket closes its sockets its way; ours go with 1001 first
    fastify.addHook('preClose', (done) => {
      connections.closeAll(CloseCode.goingAway, 'server going away')
      done()
    })
  }

  const onClosed = (connection: Connection, code: number, subscriptions: number): void => {
    connections.open.delete(connection)
    connections.closed++
    const label = closeCodeLabel(code)
    connections.closedByCode[label] = (connections.closedByCode[label] ?? 0) + 1
    perIp.release(connection.ip)
    services.telemetry?.recordConnectionClosed(subscriptions)
  }

  // one services object for every connection (a connection's own state is what it allocates itself)
  const limits = options.limits
  const outboundLimits = {
    highWaterBytes: limits.conflateAboveBytes,
    lowWaterBytes: Math.floor(limits.conflateAboveBytes / 2),
    maxBufferedBytes: limits.maxBufferedBytes,
    maxHeldFrames: limits.maxHeldFrames,
    drainIntervalMs: 50
  }
  const connectionServices: ConnectionServices = { ...services, replay, snapshot, filters, limitRead, users, watcherCounts, counters: connections.counters, onClosed, outboundLimits }

  await fastify.register(async (scope) => {
    await authenticator.register(scope)
    scope.get(options.server.path, {
      websocket: true,
      logSerializers: { req: requestLogSerializer },
      // identify before the upgrade; refusals are sent as close codes after it, so clients learn why (4401)
      preValidation: async (request, reply) => {
        // a page of another site must not open sockets with its visitors' cookies or on their intranet
        const origin = request.headers.origin
        if (allowedOrigins !== null && origin !== undefined && !allowedOrigins.has(origin)) {
          return await reply.code(403).send({ code: 'forbidden_origin', error: 'this origin may not open a socket here' })
        }
        identities.set(request, await authenticator.identify(request, reply))
      }
    }, (socket: WebSocket, request) => {
      if (connections.draining) return socket.close(CloseCode.serviceRestart, restartReason(RETRY_HINT_MS))
      const ip = request.ip
      let identity = identities.get(request)
      identities.delete(request)
      // no credentials where sign-in is required: the socket may still sign in in-band, within authTimeoutSeconds
      const mustSignIn = identity !== undefined && 'failure' in identity && identity.noCredentials === true
      if (mustSignIn) identity = { principal: ANONYMOUS }
      if (identity === undefined || 'failure' in identity) {
        socket.close(CloseCode.unauthenticated, `unauthenticated: ${identity?.failure ?? 'no identity'}`.slice(0, 120))
        return
      }
      if (!perIp.acquire(ip)) {
        socket.close(CloseCode.tooManyConnections, 'too many connections from this address')
        return
      }
      const key = userKey(identity.principal)
      if (key !== null && !users.acquire(key)) {
        perIp.release(ip)
        socket.close(CloseCode.tooManyConnections, 'too many connections for this user')
        return
      }
      release(socket, request)
      const connection = new Connection(socket, identity.principal, ip, connectionServices)
      if (mustSignIn) connection.requireSignIn(options.limits.authTimeoutSeconds * 1000)
      connections.open.add(connection)
      connections.opened++
    })
  })

  connections.startSweep(options.limits.pingIntervalSeconds, options.limits.idleTimeoutSeconds)
  return connections
}
