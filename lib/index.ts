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
import { randomUUID } from 'node:crypto'
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { openDatabases } from './capture/databases.js'
import { Capture, eventStoreOf } from './capture/index.js'
import { EntityRegistry } from './entities.js'
import { AccessPolicy, type AuthorizeFunction } from './auth/policy.js'
import { Authenticator } from './auth/authenticate.js'
import { createBus, openBroker } from './bus/index.js'
import { historyLimitsOf, historyLingerOf, keepHistories } from './bus/history.js'
import { handoffRecordOf } from './bus/handoff.js'
import { createInterest } from './interest/index.js'
import { createPresence } from './presence/index.js'
import { ChangeRouter } from './route/router.js'
import { Notices } from './route/notices.js'
import { Drops } from './route/drops.js'
import { ChangeStream, type StreamOptions } from './route/stream.js'
import { SnapshotReader } from './reads/snapshot.js'
import { Replayer, replaySourcesOf } from './reads/replay.js'
import { HistoryReplay } from './reads/history.js'
import { Fanout } from './ws/fanout.js'
import { registerRoute } from './ws/route.js'
import { resolveOptions, type ChangefeedOptions } from './options.js'
import { AlreadyRegisteredError } from './errors.js'
import { Telemetry, checkRoutesFree, registerOperationalRoutes } from './telemetry.js'
import type { ChangefeedDecorator } from './decorator.js'
import { Closers, adminStatsOf, decoratorOf, telemetrySnapshotOf, type Pipeline } from './route/pipeline.js'
import { packageVersion } from './package.js'

export type { ChangefeedOptions, ResolvedOptions } from './options.js'
export type { PublishInput } from './route/published.js'
export type { AuthorizeFunction, AuthorizeContext } from './auth/policy.js'
export type { Principal } from './auth/principal.js'
export type { EntityType } from './entities.js'
export type { ChangefeedDecorator, ChangefeedStats } from './decorator.js'
export type { HealthReport } from './telemetry.js'
export { WireError, CloseCode } from './errors.js'
export { resolveOptions, OptionsSchema } from './options.js'
export { redactUrl, redactedNotFound, requestLogSerializer } from './auth/redact.js'
export { tagOrigin } from './capture/origin.js'

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

const changefeed: FastifyPluginAsync<ChangefeedPluginOptions> = async (fastify, opts) => {
  if (fastify.hasDecorator('changefeed')) throw new AlreadyRegisteredError('fastify-changefeed is already registered on this Fastify instance')
  const { authorize, ...fileShaped } = opts
  const options = resolveOptions(fileShaped)
  const log = fastify.log
  checkRoutesFree(fastify, options)
  if (options.telemetry.prometheus !== false || options.telemetry.otlpUrl !== null) log.debug('changefeed: telemetry.prometheus and telemetry.otlpUrl are set up by the standalone server; a host uses its own SDK')
  const closers = new Closers()
  let pipeline: Pipeline | null = null
  try {
    const databases = await openDatabases(fastify, options.databases)
    closers.add(async () => { for (const db of databases.values()) await db.close() })
    const registry = new EntityRegistry(options)
    const telemetry = new Telemetry(packageVersion, () => pipeline === null ? null : telemetrySnapshotOf(pipeline))
    closers.add(() => telemetry.close())

    // publish and deliver: the bus on its broker, the interest store beside it, this instance's sockets' fanout
    const broker = await openBroker(fastify, options.bus)
    closers.add(broker.close)
    const bus = createBus(broker, log, options.bus.prefix)
    closers.add(async () => await bus.close())
    const fanout = new Fanout(options.bus.prefix, registry, log, telemetry)
    closers.add(() => fanout.close())
    const instanceId = randomUUID()
    const interest = await createInterest(broker, options.bus, instanceId, fanout.store, log, historyLingerOf(historyLimitsOf(options)))
    closers.add(async () => await interest.close())
    bus.onMessage(fanout.onBusMessage)
    // a bus gap: this instance may have missed messages, so its watchers resync (what it failed to publish the router owes)
    bus.onGap((reason) => fanout.resyncLocal(reason))
    await fanout.attach(bus, interest)
    closers.add(keepHistories(bus.history, fanout.store, options, log))
    const presence = createPresence(broker, bus, interest, fanout, options, instanceId, log, closers)

    // capture and route
    const stream = options.capture.stream.enabled ? await ChangeStream.open(options.capture.stream as StreamOptions, log) : null
    if (stream !== null) closers.add(async () => await stream.close())
    const eventStore = (database: string): ReturnType<typeof eventStoreOf> => eventStoreOf(options.capture, database, registry.schemaOf(database))
    const drops = new Drops(log)
    const notices = new Notices(registry, databases, eventStore, drops)
    const capture = new Capture(databases, registry, options, log, options.bus.provider !== 'memory', drops, handoffRecordOf(broker, options.bus.prefix))
    const router = new ChangeRouter({ registry, notices, interest, bus, prefix: options.bus.prefix, log, stream, instanceId, deltaCacheBytes: options.limits.deltaCacheBytes, scanner: capture, history: historyLimitsOf(options) })
    closers.add(() => router.close())
    capture.deliverTo({
      onChange: async (change) => await router.routeCaptured(change),
      onOutbox: async (database, rows, attempt) => await router.routeOutbox(database, rows, attempt),
      onGap: (database, reason, { precaution }) => {
        fanout.announceGap(database, reason, { precaution }).catch((err: Error) => log.error({ err }, 'changefeed: announcing a gap failed'))
      },
      onTypes: (database, types, reason) => router.owed.oweTypes(database, types, null, reason),
      onTables: (database) => fanout.announceTables(database)
    })
    fanout.onTables = (database) => capture.lookAgain(database)
    closers.add(async () => await capture.close())
    await capture.start()
    // a host (the demo too) may create its tables between registering the plugin and listening: looked for again
    // once it is ready, and only then is a declared type's missing table worth a warning
    fastify.addHook('onReady', async () => { await capture.ready().catch((err: Error) => log.warn({ err: err.message }, 'changefeed: table re-scan failed')) })

    // reads the sockets ask for, and the sockets
    const replaySources = replaySourcesOf(options, eventStore)
    const replayer = new Replayer(registry, databases, replaySources, notices, new HistoryReplay(bus.history, options.bus.prefix, historyLimitsOf(options)))
    const snapshots = new SnapshotReader(registry, databases, replaySources)
    const policy = new AccessPolicy(databases, registry, {
      adminRoles: options.auth.adminRoles,
      authorize,
      anonymousAllowed: options.auth.anonymous,
      tenantClaim: options.auth.jwt?.tenantClaim !== undefined
    })
    const authenticator = new Authenticator(options.auth, log, options.limits.maxAuthFailuresPerMinute)
    const connections = await registerRoute(fastify, {
      options, registry, policy, authenticator, fanout, presence, log, telemetry, interest, snapshots, replay: async (entity, id, tenantId, since) => await replayer.replay(entity, id, tenantId, since), head: async (entity, id, tenantId) => await replayer.head(entity, id, tenantId)
    })

    const running: Pipeline = pipeline = { options, registry, databases, bus, instanceId, interest, capture, stream, notices, router, drops, fanout, connections, authenticator, policy, snapshots, log }
    const decorator = decoratorOf(running)
    fastify.decorate('changefeed', decorator)
    await registerOperationalRoutes(fastify, { options, health: decorator.health, authenticator, policy, stats: async () => await adminStatsOf(running) })
  } catch (err) {
    await closers.run()
    throw err
  }
  fastify.addHook('onClose', closers.run)
}

/** The plugin: `fastify.register(changefeed, options)`. */
export default fp(changefeed, { fastify: '5.x', name: 'fastify-changefeed' })
export { changefeed }
