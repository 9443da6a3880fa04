/**
 * Route: from a captured change (or a host's direct publish) to one encoded frame on the bus. Drops changes
 * nobody watches before any work; for `full` and `delta` types reads the document at most once per changed entity
 * per transaction (not at all when the trigger inlined it); encodes the wire message once for every watcher (a
 * `delta` type's change twice: full, and its patch from the entity's previous document, lib/route/deltas.ts). A change
 * that cannot be attributed to an entity type is counted and logged by reason (lib/route/drops.ts), never silently lost.
 */
import type { FastifyBaseLogger } from 'fastify'
import { coalesceRows, type Change, type ChangeType, type RowChange } from '../capture/coalesce.js'
import type { TableScanner } from '../capture/index.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import type { PubSub } from '../bus/index.js'
import type { InterestStore } from '../interest/interest.js'
import { wrap } from './envelope.js'
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api'
import { InvalidChangeError, UnknownEntityTypeError } from '../errors.js'
import { OwedResyncs } from './resync.js'
import { FEED, channelsOf } from './channels.js'
import { ownerIn, type Notice, type Notices } from './notices.js'
import { encodeNotification, encodeResync } from '../protocol/index.js'
import { Deltas, type DeltaFrame } from './deltas.js'

/** What a host passes to `fastify.changefeed.publish()`. */
export interface PublishInput {
  entityType: string
  entityId: string
  changeType: ChangeType
  /** the tenant of the entity: required for tenanted types, refused for the others */
  tenantId?: string
  /** the document (JSON); when given the notification is `full` (or for a `delta` type a patch), otherwise `minimal` */
  payload?: unknown
  version?: string | number
}

/** Where every change goes besides the watchers (lib/route/stream.ts: a JetStream stream). Rejects when not accepted. */
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

const RESCAN_UNKNOWN_MS = 10_000

export interface RouterServices {
  registry: EntityRegistry
  /** attribution of changes to entity types and tenants, and their frames */
  notices: Notices
  interest: InterestStore
  bus: PubSub
  prefix: string
  log: FastifyBaseLogger
  /** looks for new tables in a database (a change of a table not known yet may be of one just created) */
  scanner: TableScanner
  /** every change (watched or not) also goes here: a JetStream stream for service consumers */
  stream: ChangeSink | null
  /** recorded on the publish spans, so a delivery elsewhere can be traced to this instance */
  instanceId: string
  /** `delta` types: limits.deltaCacheBytes */
  deltaCacheBytes: number
  tracer?: Tracer
}

/** Turns in the order they were taken: each one's `ready` resolves once the one before it is `done`. */
class InOrder {
  private tail: Promise<void> = Promise.resolve()

  take (): { ready: Promise<void>, done: () => void } {
    const ready = this.tail
    let done!: () => void
    this.tail = new Promise<void>((resolve) => { done = resolve })
    return { ready, done }
  }
}

export class ChangeRouter {
  readonly counters: RouterCounters = { changes: 0, unwatched: 0, documentReads: 0, published: 0, failed: 0, busErrors: 0, givenUp: 0 }
  /** resyncs owed to the watchers of changes that were lost */
  readonly owed: OwedResyncs
  /** `delta` types: the last document of each entity, and the patches made from them */
  readonly deltas: Deltas
  private readonly tracer: Tracer
  private readonly prefix: string
  /** changes of one entity still being routed: the next one waits, so per entity the order is commit order */
  private readonly inFlight = new Map<string, Promise<boolean>>()
  /**
   * Captured changes are handed on in the order they came (commit order) across entities too: a change that waits
   * for a read would otherwise be overtaken, and a feed's watchers, and a snapshot's "seen until the first unseen"
   * (lib/reads/snapshot.ts), rely on that order. The work of each change (interest checks, reads) still runs at once.
   */
  private readonly order = new InOrder()
  /** host publishes so far: numbers their positions */
  private published = 0
  /** tables of unknown changes, and when the database was last scanned for them */
  private readonly lookedFor = new Map<string, number>()

  constructor (private readonly s: RouterServices) {
    this.owed = new OwedResyncs(s.bus, s.prefix, s.log)
    this.deltas = new Deltas(s.deltaCacheBytes)
    this.tracer = s.tracer ?? trace.getTracer('fastify-changefeed')
    this.prefix = s.prefix
  }

  /**
   * A change from capture. Never rejects: a failure is logged and counted, the pipeline goes on. Resolves false
   * when the change could not be handed on (outbox mode then publishes it again).
   */
  async routeChange (change: Change, stopAfterFailure = false): Promise<boolean> {
    // taken before the first await: changes leave in the order they came, whatever the work of each costs
    const turn = this.order.take()
    try {
      return await this.routeInTurn(change, stopAfterFailure, turn.ready)
    } finally {
      turn.done()
    }
  }

  private async routeInTurn (change: Change, stopAfterFailure: boolean, turn: Promise<void>): Promise<boolean> {
    this.counters.changes++
    let entity = this.s.notices.entityOf(change, false)
    if (entity === undefined && change.events === undefined && change.changeType !== 'archived' && this.mayLookFor(change)) {
      // a table created a moment ago: the event trigger's note may still be on its way
      await this.s.scanner.rescanDatabase(change.database).catch(() => {})
    }
    entity ??= this.s.notices.entityOf(change)
    if (entity === undefined) return true
    const tenantId = this.s.notices.tenantOf(entity, change)
    const channels = channelsOf(this.prefix, entity, change.id, tenantId)
    const key = channels[0]
    const previous = this.inFlight.get(key)
    const current = previous === undefined
      ? this.routeEntityChange(entity, channels, tenantId, change, turn)
      // outbox mode: after a failure the entity's later changes wait for the retry, so they never overtake it
      : previous.then(async (ok) => !ok && stopAfterFailure ? false : await this.routeEntityChange(entity, channels, tenantId, change, turn))
    this.inFlight.set(key, current)
    const done = await current
    if (this.inFlight.get(key) === current) this.inFlight.delete(key)
    return done
  }

  /** Notify mode: a change that fails now is lost, and its watchers must hear of it. */
  routeCaptured (change: Change): void {
    void this.routeChange(change).then((ok) => { if (!ok) this.giveUp(change) })
  }

  /** Outbox mode: one batch of numbered rows (lib/capture/publisher.ts says when it is final). */
  async routeOutbox (database: string, rows: RowChange[], { final, current }: { final: boolean, current: () => boolean }): Promise<boolean> {
    const changes = coalesceRows(database, this.s.registry.tenantOfDatabase(database), rows)
    // a deposed publisher stops at once: the new leader publishes from the stored cursor
    const results = await Promise.all(changes.map(async (c) => current() && await this.routeChange(c, !final)))
    if (results.every(Boolean)) return true
    // during an outage the batch waits (watchers got a bus_gap resync); only a change that fails while
    // everything works is given up on
    if (!final || !current() || this.outage) return false
    for (const [i, change] of changes.entries()) if (!results[i]) this.giveUp(change)
    return true
  }

  /**
   * Whether to look for the table of a change no type is bound to: once per table per RESCAN_UNKNOWN_MS, so that
   * writes to a table nobody watches (any role may put the trigger on a table of its own) cannot make every
   * change cost a scan of the database.
   */
  private mayLookFor (change: Change): boolean {
    const key = change.database + '\u0000' + change.schema + '\u0000' + change.table
    const now = Date.now()
    if ((this.lookedFor.get(key) ?? 0) > now - RESCAN_UNKNOWN_MS) return false
    if (this.lookedFor.size >= 1000) this.lookedFor.clear()
    this.lookedFor.set(key, now)
    return true
  }

  /** `turn`: resolves once every change that came before this one has been handed on (or dropped). */
  private async routeEntityChange (entity: EntityType, channels: string[], tenantId: string | null, change: Change, turn: Promise<void>): Promise<boolean> {
    const span = this.tracer.startSpan('changefeed route', {
      kind: SpanKind.PRODUCER,
      attributes: {
        'db.namespace': change.database,
        'db.collection.name': change.table,
        'changefeed.entity_type': entity.name,
        'changefeed.entity_id': change.id,
        'changefeed.change_type': change.changeType,
        'changefeed.position': change.position,
        'changefeed.instance.id': this.s.instanceId
      }
    })
    const busErrorsBefore = this.counters.busErrors
    try {
      const needsRead = this.s.notices.needsRead(entity, change)
      // locally the check is free; across the cluster it costs a round trip, worth it only to save a read
      const watched = this.s.interest.local || needsRead ? await this.anyoneWatches(channels) : channels
      if (watched.length === 0 && this.s.stream === null) {
        // its next watcher gets a full document first: the one kept here would only take room
        this.deltas.forget(channels[0])
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'unwatched')
        return true
      }
      const notice = await this.s.notices.noticeOf(entity, change, tenantId)
      this.counters.documentReads = this.s.notices.reads
      await turn
      if (this.s.stream !== null) await this.s.stream.publish({ entityType: entity.name, entityId: change.id, position: change.position, frame: notice.frame })
      if (watched.length === 0) {
        this.deltas.forget(channels[0])
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'streamed')
        return true
      }
      await this.send(watched, change.ts, this.withDelta(entity, channels[0], notice), change.position, span, change.txid)
      span.setAttribute('changefeed.outcome', 'published')
      return true
    } catch (err) {
      this.counters.failed++
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message })
      // a bus outage fails every change until the bus is back; it is reported once, by the bus, and counted
      if (this.counters.busErrors > busErrorsBefore) this.s.log.debug({ err: (err as Error).message, entityType: entity.name, entityId: change.id }, 'changefeed: the bus refused a change')
      else this.s.log.error({ err, entityType: entity.name, entityId: change.id }, 'changefeed: routing a change failed')
      return false
    } finally {
      span.end()
    }
  }

  close (): void {
    this.owed.close()
  }

  /** Whether a failure now would be an outage (bus or stream down) rather than a change that cannot be carried. */
  get outage (): boolean {
    return !this.s.bus.ready || this.s.stream?.ready === false
  }

  /**
   * A change that will not be delivered: notify mode after a failure, outbox mode after repeated ones. Its
   * watchers, wherever they are, get a `resync` (reason `delivery_failed`) as soon as the bus takes it. Never silent.
   */
  giveUp (change: Change): void {
    const entity = this.s.notices.entityOf(change, false)
    if (entity === undefined) return
    this.counters.givenUp++
    this.s.log.error({ entityType: entity.name, entityId: change.id, position: change.position }, 'changefeed: a change could not be delivered; its watchers resync')
    this.oweResync(entity, change.database, change.id, this.s.notices.tenantOf(entity, change))
  }

  /** The watchers of the entity, and of its type's feed, are owed a resync for a change they will not get. */
  private oweResync (entity: EntityType, database: string, entityId: string, tenantId: string | null): void {
    const entityChannels = tenantId === null ? 1 : 2
    this.owed.owe(database, channelsOf(this.prefix, entity, entityId, tenantId).map((channel, i) =>
      [channel, encodeResync('delivery_failed', { entityType: entity.name, entityId: i < entityChannels ? entityId : FEED, tenantId })] as const))
  }

  /**
   * A `delta` type's notice with a document: its payload type on the bus is `delta` (delivery then tracks what each
   * socket was sent), and it carries the patch frame when there is one. `key` is the entity's own channel.
   */
  private withDelta (entity: EntityType, key: string, notice: Notice): Notice & { delta?: DeltaFrame } {
    // events appended to the entity's stream leave its document (and the patch base) as it was
    if (entity.payload !== 'delta' || notice.payloadType === 'events') return notice
    if (notice.payloadType !== 'full' || notice.fields === undefined) {
      // gone by the time it was read: the next change is full
      this.deltas.forget(key)
      return notice
    }
    if (notice.stale === true) {
      // a later version than its position says: whole, without a patch, and no base for one (delivery still
      // records what each socket was sent, so no patch goes to a socket holding something else)
      this.deltas.stale(key)
      return { ...notice, payloadType: 'delta' }
    }
    const delta = this.deltas.frameOf(key, notice.fields, notice.document, notice.frame) ?? undefined
    return { ...notice, payloadType: 'delta', delta }
  }

  /** Hands one encoded notification to the bus, on every channel whose watchers see it, with the span's context. */
  private async send (channels: string[], ts: number, notice: Notice & { delta?: DeltaFrame }, position: string, span?: Span, txid?: string): Promise<void> {
    const carrier: { traceparent?: string } = {}
    if (span?.isRecording() === true) propagation.inject(trace.setSpan(context.active(), span), carrier)
    const message = wrap({ ts, payloadType: notice.payloadType, traceparent: carrier.traceparent, position, tenantId: notice.tenantId, owner: notice.owner, frame: notice.frame, delta: notice.delta, txid })
    try {
      for (const channel of channels) await this.s.bus.publish(channel, message)
    } catch (err) {
      this.counters.busErrors++
      throw err
    }
    this.counters.published++
  }

  /** A host's direct publish: the same route without the database. */
  async publish (input: PublishInput): Promise<boolean> {
    const entity = this.s.registry.get(input?.entityType)
    if (entity === undefined) throw new UnknownEntityTypeError(String(input?.entityType))
    if (typeof input.entityId !== 'string' || input.entityId.length === 0) throw new InvalidChangeError('entityId must be a non-empty string')
    if (!['created', 'updated', 'deleted', 'appended', 'archived'].includes(input.changeType)) {
      throw new InvalidChangeError('changeType must be created, updated, deleted, appended or archived')
    }
    const tenantId = input.tenantId ?? null
    if ((entity.tenancy === 'none') !== (tenantId === null)) {
      throw new InvalidChangeError(entity.tenancy === 'none' ? `${entity.name} is not tenanted: no tenantId` : `${entity.name} is tenanted: tenantId is required`)
    }
    this.counters.changes++
    const channels = channelsOf(this.prefix, entity, input.entityId, tenantId)
    const watched = this.s.interest.local ? await this.anyoneWatches(channels) : channels
    if (watched.length === 0) {
      this.counters.unwatched++
      return false
    }
    const payloadType = input.payload !== undefined ? 'full' : 'minimal'
    const now = Date.now()
    const position = `p:${this.s.instanceId.slice(0, 8)}:${++this.published}`
    const fields = {
      entityType: entity.name,
      entityId: input.entityId,
      tenantId,
      changeType: input.changeType,
      ts: now,
      version: input.version === undefined ? null : String(input.version),
      position
    }
    // a patch is made between documents as clients parse them (no Dates, no undefined): the JSON of the payload
    const document = entity.payload === 'delta' && input.payload !== undefined && input.changeType !== 'deleted' ? JSON.parse(JSON.stringify(input.payload)) as unknown : undefined
    const frame = encodeNotification({ ...fields, payloadType, payload: document ?? input.payload })
    const notice: Notice = { frame, payloadType, tenantId, owner: ownerIn(entity, payloadType, input.payload), fields, document }
    try {
      await this.send(watched, now, this.withDelta(entity, channels[0], notice), position)
    } catch (err) {
      // the host hears of it from the rejection; the watchers, from a resync once the bus is back
      this.oweResync(entity, this.s.registry.databaseFor(entity, tenantId) ?? '', input.entityId, tenantId)
      throw err
    }
    return true
  }

  /** The channels of a change that someone watches. */
  private async anyoneWatches (channels: string[]): Promise<string[]> {
    const watched: string[] = []
    for (const channel of channels) if (await this.s.interest.isWatched(channel)) watched.push(channel)
    return watched
  }
}
