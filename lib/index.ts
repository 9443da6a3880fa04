/**
 * fastify-changefeed: push PostgreSQL data changes to WebSocket clients.
 *
 * One plugin registers everything from one options object: the databases (@fastify/postgres pools, or the
 * embedded PGlite), capture (triggers + one LISTEN connection per database), the entity registry, the bus, the
 * subscription store, the /ws route, and the `fastify.changefeed` decorator.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import fastifyPostgres from '@fastify/postgres'
import type pg from 'pg'
import { PGliteDatabase, PgDatabase, type Database } from './capture/database.js'
import { Capture, eventStoreOf } from './capture/index.js'
import { coalesceRows } from './capture/coalesce.js'
import { Outbox } from './capture/outbox.js'
import { ChangeStream, type StreamOptions } from './stream.js'
import { EntityRegistry } from './entities.js'
import { AccessPolicy, type AuthorizeFunction } from './auth/policy.js'
import { Authenticator, type AuthCounters } from './auth/authenticate.js'
import { createBus, type BusParts } from './bus/index.js'
import { ChangeRouter, type PublishInput, type ReplaySource, type RouterCounters } from './router.js'
import { Fanout } from './ws/fanout.js'
import { registerRoute } from './ws/route.js'
import { resolveOptions, type ChangefeedOptions, type ResolvedOptions } from './options.js'
import { AlreadyRegisteredError, DatabaseMismatchError, InvalidOptionsError } from './errors.js'
import { Drops, type DropReason } from './drops.js'
import { Telemetry, type TelemetrySnapshot } from './telemetry.js'
import { checkRoutesFree, healthOf, registerOperationalRoutes, type HealthReport } from './health.js'
import { packageVersion } from './paths.js'

export type { ChangefeedOptions, ResolvedOptions } from './options.js'
export type { PublishInput } from './router.js'
export type { AuthorizeFunction, AuthorizeContext } from './auth/policy.js'
export type { Principal } from './auth/principal.js'
export type { EntityType } from './entities.js'
export { WireError, CloseCode } from './errors.js'
export { resolveOptions, OptionsSchema } from './options.js'
export { tagOrigin } from './origin.js'

/** Plugin options: the config file's shape, plus what only code can pass. */
export interface ChangefeedPluginOptions extends ChangefeedOptions {
  /** A host's own authorization rule, run after the entity type's access kind allowed a subscription. */
  authorize?: AuthorizeFunction
}

export interface ChangefeedStats {
  connections: { active: number, opened: number, closed: number, slowConsumerCloses: number, conflated: number, replayed: number, closedByCode: Record<string, number> }
  /** `counted`: subscriptions that receive watcher counts */
  subscriptions: { active: number, entities: number, byType: Record<string, number>, created: number, removed: number, counted: number }
  /** `outboxPublished`: outbox rows this instance published (outbox mode) */
  listeners: Record<string, { state: string, reconnects: number, leaderships: number, gaps: number, outboxPublished: number }>
  /** the JetStream stream of all changes, when enabled */
  stream: { published: number, failed: number } | null
  /** `channels`: entity channels this instance is subscribed to on the bus (one per locally watched entity) */
  bus: { provider: string, ready: boolean, instanceId: string, channels: number }
  router: RouterCounters
  /** changes not delivered for a reason other than "nobody watches", by reason (lib/drops.ts) */
  dropped: Partial<Record<DropReason, number>>
  /** watched tables the capture trigger could not be put on ("database.schema.table" → why) */
  untriggeredTables: Record<string, string>
  auth: AuthCounters
}

/** The `fastify.changefeed` decorator. */
export interface ChangefeedDecorator {
  /**
   * Publishes a change without the database (live feeds, periodic streams). It takes the same route as a
   * captured change: dropped when nobody watches, encoded once, delivered through the bus to every watcher.
   * Resolves to false when it was dropped because nobody watches (known without a round trip only with the memory
   * bus), true when it was handed to the bus. Throws CHANGEFEED_UNKNOWN_ENTITY_TYPE for an unknown type.
   */
  publish(change: PublishInput): Promise<boolean>
  /**
   * Installs triggers on (and discovers) watched tables created since the start. Tables appear by themselves where
   * an event trigger could be created, and on every re-scan interval; call this after migrations to not wait.
   */
  rescan(): Promise<void>
  /** Counts for monitoring and tests (this instance). */
  stats(): ChangefeedStats
  /** Watchers of an entity (one tenant's, for tenanted types) across the cluster. */
  watchers(entityType: string, entityId: string, tenantId?: string): Promise<number>
  /** Subscriptions per entity type across the cluster. */
  totals(): Promise<Record<string, number>>
  /** Readiness: the bus works and every database has a working listener (also served at `<telemetry.healthPath>/ready` when that is set). */
  health(): HealthReport
  /** The resolved options (defaults applied). */
  readonly options: ResolvedOptions
  /** The entity registry: declared and discovered types. */
  readonly registry: EntityRegistry
  /** The databases by name, behind the interface capture uses (PostgreSQL or PGlite). */
  readonly databases: ReadonlyMap<string, Database>
}

declare module 'fastify' {
  interface FastifyInstance {
    changefeed: ChangefeedDecorator
  }
}

async function openDatabases (fastify: FastifyInstance, options: ResolvedOptions): Promise<Map<string, Database>> {
  const databases = new Map<string, Database>()
  for (const { name, url } of options.databases) {
    if (url.startsWith('pglite:')) {
      databases.set(name, await PGliteDatabase.open(name, url))
      continue
    }
    // a host that registered @fastify/postgres under this name keeps its pool; otherwise we register one
    const existing = (fastify as unknown as { pg?: Record<string, { pool?: pg.Pool }> }).pg?.[name]
    const own = existing?.pool === undefined
    if (own) await fastify.register(fastifyPostgres, { name, connectionString: url })
    const pool = (fastify as unknown as { pg: Record<string, { pool: pg.Pool }> }).pg[name].pool
    // an idle connection cut by the server (a restart, pg_terminate_backend) is an 'error' on the pool, which
    // ends the process when nobody listens; the pool has already dropped it and connects anew on the next query
    if (own) pool.on('error', (err) => fastify.log.warn({ database: name, err: err.message }, 'changefeed: an idle database connection was lost'))
    const db = new PgDatabase(name, pool, url)
    // the listener connects with `url` and queries go through the pool: both must be the same database
    if (!own) await checkSameDatabase(db, url)
    databases.set(name, db)
  }
  return databases
}

/** A host's pool registered under a database's name must reach the database its url names. */
async function checkSameDatabase (db: PgDatabase, url: string): Promise<void> {
  const expected = decodeURIComponent(new URL(url).pathname.replace(/^\//, ''))
  const [row] = await db.query<{ name: string }>('SELECT current_database() AS name')
  if (expected !== '' && row?.name !== expected) throw new DatabaseMismatchError(db.name, row?.name ?? '?', expected)
}

/** Options the schema accepts (the config contract) but this version does not act on: refused, never ignored. */
function refuseUnsupported (fastify: FastifyInstance, options: ResolvedOptions): void {
  const log = fastify.log
  if (options.bus.provider === 'redis' && options.bus.url === undefined && (fastify as unknown as { redis?: unknown }).redis === undefined) {
    throw new InvalidOptionsError('/bus/url is required for provider "redis" unless the host registered @fastify/redis')
  }
  if (options.telemetry.prometheus || options.telemetry.otlpUrl !== null) {
    log.debug('changefeed: telemetry.prometheus and telemetry.otlpUrl are set up by the standalone server; a host uses its own SDK')
  }
}

const changefeed: FastifyPluginAsync<ChangefeedPluginOptions> = async (fastify, opts) => {
  if (fastify.hasDecorator('changefeed')) throw new AlreadyRegisteredError('fastify-changefeed is already registered on this Fastify instance')
  const { authorize, ...fileShaped } = opts
  const options = resolveOptions(fileShaped)
  const log = fastify.log
  refuseUnsupported(fastify, options)
  checkRoutesFree(fastify, options)

  const databases = await openDatabases(fastify, options)
  const registry = new EntityRegistry(options)
  const fanout = new Fanout(options.bus.prefix, registry, log)
  let parts: BusParts | null = null
  let capture: Capture | null = null
  let stream: ChangeStream | null = null
  let stopOwedResyncs = (): void => {}
  const shutdown = async (): Promise<void> => {
    fanout.close()
    stopOwedResyncs()
    await capture?.close()
    await stream?.close()
    await parts?.close()
    for (const db of databases.values()) await db.close()
  }
  const announceGap = (database: string, reason: string, precaution: boolean): void => {
    fanout.announceGap(database, reason, precaution).catch((err: Error) => log.error({ err }, 'changefeed: announcing a gap failed'))
  }
  /**
   * This instance may have missed messages (its bus subscriber was away): every local watcher resyncs. What this
   * instance failed to publish meanwhile is owed to those entities' watchers by the router.
   */
  const onBusGap = (reason: string): void => {
    fanout.resyncLocal(reason)
  }

  try {
    parts = await createBus(fastify, options.bus, { onMessage: fanout.onBusMessage, onGap: onBusGap }, fanout.store)
    const { bus, interest } = parts
    await fanout.attach(bus, interest)
    const replaySources = new Map<string, ReplaySource>()
    const eventStore = (database: string): ReturnType<typeof eventStoreOf> => eventStoreOf(options.capture, database, registry.schemaOf(database))
    if (options.capture.mode === 'outbox') {
      for (const name of databases.keys()) {
        const store = eventStore(name)
        replaySources.set(name, { outbox: new Outbox(options.capture.channel), tables: store === null ? [] : [store.table, store.streams], maxReplay: options.capture.outbox.maxReplay })
      }
    }
    if (options.capture.stream.enabled) stream = await ChangeStream.open(options.capture.stream as StreamOptions, log)
    const drops = new Drops(log)
    const router = new ChangeRouter({
      registry,
      databases,
      interest,
      bus,
      prefix: options.bus.prefix,
      log,
      drops,
      eventStore,
      rescan: async (database) => await capture?.rescanDatabase(database),
      replaySources,
      stream,
      instanceId: parts.instanceId
    })
    stopOwedResyncs = () => router.owed.close()
    capture = new Capture(databases, registry, options, {
      // notify mode: a change that fails now is lost, and its watchers must hear of it
      onChange: (change) => { void router.routeChange(change).then((ok) => { if (!ok) router.giveUp(change) }) },
      onGap: announceGap,
      onOutbox: async (database, rows, { final, current }) => {
        const changes = coalesceRows(database, registry.tenantOfDatabase(database), rows)
        // a deposed publisher stops at once: the new leader publishes from the stored cursor
        const results = await Promise.all(changes.map(async (c) => current() && await router.routeChange(c, !final)))
        if (results.every(Boolean)) return true
        // during an outage the batch waits (watchers got a bus_gap resync); only a change that fails while
        // everything works is given up on
        if (!final || !current() || router.outage) return false
        for (const [i, change] of changes.entries()) if (!results[i]) router.giveUp(change)
        return true
      }
    }, log, options.bus.provider !== 'memory', drops)
    await capture.start()

    const policy = new AccessPolicy(databases, registry, {
      adminRoles: options.auth.adminRoles,
      authorize,
      anonymousAllowed: options.auth.anonymous,
      tenantClaim: options.auth.jwt?.tenantClaim !== undefined
    })
    const authenticator = new Authenticator(options.auth, log, options.limits.maxAuthFailuresPerMinute)
    const telemetry = new Telemetry(packageVersion, () => telemetrySnapshot())
    fanout.telemetry = telemetry
    const connections = await registerRoute(fastify, {
      options, registry, policy, authenticator, fanout, log, telemetry, interest, replay: async (entity, id, tenantId, since) => await router.replay(entity, id, tenantId, since)
    })
    const listeners = capture.listeners
    const listenerStats = (): ChangefeedStats['listeners'] => Object.fromEntries([...listeners].map(([name, l]) =>
      [name, { state: l.state, reconnects: l.reconnects, leaderships: l.leaderships, gaps: l.gaps, outboxPublished: l.outboxPublished }]))
    const telemetrySnapshot = (): TelemetrySnapshot => ({
      connections: { opened: connections.opened, closed: connections.closed, active: connections.open.size, slowConsumerCloses: connections.counters.slowConsumerCloses, conflated: connections.counters.conflated, replayed: connections.counters.replayed, closedByCode: connections.closedByCode },
      subscriptions: { byType: fanout.store.countByType(), createdByType: fanout.counters.createdByType, removedByType: fanout.counters.removedByType },
      notifications: { sentByPayload: fanout.counters.sentByPayload, failedByPayload: fanout.counters.failedByPayload },
      router: router.counters,
      dropped: drops.counts,
      auth: authenticator.counters,
      listeners: listenerStats(),
      busErrors: router.counters.busErrors + fanout.counters.busErrors
    })
    const health = (): HealthReport => healthOf(bus, listeners)

    const decorator: ChangefeedDecorator = {
      publish: async (change) => await router.publish(change),
      rescan: async () => await capture!.rescan(),
      watchers: async (entityType, entityId, tenantId) => await interest.watchers(fanout.channel(registry.get(entityType)?.name ?? entityType, entityId, tenantId ?? null)),
      totals: async () => await interest.totals(),
      health,
      stats: () => ({
        connections: { active: connections.open.size, opened: connections.opened, closed: connections.closed, ...connections.counters, closedByCode: { ...connections.closedByCode } },
        subscriptions: {
          active: fanout.store.subscriptions,
          entities: fanout.store.entities,
          byType: fanout.store.countByType(),
          created: Object.values(fanout.counters.createdByType).reduce((a, b) => a + b, 0),
          removed: Object.values(fanout.counters.removedByType).reduce((a, b) => a + b, 0),
          counted: connections.watcherCounts.sockets
        },
        listeners: listenerStats(),
        stream: stream === null ? null : { published: stream.published, failed: stream.failed },
        bus: { provider: bus.provider, ready: bus.ready, instanceId: parts!.instanceId, channels: fanout.busChannels },
        router: { ...router.counters },
        dropped: { ...drops.counts },
        untriggeredTables: Object.fromEntries(capture!.untriggered),
        auth: structuredClone(authenticator.counters)
      }),
      options,
      registry,
      databases
    }
    fastify.decorate('changefeed', decorator)
    await registerOperationalRoutes(fastify, {
      options,
      health,
      authenticator,
      policy,
      stats: async () => ({
        instance: decorator.stats(),
        cluster: { subscriptionsByType: await interest.totals() },
        busiest: await Promise.all(fanout.store.busiest(10).map(async (e) => ({
          entityType: e.entityType, entityId: e.entityId, tenantId: e.tenantId, local: e.watchers, cluster: await interest.watchers(e.channel)
        })))
      })
    })
    fastify.addHook('onClose', async () => telemetry.close())
  } catch (err) {
    await shutdown()
    throw err
  }
  fastify.addHook('onClose', async () => { await shutdown() })
}

/** The plugin: `fastify.register(changefeed, options)`. */
export default fp(changefeed, { fastify: '5.x', name: 'fastify-changefeed' })
export { changefeed }
