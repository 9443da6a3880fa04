/**
 * Route: from a captured change (or a host's direct publish) to one encoded frame on the bus. Drops changes
 * nobody watches before any work; for `full` types reads the document at most once per changed entity per
 * transaction (not at all when the trigger inlined it); encodes the wire message once for every watcher.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Change, ChangeType } from './capture/coalesce.js'
import { quoteIdent, type Database } from './capture/database.js'
import type { EntityRegistry, EntityType } from './entities.js'
import type { PubSub } from './bus/index.js'
import type { InterestStore } from './store/interest.js'
import { wrap } from './bus/envelope.js'
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api'
import { InvalidChangeError, UnknownEntityTypeError } from './errors.js'

/** What a host passes to `fastify.changefeed.publish()`. */
export interface PublishInput {
  entityType: string
  entityId: string
  changeType: ChangeType | 'appended'
  /** the document; when given the notification is `full`, otherwise `minimal` */
  payload?: unknown
  version?: string | number
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
}

export function channelOf (prefix: string, entityType: string, entityId: string): string {
  return prefix + ':' + entityType + ':' + entityId
}

export class ChangeRouter {
  readonly counters: RouterCounters = { changes: 0, unwatched: 0, unknownTable: 0, documentReads: 0, published: 0, failed: 0, busErrors: 0 }

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
  ) {}

  /** changes of one entity still being routed: the next one waits, so per entity the order is commit order */
  private readonly inFlight = new Map<string, Promise<void>>()

  /** A change from capture. Never rejects: a failure is logged and counted, the pipeline goes on. */
  async routeChange (change: Change): Promise<void> {
    this.counters.changes++
    const entity = change.changeType === 'appended'
      ? this.registry.forStream(change.streamType)
      : this.registry.forTable(change.database, change.schema, change.table)
    if (entity === undefined) {
      this.counters.unknownTable++
      return
    }
    const channel = channelOf(this.prefix, entity.name, change.id)
    const previous = this.inFlight.get(channel)
    const current = previous === undefined
      ? this.routeEntityChange(entity, channel, change)
      : previous.then(async () => await this.routeEntityChange(entity, channel, change))
    this.inFlight.set(channel, current)
    await current
    if (this.inFlight.get(channel) === current) this.inFlight.delete(channel)
  }

  private async routeEntityChange (entity: EntityType, channel: string, change: Change): Promise<void> {
    const span = this.tracer.startSpan('changefeed route', {
      kind: SpanKind.PRODUCER,
      attributes: {
        'db.namespace': change.database,
        'db.collection.name': change.table,
        'changefeed.entity_type': entity.name,
        'changefeed.entity_id': change.id,
        'changefeed.change_type': change.changeType,
        'changefeed.instance.id': this.instanceId
      }
    })
    try {
      if (change.events !== undefined) return await this.routeEvents(entity, channel, change, span)
      const needsRead = entity.payload === 'full' && change.changeType !== 'deleted' && !change.hasDoc
      // locally the check is free; across the cluster it costs a round trip, worth it only to save a read
      if ((this.interest.local || needsRead) && !await this.anyoneWatches(entity, channel)) {
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'unwatched')
        return
      }
      let payload: unknown
      let payloadType = entity.payload
      if (entity.payload === 'full' && change.changeType !== 'deleted') {
        payload = change.hasDoc ? change.doc : await this.readDocument(entity, change.id)
        // gone by the time we read it: a later change says so; meanwhile the client refetches
        if (payload === undefined) payloadType = 'minimal'
      }
      const frame = encodeNotification(entity.name, change.id, change.changeType, payloadType, change.ts, change.version, change.origin, payload)
      await this.send(entity, channel, change.ts, payloadType, frame, span)
      span.setAttribute('changefeed.outcome', 'published')
    } catch (err) {
      this.counters.failed++
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message })
      this.log.error({ err, entityType: entity.name, entityId: change.id }, 'changefeed: routing a change failed')
    } finally {
      span.end()
    }
  }

  /** Events appended to a stream: one `appended` notification with the events, read where they did not ride inline. */
  private async routeEvents (entity: EntityType, channel: string, change: Change, span: Span): Promise<void> {
    const events = change.events!
    if (this.interest.local && !await this.anyoneWatches(entity, channel)) {
      this.counters.unwatched++
      span.setAttribute('changefeed.outcome', 'unwatched')
      return
    }
    const missing = events.filter((e) => !('data' in e)).map((e) => e.version)
    if (missing.length > 0) {
      const db = this.databases.get(change.database)
      this.counters.documentReads++
      const rows = await db!.query<{ version: string, data: unknown }>(
        `SELECT version::text AS version, data FROM ${quoteIdent(change.schema)}.${quoteIdent(change.table)} WHERE stream_id = $1 AND version = ANY($2::bigint[])`,
        [change.id, missing])
      const byVersion = new Map(rows.map((r) => [Number(r.version), r.data]))
      for (const e of events) if (!('data' in e)) e.data = byVersion.get(e.version) ?? null
    }
    const frame = encodeNotification(entity.name, change.id, 'appended', 'events', change.ts, change.version, change.origin, events)
    await this.send(entity, channel, change.ts, 'events', frame, span)
    span.setAttribute('changefeed.outcome', 'published')
  }

  /**
   * Hands one encoded notification to the bus, with the publishing span's context for the deliveries; for a feed
   * type, the same message goes to the type's feed channel (`<prefix>:<Type>:*`) too.
   */
  private async send (entity: EntityType, channel: string, ts: number, payloadType: string, frame: string, span?: Span): Promise<void> {
    const carrier: { traceparent?: string } = {}
    if (span?.isRecording() === true) propagation.inject(trace.setSpan(context.active(), span), carrier)
    const message = wrap(ts, payloadType, carrier.traceparent, frame)
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
    const frame = encodeNotification(entity.name, input.entityId, input.changeType, payloadType, now,
      input.version === undefined ? null : String(input.version), null, input.payload)
    await this.send(entity, channel, now, payloadType, frame)
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
  version: string | null, origin: string | null, payload: unknown
): string {
  const data: Record<string, unknown> = {
    entityType,
    entityId,
    changeType,
    payloadType,
    timestamp: new Date(ts).toISOString()
  }
  if (version !== null) data.version = version
  if (origin !== null) data.origin = origin
  if (payloadType === 'full' || payloadType === 'events') data.payload = payload ?? null
  return JSON.stringify({ type: 'notification', data })
}
