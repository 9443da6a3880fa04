/**
 * What the plugin shows of itself: the `fastify.changefeed` decorator and its statistics, the types a host compiles
 * against (nothing here may reach a type the host does not install); lib/route/pipeline.ts fills them from the
 * running pipeline.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Database } from './capture/database.js'
import type { EntityRegistry } from './entities.js'
import type { AuthCounters } from './auth/authenticate.js'
import type { RouterCounters } from './route/router.js'
import type { PublishInput } from './route/published.js'
import type { DropReason } from './route/drops.js'
import type { DeltaCounters } from './route/deltas.js'
import type { ResolvedOptions } from './options.js'
import type { HealthReport } from './telemetry.js'
import type { PresenceCounters } from './presence/counters.js'

export interface ChangefeedStats {
  /** `resumes`: subscribes with `since` by outcome (recovered, not_recovered, foreign, failed); `replayed`: notifications they replayed */
  connections: { active: number, opened: number, closed: number, slowConsumerCloses: number, conflated: number, replayed: number, resumes: Record<string, number>, closedByCode: Record<string, number> }
  /** `counted`: subscriptions that receive watcher counts */
  subscriptions: { active: number, entities: number, byType: Record<string, number>, created: number, removed: number, counted: number }
  /** filtered feeds on this instance: different filters held (`groups`), sockets' subscriptions to them, reads made */
  filters: { groups: number, subscriptions: number, reads: number }
  /** `outboxPublished`: outbox rows this instance published (outbox mode) */
  /**
   * `standby` (notify mode with a shared bus, else null): transactions a follower holds, those dropped from its full
   * buffer, this instance's takeovers without a gap and with one, and how often it recorded what it handed on
   */
  listeners: Record<string, { state: string, reconnects: number, leaderships: number, gaps: number, outboxPublished: number, standby: { buffered: number, overflowed: number, gapless: number, gap: number, recorded: number } | null }>
  /** the JetStream stream of all changes, when enabled */
  stream: { published: number, failed: number } | null
  /**
   * `channels`: entity channels this instance is subscribed to on the bus (one per locally watched entity);
   * `unreadable`: messages in a layout this version does not read (their watchers were told to resync)
   */
  bus: { provider: string, ready: boolean, instanceId: string, channels: number, unreadable: number }
  /** the channels' history (notify mode): bytes this process holds (the memory bus; null: the broker holds it) */
  history: { bytes: number | null }
  router: RouterCounters
  /** `delta` types, on the publisher: patches made, changes sent full only, and the documents kept (`cacheBytes`) */
  deltas: DeltaCounters & { cacheBytes: number }
  /** changes not delivered for a reason other than "nobody watches", by reason (lib/route/drops.ts) */
  dropped: Partial<Record<DropReason, number>>
  /** watched tables the capture trigger could not be put on ("database.schema.table" → why) */
  untriggeredTables: Record<string, string>
  auth: AuthCounters
  /**
   * presence: entities with presence watched here (`rooms`), presence messages published and received on the bus
   * (`publishErrors`: not published; `unreadable`: in a layout this version does not read), signals written to
   * sockets, failed reads and writes of the presence store
   */
  presence: { rooms: number } & PresenceCounters
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
  /**
   * A deploy: takes no new socket and closes the open ones with 1012 (service restart), a slice at a time over
   * `shutdown.drainSeconds`, telling each client when to come back; they resume from the channels' history on the
   * other instances. Resolves once every socket was told; readiness is false from the start. Then close the app.
   */
  drain(): Promise<void>
  /** Readiness: the bus works and every database has a working listener, and the instance is not draining (also served at `<telemetry.healthPath>/ready` when that is set). */
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
