/**
 * Route: from a captured change (or a host's direct publish) to one encoded frame on the bus. Drops changes
 * nobody watches before any work; for `full` types reads the document at most once per changed entity per
 * transaction (not at all when the trigger inlined it); encodes the wire message once for every watcher.
 */
import type { FastifyBaseLogger } from 'fastify'
import { coalesceRows, type Change, type ChangeType } from './capture/coalesce.js'
import type { Outbox } from './capture/outbox.js'
import { quoteIdent, type Database } from './capture/database.js'
import type { EntityRegistry, EntityType } from './entities.js'
import type { PubSub } from './bus/index.js'
import type { InterestStore } from './store/interest.js'
import { wrap } from './bus/envelope.js'
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api'
import { InvalidChangeError, UnknownEntityTypeError } from './errors.js'
import { OwedResyncs } from './resync.js'

/** What a host passes to `fastify.changefeed.publish()`. */
export interface PublishInput {
  entityType: string
  entityId: string
  changeType: ChangeType | 'appended'
  /** the document; when given the notification is `full`, otherwise `minimal` */
  payload?: unknown
  version?: string | number
}


/** Where every change goes besides the watchers (lib/stream.ts: a JetStream stream). Rejects when not accepted. */
export interface ChangeSink {
  publish(record: { entityType: string, entityId: string, position: string, frame: string }): Promise<void>
  /** false during an outage */
  readonly ready: boolean
}

export interface RouterCounters {
  /** changes that reached the router */
  changes: number
  /** changes dropped because nobody watched the entity */
  unwatched: number
  /** changes of tables that are not a known entity type */
  unknownTable: number
  /** documents read from the database for full payloads */
  documentReads: number
  /** frames handed to the bus */
  published: number
  failed: number
  /** publishes the bus refused */
  busErrors: number
  /** changes that will not be delivered (their watchers were told to resync): notify mode after a failure,
   * outbox mode after repeated ones */
  givenUp: number
}

/** One change's frame, as every watcher receives it, and what delivery needs to know of it. */
interface Notice {
  frame: string
  payloadType: string
  /** owner types with a full document: who the document says owns it (null: nobody); undefined otherwise */
  owner?: string | null
}

/**
 * The owner a full document of an owner type names (ownerPath), so that delivery can stop a subscription whose
 * owner the document no longer names; undefined where there is nothing to check.
 */
function ownerIn (entity: EntityType, payloadType: string, payload: unknown): string | null | undefined {
  if (entity.access !== 'owner' || entity.ownerPath === undefined || entity.ownerPath.length === 0 || payloadType !== 'full') return undefined
  let value: unknown = payload
  for (const key of entity.ownerPath) value = value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[key] : undefined
  return typeof value === 'string' || typeof value === 'number' ? String(value) : null
}

export function channelOf (prefix: string, entityType: string, entityId: string): string {
  return prefix + ':' + entityType + ':' + entityId
}

export class ChangeRouter {
  readonly counters: RouterCounters = { changes: 0, unwatched: 0, unknownTable: 0, documentReads: 0, published: 0, failed: 0, busErrors: 0, givenUp: 0 }
  /** resyncs owed to the watchers of changes that were lost */
  readonly owed: OwedResyncs

  constructor (
    private readonly registry: EntityRegistry,
    private readonly databases: Map<string, Database>,
    private readonly interest: InterestStore,
    private readonly bus: PubSub,
    private readonly prefix: string,
    private readonly log: FastifyBaseLogger,
    private readonly tracer: Tracer = trace.getTracer('fastify-changefeed'),
    /** recorded on the publish spans, so a delivery elsewhere can be traced to this instance */
    private readonly instanceId = ''
  ) {
    this.owed = new OwedResyncs(bus, prefix, log)
  }

  /** changes of one entity still being routed: the next one waits, so per entity the order is commit order */
  private readonly inFlight = new Map<string, Promise<boolean>>()

  /** Optional: every change (watched or not) also goes to a JetStream stream for service consumers. */
  stream: ChangeSink | null = null

  /**
   * A change from capture. Never rejects: a failure is logged and counted, the pipeline goes on. Resolves false
   * when the change could not be handed on (outbox mode then publishes it again).
   */
  async routeChange (change: Change, stopAfterFailure = false): Promise<boolean> {
    this.counters.changes++
    const entity = this.entityOf(change)
    if (entity === undefined) {
      this.counters.unknownTable++
      return true
    }
    const channel = channelOf(this.prefix, entity.name, change.id)
    const previous = this.inFlight.get(channel)
    const current = previous === undefined
      ? this.routeEntityChange(entity, channel, change)
      // outbox mode: after a failure the entity's later changes wait for the retry, so they never overtake it
      : previous.then(async (ok) => !ok && stopAfterFailure ? false : await this.routeEntityChange(entity, channel, change))
    this.inFlight.set(channel, current)
    const done = await current
    if (this.inFlight.get(channel) === current) this.inFlight.delete(channel)
    return done
  }

  private entityOf (change: Change): EntityType | undefined {
    return change.changeType === 'appended'
      ? this.registry.forStream(change.streamType)
      : this.registry.forTable(change.database, change.schema, change.table)
  }

  private async routeEntityChange (entity: EntityType, channel: string, change: Change): Promise<boolean> {
    const span = this.tracer.startSpan('changefeed route', {
      kind: SpanKind.PRODUCER,
      attributes: {
        'db.namespace': change.database,
        'db.collection.name': change.table,
        'changefeed.entity_type': entity.name,
        'changefeed.entity_id': change.id,
        'changefeed.change_type': change.changeType,
        'changefeed.position': change.position,
        'changefeed.instance.id': this.instanceId
      }
    })
    const busErrorsBefore = this.counters.busErrors
    try {
      const needsRead = change.events !== undefined
        ? change.events.some((e) => !('data' in e))
        : entity.payload === 'full' && change.changeType !== 'deleted' && !change.hasDoc
      // locally the check is free; across the cluster it costs a round trip, worth it only to save a read
      const watched = (this.interest.local || needsRead) ? await this.anyoneWatches(entity, channel) : true
      if (!watched && this.stream === null) {
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'unwatched')
        return true
      }
      const notice = await this.frameOf(entity, change)
      const { frame } = notice
      if (this.stream !== null) await this.stream.publish({ entityType: entity.name, entityId: change.id, position: change.position, frame })
      if (!watched) {
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'streamed')
        return true
      }
      await this.send(entity, channel, change.ts, notice, change.position, span)
      span.setAttribute('changefeed.outcome', 'published')
      return true
    } catch (err) {
      this.counters.failed++
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message })
      // a bus outage fails every change until the bus is back; it is reported once, by the bus, and counted
      if (this.counters.busErrors > busErrorsBefore) this.log.debug({ err: (err as Error).message, entityType: entity.name, entityId: change.id }, 'changefeed: the bus refused a change')
      else this.log.error({ err, entityType: entity.name, entityId: change.id }, 'changefeed: routing a change failed')
      return false
    } finally {
      span.end()
    }
  }

  /**
   * The notification of one change, as every watcher receives it. A `full` document is read when the trigger did
   * not inline it; appended events whose data did not ride inline are read from the event table.
   */
  private async frameOf (entity: EntityType, change: Change): Promise<Notice> {
    if (change.events !== undefined) {
      await this.readEvents(change)
      return { frame: encodeNotification(entity.name, change.id, 'appended', 'events', change.ts, change.version, change.origin, change.events, change.position), payloadType: 'events' }
    }
    let payload: unknown
    let payloadType = entity.payload
    if (entity.payload === 'full' && change.changeType !== 'deleted') {
      payload = change.hasDoc ? change.doc : await this.readDocument(entity, change.id)
      // gone by the time we read it: a later change says so; meanwhile the client refetches
      if (payload === undefined) payloadType = 'minimal'
    }
    return {
      frame: encodeNotification(entity.name, change.id, change.changeType, payloadType, change.ts, change.version, change.origin, payload, change.position),
      payloadType,
      owner: ownerIn(entity, payloadType, payload)
    }
  }

  private async readEvents (change: Change): Promise<void> {
    const events = change.events!
    const missing = events.filter((e) => !('data' in e)).map((e) => e.version)
    if (missing.length === 0) return
    const db = this.databases.get(change.database)
    this.counters.documentReads++
    const rows = await db!.query<{ version: string, data: unknown }>(
      `SELECT version::text AS version, data FROM ${quoteIdent(change.schema)}.${quoteIdent(change.table)} WHERE stream_id = $1 AND version = ANY($2::bigint[])`,
      [change.id, missing])
    const byVersion = new Map(rows.map((r) => [Number(r.version), r.data]))
    for (const e of events) if (!('data' in e)) e.data = byVersion.get(e.version) ?? null
  }

  /**
   * Outbox mode: the changes of one entity after `since`, as notification frames, oldest first; null when they
   * cannot all be given (notify mode, a feed, a position of another epoch, pruned, or too many).
   */
  async replay (entity: EntityType, entityId: string, since: string): Promise<Array<{ frame: string, position: string }> | null> {
    const source = this.outboxes.get(entity.database)
    const db = this.databases.get(entity.database)
    if (source === undefined || db === undefined || entityId === '*') return null
    const tables = [entity.table]
    if (source.eventTable !== null) tables.push(source.eventTable)
    const rows = await source.outbox.replay(async (text, params) => await db.query(text, params), tables, entityId, since, source.maxReplay)
    if (rows === null) return null
    const frames: Array<{ frame: string, position: string }> = []
    for (const change of coalesceRows(entity.database, rows)) {
      if (this.entityOf(change)?.name !== entity.name) continue
      frames.push({ frame: (await this.frameOf(entity, change)).frame, position: change.position })
    }
    return frames
  }

  /** Whether a failure now would be an outage (bus or stream down) rather than a change that cannot be carried. */
  get outage (): boolean {
    return !this.bus.ready || this.stream?.ready === false
  }

  /**
   * A change that will not be delivered: notify mode after a failure, outbox mode after repeated ones. Its
   * watchers, wherever they are, get a `resync` (reason `delivery_failed`) as soon as the bus takes it. Never silent.
   */
  giveUp (change: Change): void {
    const entity = this.entityOf(change)
    if (entity === undefined) return
    this.counters.givenUp++
    this.log.error({ entityType: entity.name, entityId: change.id, position: change.position }, 'changefeed: a change could not be delivered; its watchers resync')
    this.oweResync(entity, change.id)
  }

  /** The watchers of the entity, and of its type's feed, are owed a resync for a change they will not get. */
  private oweResync (entity: EntityType, entityId: string): void {
    const channel = channelOf(this.prefix, entity.name, entityId)
    this.owed.owe(entity.database, entity.feed ? [channel, channelOf(this.prefix, entity.name, '*')] : [channel], entity.name, entityId, 'delivery_failed')
  }

  /** Outbox mode: where each database's outbox is read for replays. */
  private readonly outboxes = new Map<string, { outbox: Outbox, eventTable: string | null, maxReplay: number }>()
  useOutbox (database: string, outbox: Outbox, eventTable: string | null, maxReplay: number): void {
    this.outboxes.set(database, { outbox, eventTable, maxReplay })
  }

  /**
   * Hands one encoded notification to the bus, with the publishing span's context for the deliveries; for a feed
   * type, the same message goes to the type's feed channel (`<prefix>:<Type>:*`) too.
   */
  private async send (entity: EntityType, channel: string, ts: number, notice: Notice, position: string, span?: Span): Promise<void> {
    const carrier: { traceparent?: string } = {}
    if (span?.isRecording() === true) propagation.inject(trace.setSpan(context.active(), span), carrier)
    const message = wrap(ts, notice.payloadType, carrier.traceparent, notice.frame, position, notice.owner)
    try {
      await this.bus.publish(channel, message)
      if (entity.feed) {
        const feed = channelOf(this.prefix, entity.name, '*')
        if (!this.interest.local || this.interest.isWatched(feed) === true) await this.bus.publish(feed, message)
      }
    } catch (err) {
      this.counters.busErrors++
      throw err
    }
    this.counters.published++
  }

  /** host publishes so far: numbers their positions */
  private published = 0

  /** A host's direct publish: the same route without the database. */
  async publish (input: PublishInput): Promise<boolean> {
    const entity = this.registry.get(input?.entityType)
    if (entity === undefined) throw new UnknownEntityTypeError(String(input?.entityType))
    if (typeof input.entityId !== 'string' || input.entityId.length === 0) throw new InvalidChangeError('entityId must be a non-empty string')
    if (!['created', 'updated', 'deleted', 'appended'].includes(input.changeType)) {
      throw new InvalidChangeError('changeType must be created, updated, deleted or appended')
    }
    this.counters.changes++
    const channel = channelOf(this.prefix, entity.name, input.entityId)
    if (this.interest.local && !await this.anyoneWatches(entity, channel)) {
      this.counters.unwatched++
      return false
    }
    const payloadType = input.payload !== undefined ? 'full' : 'minimal'
    const now = Date.now()
    const position = `p:${this.instanceId.slice(0, 8)}:${++this.published}`
    const frame = encodeNotification(entity.name, input.entityId, input.changeType, payloadType, now,
      input.version === undefined ? null : String(input.version), null, input.payload, position)
    try {
      await this.send(entity, channel, now, { frame, payloadType, owner: ownerIn(entity, payloadType, input.payload) }, position)
    } catch (err) {
      // the host hears of it from the rejection; the watchers, from a resync once the bus is back
      this.oweResync(entity, input.entityId)
      throw err
    }
    return true
  }

  /** The entity's watchers, or for a feed type the feed's. */
  private async anyoneWatches (entity: EntityType, channel: string): Promise<boolean> {
    if (await this.interest.isWatched(channel)) return true
    return entity.feed && await this.interest.isWatched(channelOf(this.prefix, entity.name, '*'))
  }

  private async readDocument (entity: EntityType, id: string): Promise<unknown> {
    const db = this.databases.get(entity.database)
    if (db === undefined) return undefined
    this.counters.documentReads++
    const rows = await db.query<{ data: unknown }>(
      `SELECT data FROM ${quoteIdent(entity.schema)}.${quoteIdent(entity.table)} WHERE id = $1`, [id])
    return rows[0]?.data
  }
}

/** The notification frame of DESIGN.md §5, encoded once. */
export function encodeNotification (
  entityType: string, entityId: string, changeType: string, payloadType: string, ts: number,
  version: string | null, origin: string | null, payload: unknown, position: string | null = null
): string {
  const data: Record<string, unknown> = {
    entityType,
    entityId,
    changeType,
    payloadType,
    timestamp: new Date(ts).toISOString()
  }
  if (version !== null) data.version = version
  if (position !== null) data.position = position
  if (origin !== null) data.origin = origin
  if (payloadType === 'full' || payloadType === 'events') data.payload = payload ?? null
  return JSON.stringify({ type: 'notification', data })
}
