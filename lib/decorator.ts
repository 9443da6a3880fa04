/**
 * What the plugin shows of itself: the `fastify.changefeed` decorator and its statistics (the types a host compiles
 * against), and the running pipeline, as lib/index.ts put it together, that they are read from: the decorator, its
 * statistics, the counts telemetry observes, and the admin statistics route's body.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Database } from './capture/database.js'
import type { Capture } from './capture/index.js'
import type { EntityRegistry } from './entities.js'
import type { AuthCounters, Authenticator } from './auth/authenticate.js'
import type { AccessPolicy } from './auth/policy.js'
import type { PubSub } from './bus/bus.js'
import type { InterestStore } from './interest/interest.js'
import type { ChangeStream } from './route/stream.js'
import type { ChangeRouter, RouterCounters } from './route/router.js'
import type { PublishInput } from './route/published.js'
import type { Notices } from './route/notices.js'
import type { DropReason, Drops } from './route/drops.js'
import type { DeltaCounters } from './route/deltas.js'
import type { SnapshotReader } from './reads/snapshot.js'
import type { Fanout } from './ws/fanout.js'
import type { ConnectionSet } from './ws/route.js'
import type { ResolvedOptions } from './options.js'
import { adminCheck, healthOf, type HealthReport, type TelemetrySnapshot } from './telemetry.js'

export interface ChangefeedStats {
  connections: { active: number, opened: number, closed: number, slowConsumerCloses: number, conflated: number, replayed: number, closedByCode: Record<string, number> }
  /** `counted`: subscriptions that receive watcher counts */
  subscriptions: { active: number, entities: number, byType: Record<string, number>, created: number, removed: number, counted: number }
  /** filtered feeds on this instance: different filters held (`groups`), sockets' subscriptions to them, reads made */
  filters: { groups: number, subscriptions: number, reads: number }
  /** `outboxPublished`: outbox rows this instance published (outbox mode) */
  listeners: Record<string, { state: string, reconnects: number, leaderships: number, gaps: number, outboxPublished: number }>
  /** the JetStream stream of all changes, when enabled */
  stream: { published: number, failed: number } | null
  /**
   * `channels`: entity channels this instance is subscribed to on the bus (one per locally watched entity);
   * `unreadable`: messages in a layout this version does not read (their watchers were told to resync)
   */
  bus: { provider: string, ready: boolean, instanceId: string, channels: number, unreadable: number }
  router: RouterCounters
  /** `delta` types, on the publisher: patches made, changes sent full only, and the documents kept (`cacheBytes`) */
  deltas: DeltaCounters & { cacheBytes: number }
  /** changes not delivered for a reason other than "nobody watches", by reason (lib/route/drops.ts) */
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
  /**
   * The admin check of the statistics route, for a host's own operational routes: resolves true when the request
   * carries admin credentials (Basic, Bearer or `?token=`, checked as for the socket, under the same attempt limits);
   * otherwise it has answered 401 or 403 and resolves false.
   */
  requireAdmin(request: FastifyRequest, reply: FastifyReply): Promise<boolean>
  /** The resolved options (defaults applied). */
  readonly options: ResolvedOptions
  /** The entity registry: declared and discovered types. */
  readonly registry: EntityRegistry
  /** The databases by name, behind the interface capture uses (PostgreSQL or PGlite). */
  readonly databases: ReadonlyMap<string, Database>
}

export interface Pipeline {
  options: ResolvedOptions
  registry: EntityRegistry
  databases: ReadonlyMap<string, Database>
  bus: PubSub
  instanceId: string
  interest: InterestStore
  capture: Capture
  stream: ChangeStream | null
  notices: Notices
  router: ChangeRouter
  drops: Drops
  fanout: Fanout
  connections: ConnectionSet
  authenticator: Authenticator
  policy: AccessPolicy
  /** snapshots and filters' reads */
  snapshots: SnapshotReader
}

const sum = (counts: Record<string, number>): number => Object.values(counts).reduce((a, b) => a + b, 0)

function listenerStats ({ capture }: Pipeline): ChangefeedStats['listeners'] {
  return Object.fromEntries([...capture.listeners].map(([name, l]) =>
    [name, { state: l.state, reconnects: l.reconnects, leaderships: l.leaderships, gaps: l.gaps, outboxPublished: l.outboxPublished }]))
}

function routerCounters ({ router, notices }: Pipeline): RouterCounters {
  return { ...router.counters, documentReads: notices.reads }
}

export function statsOf (p: Pipeline): ChangefeedStats {
  const { connections, fanout, stream, bus, drops, capture, authenticator } = p
  return {
    connections: { active: connections.open.size, opened: connections.opened, closed: connections.closed, ...connections.counters, closedByCode: { ...connections.closedByCode } },
    subscriptions: {
      active: fanout.store.subscriptions,
      entities: fanout.store.entities,
      byType: fanout.store.countByType(),
      created: sum(fanout.counters.createdByType),
      removed: sum(fanout.counters.removedByType),
      counted: connections.watcherCounts.sockets
    },
    filters: { groups: connections.filters?.size ?? 0, subscriptions: connections.filters?.subscriptions ?? 0, reads: p.snapshots.reads },
    listeners: listenerStats(p),
    stream: stream === null ? null : { published: stream.published, failed: stream.failed },
    bus: { provider: bus.provider, ready: bus.ready, instanceId: p.instanceId, channels: fanout.busChannels, unreadable: fanout.counters.unreadable },
    router: routerCounters(p),
    deltas: { ...p.router.deltas.counters, cacheBytes: p.router.deltas.bytes },
    dropped: { ...drops.counts },
    untriggeredTables: Object.fromEntries(capture.untriggered),
    auth: structuredClone(authenticator.counters)
  }
}

export function telemetrySnapshotOf (p: Pipeline): TelemetrySnapshot {
  const { connections, fanout, router, drops, authenticator } = p
  return {
    connections: { opened: connections.opened, closed: connections.closed, active: connections.open.size, ...connections.counters, closedByCode: connections.closedByCode },
    subscriptions: { byType: fanout.store.countByType(), createdByType: fanout.counters.createdByType, removedByType: fanout.counters.removedByType },
    notifications: { sentByPayload: fanout.counters.sentByPayload, failedByPayload: fanout.counters.failedByPayload },
    router: routerCounters(p),
    dropped: drops.counts,
    auth: authenticator.counters,
    listeners: listenerStats(p),
    busErrors: router.counters.busErrors + fanout.counters.busErrors
  }
}

/** The admin statistics route's body: this instance, the cluster's totals, and the most watched local entities. */
export async function adminStatsOf (p: Pipeline): Promise<unknown> {
  const { interest, fanout } = p
  return {
    instance: statsOf(p),
    cluster: { subscriptionsByType: await interest.totals() },
    busiest: await Promise.all(fanout.store.busiest(10).map(async (e) => ({
      entityType: e.entityType, entityId: e.entityId, tenantId: e.tenantId, local: e.watchers, cluster: await interest.watchers(e.channel)
    })))
  }
}

export function decoratorOf (p: Pipeline): ChangefeedDecorator {
  const { router, capture, interest, fanout, registry, bus } = p
  return {
    publish: async (change) => await router.publish(change),
    rescan: async () => await capture.rescan(),
    watchers: async (entityType, entityId, tenantId) => await interest.watchers(fanout.channel(registry.get(entityType)?.name ?? entityType, entityId, tenantId ?? null)),
    totals: async () => await interest.totals(),
    health: () => healthOf(bus, capture.listeners),
    stats: () => statsOf(p),
    requireAdmin: adminCheck(p),
    options: p.options,
    registry,
    databases: p.databases
  }
}
