/**
 * Telemetry and health. Metrics and traces go through @opentelemetry/api: a host's SDK wins when the plugin is
 * mounted; the standalone server installs one (bin/telemetry.ts). Counts the pipeline already keeps are read by
 * observable instruments at collection time, so the hot paths pay nothing for them; only the latency histogram
 * records per notification (once per instance, not per socket). Names and units follow the OpenTelemetry conventions
 * (bin/README.md: Runbook). The operational endpoints: `<healthPath>/live` (the process answers), `<healthPath>/ready`
 * (ready only while the bus works and every database has a working listener: leading, or following another instance
 * that leads), and an admin-only statistics endpoint.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { metrics, propagation, ROOT_CONTEXT, SpanKind, trace, ValueType, type Attributes, type Histogram, type Span, type Tracer } from '@opentelemetry/api'
import type { Authenticator } from './auth/authenticate.js'
import { requestLogSerializer } from './auth/redact.js'
import type { AccessPolicy } from './auth/policy.js'
import type { ListenerConnection } from './capture/listener.js'
import type { PubSub } from './bus/bus.js'
import type { ResolvedOptions } from './options.js'
import { CloseCode, InvalidOptionsError, RouteTakenError } from './errors.js'

/**
 * The close codes of the protocol, and 1005/1006 (closed without a code, or without a close frame). A peer may
 * close with any code from 3000 to 4999; the rest are counted as `other`, so a client cannot mint metric series.
 */
const PROTOCOL_CLOSE_CODES = new Set<number>([...Object.values(CloseCode), 1005, 1006])

/** The `changefeed.close_code` label of a close code: the code, or `other` for codes outside the protocol. */
export function closeCodeLabel (code: number): string {
  return PROTOCOL_CLOSE_CODES.has(code) ? String(code) : 'other'
}

/** The counts the pipeline keeps, read at collection time. */
export interface TelemetrySnapshot {
  /** `closedByCode`: by closeCodeLabel */
  connections: { opened: number, closed: number, active: number, slowConsumerCloses: number, conflated: number, replayed: number, resumes: Record<string, number>, closedByCode: Record<string, number> }
  /** bytes of channel history this process holds (null: the broker holds it) */
  historyBytes: number | null
  subscriptions: { byType: Record<string, number>, createdByType: Record<string, number>, removedByType: Record<string, number> }
  notifications: { sentByPayload: Record<string, number>, failedByPayload: Record<string, number> }
  router: { changes: number, unwatched: number, documentReads: number, published: number, failed: number, givenUp: number }
  /** changes dropped, by reason */
  dropped: Record<string, number | undefined>
  auth: { attempts: Record<string, number>, failures: Record<string, number> }
  listeners: Record<string, { gaps: number, reconnects: number, leaderships: number, outboxPublished: number }>
  busErrors: number
}

const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5]
const SUBSCRIPTION_BUCKETS = [0, 1, 2, 5, 10, 20, 50, 100]

export class Telemetry {
  readonly tracer: Tracer
  private readonly latency: Histogram
  private readonly subscriptionsPerConnection: Histogram
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 20 })
  private readonly payloadAttributes = new Map<string, Attributes>()

  /** `collect`: the counts now, or null before the pipeline is up (nothing is observed then) */
  constructor (version: string, collect: () => TelemetrySnapshot | null) {
    const meter = metrics.getMeter('fastify-changefeed', version)
    this.tracer = trace.getTracer('fastify-changefeed', version)
    this.latency = meter.createHistogram('changefeed.notification.latency', {
      unit: 's',
      description: 'time from the change (trigger clock, or publish call) to its frame written to the local sockets',
      advice: { explicitBucketBoundaries: LATENCY_BUCKETS_S }
    })
    this.subscriptionsPerConnection = meter.createHistogram('changefeed.connection.subscriptions', {
      unit: '{subscription}',
      valueType: ValueType.INT,
      description: 'subscriptions a connection held when it closed',
      advice: { explicitBucketBoundaries: SUBSCRIPTION_BUCKETS }
    })
    this.loopDelay.enable()

    const counter = (name: string, unit: string, description: string) => meter.createObservableCounter(name, { unit, description, valueType: ValueType.INT })
    const gauge = (name: string, unit: string, description: string) => meter.createObservableUpDownCounter(name, { unit, description, valueType: ValueType.INT })
    const opened = counter('changefeed.connections.opened', '{connection}', 'WebSocket connections accepted')
    const closed = counter('changefeed.connections.closed', '{connection}', 'WebSocket connections closed, by close code')
    const active = gauge('changefeed.connections.active', '{connection}', 'WebSocket connections open now')
    const slow = counter('changefeed.connections.slow_consumer_closes', '{connection}', 'connections closed because they stopped reading (4409)')
    const conflated = counter('changefeed.notifications.conflated', '{notification}', 'notifications replaced by a later state of the same entity for a slow reader')
    const replayed = counter('changefeed.notifications.replayed', '{notification}', 'notifications replayed to clients resuming with since (from the outbox, or the bus\'s history)')
    const resumes = counter('changefeed.resumes', '{subscribe}', 'subscribes with since, by outcome: recovered, not_recovered (outside the window, history lost, none kept), foreign (another owner\'s documents), failed')
    const historyBytes = gauge('changefeed.history.bytes', 'By', 'bytes of channel history this process holds (memory bus; NATS: what its resumes read lately)')
    const outbox = counter('changefeed.outbox.published', '{change}', 'outbox rows this instance published (outbox mode)')
    const created = counter('changefeed.subscriptions.created', '{subscription}', 'subscriptions created, by entity type')
    const removed = counter('changefeed.subscriptions.removed', '{subscription}', 'subscriptions removed, by entity type')
    const subscriptions = gauge('changefeed.subscriptions.active', '{subscription}', 'subscriptions on this instance now, by entity type')
    const sent = counter('changefeed.notifications.sent', '{notification}', 'notification frames written to sockets, by payload type')
    const failed = counter('changefeed.notifications.failed', '{notification}', 'notification frames not written (socket closing or slow), by payload type')
    const changes = counter('changefeed.changes', '{change}', 'changes routed, by outcome (published, unwatched, failed, given_up, and the reasons of lib/route/drops.ts: forged, replayed, unannounced, malformed, unknown_table, untyped_stream, unknown_stream_type, not_event_store)')
    const reads = counter('changefeed.document.reads', '{read}', 'documents read from the database for full payloads')
    const authAttempts = counter('changefeed.auth.attempts', '{attempt}', 'authentication attempts, by method')
    const authFailures = counter('changefeed.auth.failures', '{attempt}', 'failed authentication attempts, by method')
    const gaps = counter('changefeed.listener.gaps', '{gap}', 'times watchers of a database were told to resync because changes may have been lost')
    const reconnects = counter('changefeed.listener.reconnects', '{reconnect}', 'listener connections re-established after a loss')
    const leaderships = counter('changefeed.leader.changes', '{change}', 'times this instance became the listener (leader) of a database')
    const busErrors = counter('changefeed.bus.errors', '{error}', 'publish or subscribe calls the bus refused')
    const loopDelay = meter.createObservableGauge('nodejs.eventloop.delay.p99', { unit: 's', description: 'event loop delay, 99th percentile since the last collection' })

    meter.addBatchObservableCallback((result) => {
      const s = collect()
      if (s === null) return
      const byKey = (instrument: Parameters<typeof result.observe>[0], values: Record<string, number>, key: string): void => {
        for (const [value, n] of Object.entries(values)) result.observe(instrument, n, { [key]: value })
      }
      result.observe(opened, s.connections.opened)
      byKey(closed, s.connections.closedByCode, 'changefeed.close_code')
      result.observe(active, s.connections.active)
      result.observe(slow, s.connections.slowConsumerCloses)
      result.observe(conflated, s.connections.conflated)
      result.observe(replayed, s.connections.replayed)
      byKey(resumes, s.connections.resumes, 'changefeed.outcome')
      if (s.historyBytes !== null) result.observe(historyBytes, s.historyBytes)
      byKey(created, s.subscriptions.createdByType, 'changefeed.entity_type')
      byKey(removed, s.subscriptions.removedByType, 'changefeed.entity_type')
      byKey(subscriptions, s.subscriptions.byType, 'changefeed.entity_type')
      byKey(sent, s.notifications.sentByPayload, 'changefeed.payload_type')
      byKey(failed, s.notifications.failedByPayload, 'changefeed.payload_type')
      result.observe(changes, s.router.published, { 'changefeed.outcome': 'published' })
      result.observe(changes, s.router.unwatched, { 'changefeed.outcome': 'unwatched' })
      result.observe(changes, s.router.failed, { 'changefeed.outcome': 'failed' })
      result.observe(changes, s.router.givenUp, { 'changefeed.outcome': 'given_up' })
      for (const [reason, n] of Object.entries(s.dropped)) result.observe(changes, n ?? 0, { 'changefeed.outcome': reason })
      result.observe(reads, s.router.documentReads)
      byKey(authAttempts, s.auth.attempts, 'changefeed.auth.method')
      byKey(authFailures, s.auth.failures, 'changefeed.auth.method')
      for (const [database, l] of Object.entries(s.listeners)) {
        result.observe(gaps, l.gaps, { 'db.namespace': database })
        result.observe(reconnects, l.reconnects, { 'db.namespace': database })
        result.observe(leaderships, l.leaderships, { 'db.namespace': database })
        result.observe(outbox, l.outboxPublished, { 'db.namespace': database })
      }
      result.observe(busErrors, s.busErrors)
      result.observe(loopDelay, this.loopDelay.percentile(99) / 1e9)
      this.loopDelay.reset()
    }, [opened, closed, active, slow, conflated, replayed, resumes, historyBytes, outbox, created, removed, subscriptions, sent, failed, changes, reads, authAttempts, authFailures,
      gaps, reconnects, leaderships, busErrors, loopDelay])
  }

  /** One sample per notification per instance: from the change's time to its frame written to the local sockets. */
  recordDelivery (ts: number, payloadType: string): void {
    let attributes = this.payloadAttributes.get(payloadType)
    if (attributes === undefined) {
      attributes = { 'changefeed.payload_type': payloadType }
      this.payloadAttributes.set(payloadType, attributes)
    }
    this.latency.record(Math.max(0, Date.now() - ts) / 1000, attributes)
  }

  /** A span for this instance's delivery to `watchers` sockets, linked to the span of the instance that published the change. */
  deliverySpan (traceparent: string, watchers: number): Span {
    const remote = trace.getSpanContext(propagation.extract(ROOT_CONTEXT, { traceparent }))
    return this.tracer.startSpan('changefeed deliver', {
      kind: SpanKind.CONSUMER,
      links: remote === undefined ? [] : [{ context: remote }],
      attributes: { 'changefeed.watchers': watchers }
    })
  }

  recordConnectionClosed (subscriptions: number): void {
    this.subscriptionsPerConnection.record(subscriptions)
  }

  close (): void {
    this.loopDelay.disable()
  }
}

export interface HealthReport {
  ready: boolean
  bus: { provider: string, ready: boolean }
  databases: Record<string, { state: string, leader: boolean }>
}

export function healthOf (bus: PubSub, listeners: ReadonlyMap<string, ListenerConnection>): HealthReport {
  const databases: HealthReport['databases'] = {}
  let ready = bus.ready
  for (const [name, listener] of listeners) {
    databases[name] = { state: listener.state, leader: listener.isLeader }
    if (listener.state !== 'listening' && listener.state !== 'following') ready = false
  }
  return { ready, bus: { provider: bus.provider, ready: bus.ready }, databases }
}

export interface OperationalServices {
  options: ResolvedOptions
  health: () => HealthReport
  stats: () => Promise<unknown>
  authenticator: Authenticator
  policy: AccessPolicy
}

/**
 * Every GET route the plugin will add, with the option that names it: the socket route, and the health and
 * statistics routes when turned on (a mounted plugin adds only the socket route unless told).
 */
export function pluginRoutes (options: ResolvedOptions): Array<{ option: string, path: string }> {
  const { healthPath, statsPath } = options.telemetry
  const routes = [{ option: 'server.path', path: options.server.path }]
  if (healthPath !== null) routes.push({ option: 'telemetry.healthPath', path: `${healthPath}/live` }, { option: 'telemetry.healthPath', path: `${healthPath}/ready` })
  if (statsPath !== null) routes.push({ option: 'telemetry.statsPath', path: statsPath })
  return routes
}

/**
 * Refuses, before anything is opened, a route the host already has: Fastify would otherwise stop the start with
 * FST_ERR_DUPLICATED_ROUTE, which names neither the plugin nor the option that moves the route.
 */
export function checkRoutesFree (fastify: FastifyInstance, options: ResolvedOptions): void {
  const pointer = (name: string): string => '/' + name.replace('.', '/')
  const seen = new Map<string, string>()
  for (const { option, path } of pluginRoutes(options)) {
    const other = seen.get(path)
    if (other !== undefined) throw new InvalidOptionsError(`${pointer(option)} and ${pointer(other)} both make GET ${path}`)
    seen.set(path, option)
    if (fastify.hasRoute({ method: 'GET', url: path })) throw new RouteTakenError(option, path)
  }
}

/**
 * The admin check of the operational routes: resolves true for a request with admin credentials (Basic, Bearer or
 * `?token=`, as for the socket); otherwise answers 401 (none, or refused) or 403 (not an admin) and resolves false.
 */
export function adminCheck ({ authenticator, policy }: Pick<OperationalServices, 'authenticator' | 'policy'>): (request: FastifyRequest, reply: FastifyReply) => Promise<boolean> {
  return async (request, reply) => {
    const identity = await authenticator.identify(request, reply)
    if ('failure' in identity || identity.principal.kind === 'anonymous') {
      await reply.code(401).send({ code: 'unauthenticated', error: 'admin credentials required' })
      return false
    }
    if (!policy.isAdmin(identity.principal)) {
      await reply.code(403).send({ code: 'forbidden', error: 'an admin role is required' })
      return false
    }
    return true
  }
}

export async function registerOperationalRoutes (fastify: FastifyInstance, services: OperationalServices): Promise<void> {
  const { healthPath, statsPath } = services.options.telemetry
  // the stats endpoint takes `?token=` like the socket route does; no route logs one
  const logged = { logSerializers: { req: requestLogSerializer } }
  if (healthPath !== null) {
    fastify.get(`${healthPath}/live`, logged, async () => ({ status: 'ok' }))
    fastify.get(`${healthPath}/ready`, logged, async (_request, reply) => {
      const report = services.health()
      return await reply.code(report.ready ? 200 : 503).send(report)
    })
  }
  if (statsPath !== null) {
    const isAdmin = adminCheck(services)
    fastify.get(statsPath, logged, async (request, reply) => await isAdmin(request, reply) ? await services.stats() : reply)
  }
}
