/**
 * The running pipeline, as lib/index.ts put it together (and the list of what closes it), and what is read from it:
 * the decorator, its statistics, the counts telemetry observes, and the admin statistics route's body.
 */
import type { Database } from '../capture/database.js'
import type { Capture } from '../capture/index.js'
import type { EntityRegistry } from '../entities.js'
import type { Authenticator } from '../auth/authenticate.js'
import type { AccessPolicy } from '../auth/policy.js'
import type { PubSub } from '../bus/bus.js'
import type { InterestStore } from '../interest/interest.js'
import type { ChangeStream } from './stream.js'
import type { ChangeRouter, RouterCounters } from './router.js'
import type { Notices } from './notices.js'
import type { Drops } from './drops.js'
import type { SnapshotReader } from '../reads/snapshot.js'
import type { Fanout } from '../ws/fanout.js'
import type { ConnectionSet } from '../ws/route.js'
import type { ResolvedOptions } from '../options.js'
import type { ChangefeedDecorator, ChangefeedStats } from '../decorator.js'
import { adminCheck, healthOf, type TelemetrySnapshot } from '../telemetry.js'
import { drain } from '../ws/drain.js'
import type { FastifyBaseLogger } from 'fastify'

/** Things to close, run in the reverse order they were opened; safe to run twice (a failed start, then onClose). */
export class Closers {
  private readonly closers: Array<() => unknown> = []

  add (close: () => unknown): void {
    this.closers.push(close)
  }

  readonly run = async (): Promise<void> => {
    while (this.closers.length > 0) await this.closers.pop()!()
  }
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
  log: FastifyBaseLogger
}

const sum = (counts: Record<string, number>): number => Object.values(counts).reduce((a, b) => a + b, 0)

function listenerStats ({ capture }: Pipeline): ChangefeedStats['listeners'] {
  return Object.fromEntries([...capture.listeners].map(([name, l]) =>
    [name, {
      state: l.state,
      reconnects: l.reconnects,
      leaderships: l.leaderships,
      gaps: l.gaps,
      outboxPublished: l.outboxPublished,
      standby: l.standby === null ? null : { buffered: l.standby.buffer.size, overflowed: l.standby.buffer.overflowed, ...l.standby.handoffs, recorded: l.handled?.recorded ?? 0 }
    }]))
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
    history: { bytes: bus.history?.bytes ?? null },
    router: routerCounters(p),
    deltas: { ...p.router.deltas.counters, cacheBytes: p.router.deltas.bytes },
    dropped: { ...drops.counts },
    untriggeredTables: Object.fromEntries(capture.untriggered),
    auth: structuredClone(authenticator.counters),
    presence: { rooms: connections.presence.size, ...connections.presence.counters }
  }
}

export function telemetrySnapshotOf (p: Pipeline): TelemetrySnapshot {
  const { connections, fanout, router, drops, authenticator } = p
  return {
    connections: { opened: connections.opened, closed: connections.closed, active: connections.open.size, ...connections.counters, closedByCode: connections.closedByCode },
    historyBytes: p.bus.history?.bytes ?? null,
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
    health: () => {
      const health = healthOf(bus, capture.listeners)
      return p.connections.draining ? { ...health, ready: false } : health
    },
    drain: async () => await drain(p.connections, p.options.shutdown.drainSeconds, p.log),
    stats: () => statsOf(p),
    requireAdmin: adminCheck(p),
    options: p.options,
    registry,
    databases: p.databases
  }
}
