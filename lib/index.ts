// The plugin registers @fastify/postgres pools (app.pg.<name>): that package's declaration of `app.pg` comes with
// ours (kept in the emitted declarations), so a TypeScript host need not import @fastify/postgres to use them.
/// <reference types="@fastify/postgres" preserve="true" />
/**
 * fastify-changefeed: push PostgreSQL data changes to WebSocket clients.
 *
 * One plugin registers everything from one options object: the databases (@fastify/postgres pools, or the
 * embedded PGlite), capture (triggers + one LISTEN connection per database), the entity registry, the bus, the
 * subscription store, the /ws route, and the `fastify.changefeed` decorator.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import type { Database } from './capture/database.js'
import { openDatabases } from './capture/databases.js'
import { Capture, eventStoreOf } from './capture/index.js'
import { Outbox } from './capture/outbox.js'
import { ChangeStream, type StreamOptions } from './stream.js'
import { EntityRegistry } from './entities.js'
import { AccessPolicy, type AuthorizeFunction } from './auth/policy.js'
import { Authenticator } from './auth/authenticate.js'
import { createBus, type BusParts } from './bus/index.js'
import { ChangeRouter } from './router.js'
import { Notices } from './notices.js'
import { SnapshotReader } from './snapshot.js'
import { Replayer, type ReplaySource } from './replay.js'
import { Fanout } from './ws/fanout.js'
import { registerRoute } from './ws/route.js'
import { resolveOptions, type ChangefeedOptions, type ResolvedOptions } from './options.js'
import { AlreadyRegisteredError, InvalidOptionsError } from './errors.js'
import { Drops } from './drops.js'
import { Telemetry } from './telemetry.js'
import { checkRoutesFree, registerOperationalRoutes } from './health.js'
import type { ChangefeedDecorator } from './decorator.js'
import { adminStatsOf, decoratorOf, telemetrySnapshotOf, type Pipeline } from './pipeline.js'
import { packageVersion } from './paths.js'

export type { ChangefeedOptions, ResolvedOptions } from './options.js'
export type { PublishInput } from './router.js'
export type { AuthorizeFunction, AuthorizeContext } from './auth/policy.js'
export type { Principal } from './auth/principal.js'
export type { EntityType } from './entities.js'
export type { ChangefeedDecorator, ChangefeedStats } from './decorator.js'
export type { HealthReport } from './health.js'
export { WireError, CloseCode } from './errors.js'
export { resolveOptions, OptionsSchema } from './options.js'
export { tagOrigin } from './origin.js'

/** Plugin options: the config file's shape, plus what only code can pass. */
export interface ChangefeedPluginOptions extends ChangefeedOptions {
  /** A host's own authorization rule, run after the entity type's access kind allowed a subscription. */
  authorize?: AuthorizeFunction
}

declare module 'fastify' {
  interface FastifyInstance {
    changefeed: ChangefeedDecorator
  }
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

/** Outbox mode: where each database's outbox is read for `since` replays. */
function replaySourcesOf (options: ResolvedOptions, databases: ReadonlyMap<string, Database>, eventStore: (database: string) => ReturnType<typeof eventStoreOf>): Map<string, ReplaySource> {
  const sources = new Map<string, ReplaySource>()
  if (options.capture.mode !== 'outbox') return sources
  for (const name of databases.keys()) {
    const store = eventStore(name)
    sources.set(name, { outbox: new Outbox(options.capture.channel), tables: store === null ? [] : [store.table, store.streams], maxReplay: options.capture.outbox.maxReplay })
  }
  return sources
}

const changefeed: FastifyPluginAsync<ChangefeedPluginOptions> = async (fastify, opts) => {
  if (fastify.hasDecorator('changefeed')) throw new AlreadyRegisteredError('fastify-changefeed is already registered on this Fastify instance')
  const { authorize, ...fileShaped } = opts
  const options = resolveOptions(fileShaped)
  const log = fastify.log
  refuseUnsupported(fastify, options)
  checkRoutesFree(fastify, options)

  const databases = await openDatabases(fastify, options.databases)
  const registry = new EntityRegistry(options)
  let pipeline: Pipeline | null = null
  const telemetry = new Telemetry(packageVersion, () => pipeline === null ? null : telemetrySnapshotOf(pipeline))
  const fanout = new Fanout(options.bus.prefix, registry, log, telemetry)
  let parts: BusParts | null = null
  let capture: Capture | null = null
  let stream: ChangeStream | null = null
  let router: ChangeRouter | null = null
  const shutdown = async (): Promise<void> => {
    fanout.close()
    router?.owed.close()
    await capture?.close()
    await stream?.close()
    await parts?.close()
    for (const db of databases.values()) await db.close()
    telemetry.close()
  }

  try {
    // the bus delivers to the fanout, which is attached to the bus once it exists. A bus gap: this instance may
    // have missed messages, so every local watcher resyncs (what it failed to publish is owed by the router)
    parts = await createBus(fastify, options.bus, { onMessage: fanout.onBusMessage, onGap: (reason) => fanout.resyncLocal(reason) }, fanout.store)
    const { bus, interest, instanceId } = parts
    await fanout.attach(bus, interest)
    const eventStore = (database: string): ReturnType<typeof eventStoreOf> => eventStoreOf(options.capture, database, registry.schemaOf(database))
    if (options.capture.stream.enabled) stream = await ChangeStream.open(options.capture.stream as StreamOptions, log)
    const drops = new Drops(log)
    const notices = new Notices(registry, databases, eventStore, drops)
    const changeRouter = router = new ChangeRouter({
      registry, notices, interest, bus, prefix: options.bus.prefix, log, stream, instanceId, deltaCacheBytes: options.limits.deltaCacheBytes, rescan: async (database) => await capture?.rescanDatabase(database)
    })
    const replaySources = replaySourcesOf(options, databases, eventStore)
    const replayer = new Replayer(registry, databases, replaySources, notices)
    const snapshots = new SnapshotReader(registry, databases, replaySources)
    capture = new Capture(databases, registry, options, {
      onChange: (change) => changeRouter.routeCaptured(change),
      onOutbox: async (database, rows, attempt) => await changeRouter.routeOutbox(database, rows, attempt),
      onGap: (database, reason, precaution) => {
        fanout.announceGap(database, reason, precaution).catch((err: Error) => log.error({ err }, 'changefeed: announcing a gap failed'))
      }
    }, log, options.bus.provider !== 'memory', drops)
    await capture.start()
    // a host (the demo too) may create its tables between registering the plugin and listening: looked for again
    // once it is ready, and only then is a declared type's missing table worth a warning
    const started = capture
    fastify.addHook('onReady', async () => {
      await started.ready().catch((err: Error) => log.warn({ err: err.message }, 'changefeed: table re-scan failed'))
    })

    const policy = new AccessPolicy(databases, registry, {
      adminRoles: options.auth.adminRoles,
      authorize,
      anonymousAllowed: options.auth.anonymous,
      tenantClaim: options.auth.jwt?.tenantClaim !== undefined
    })
    const authenticator = new Authenticator(options.auth, log, options.limits.maxAuthFailuresPerMinute)
    const connections = await registerRoute(fastify, {
      options, registry, policy, authenticator, fanout, log, telemetry, interest, snapshots, replay: async (entity, id, tenantId, since) => await replayer.replay(entity, id, tenantId, since)
    })
    const running: Pipeline = pipeline = {
      options, registry, databases, bus, instanceId, interest, capture, stream, notices, router: changeRouter, drops, fanout, connections, authenticator, snapshots
    }
    const decorator = decoratorOf(running)
    fastify.decorate('changefeed', decorator)
    await registerOperationalRoutes(fastify, { options, health: decorator.health, authenticator, policy, stats: async () => await adminStatsOf(running) })
  } catch (err) {
    await shutdown()
    throw err
  }
  fastify.addHook('onClose', async () => { await shutdown() })
}

/** The plugin: `fastify.register(changefeed, options)`. */
export default fp(changefeed, { fastify: '5.x', name: 'fastify-changefeed' })
export { changefeed }
