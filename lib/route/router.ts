/**
 * Route: from a captured change (or a host's direct publish) to one encoded frame on the bus. Drops changes
 * nobody watches before any work; for `full` and `delta` types reads the document at most once per changed entity
 * per transaction (not at all when the trigger inlined it); encodes the wire message once for every watcher (a
 * `delta` type's change twice: full, and its patch from the entity's previous document, lib/route/deltas.ts). A change
 * that cannot be attributed to an entity type is counted and logged by reason (lib/route/drops.ts), never silently lost.
 */
import type { FastifyBaseLogger } from 'fastify'
import { coalesceRows, type Change, type RowChange } from '../capture/coalesce.js'
import type { ChangeSink } from './stream.js'
import type { TableScanner } from '../capture/index.js'
import type { EntityRegistry, EntityType } from '../entities.js'
import { publishOn, type HistoryLimits, type PubSub } from '../bus/bus.js'
import type { InterestStore } from '../interest/interest.js'
import { wrap } from './envelope.js'
import { context, propagation, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api'
import { OwedResyncs } from './resync.js'
import { channelsOf } from './channels.js'
import type { Notice, Notices } from './notices.js'
import { publishedChange, type PublishInput } from './published.js'
import { ChangeOrder, type Turns } from './order.js'
import { Deltas, type DeltaFrame } from './deltas.js'
import { watchedOf } from './watched.js'

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

/** Where a change went: to the bus, to the stream only, nowhere (nobody watches), or the error it failed with. */
type Outcome = 'published' | 'streamed' | 'unwatched' | Error

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
  /** the history a type's channels keep on the bus (lib/bus/history.ts); none when absent */
  history?: (entityType: string) => HistoryLimits | null
  tracer?: Tracer
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
  private readonly inFlight = new Map<string, Promise<Outcome>>()
  /**
   * Captured changes are handed on in the order they came (commit order) across entities too: a change that waits
   * for a read would otherwise be overtaken, and a feed's watchers, and a snapshot's "seen until the first unseen"
   * (lib/reads/snapshot.ts), rely on that order; each joins its entity's chain in that order too (lib/route/order.ts). */
  private readonly order = new ChangeOrder()
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
  async routeChange (change: Change, { stopAfterFailure = false }: { stopAfterFailure?: boolean } = {}): Promise<boolean> {
    // taken before the first await: changes leave in the order they came, whatever the work of each costs
    const turn = this.order.take()
    try {
      this.counters.changes++
      if (change.truncated !== undefined) return await this.truncated(change, turn)
      const entity = await this.entityOf(change)
      return entity === undefined || !(await turn.join(async () => await this.routeInOrder(entity, change, turn.ready, { stopAfterFailure })) instanceof Error)
    } finally {
      turn.done()
    }
  }

  /**
   * A host's direct publish: checked, made a change, and routed as a captured one is. Resolves true when it was
   * handed to the bus, false when nobody watches (known without a round trip only with the memory bus); rejects
   * when the bus refused it (its watchers are owed a resync).
   */
  async publish (input: PublishInput): Promise<boolean> {
    const { entity, change } = publishedChange(this.s.registry, input, `p:${this.s.instanceId.slice(0, 8)}:${++this.published}`)
    const turn = this.order.take()
    let outcome: Outcome
    try {
      this.counters.changes++
      outcome = await turn.join(async () => await this.routeInOrder(entity, change, turn.ready, { stopAfterFailure: false }))
    } finally {
      turn.done()
    }
    if (outcome instanceof Error) {
      // the host hears of it from the rejection; the watchers, from a resync once the bus is back
      this.owed.oweChange(entity, change.database, change.id, change.tenantId)
      throw outcome
    }
    return outcome === 'published'
  }

  /** A TRUNCATE: the watchers of what it emptied refetch, once the changes before it are handed on. */
  private async truncated (change: Change, turn: Turns): Promise<boolean> {
    turn.pass()
    const targets = await this.s.notices.truncations.targetsOf(change)
    await turn.ready
    if (targets !== null) this.owed.oweTypes(change.database, targets.types, targets.tenants, 'truncated')
    return true
  }

  /** The entity type of a captured change (after a look for a table created a moment ago), or undefined (dropped). */
  private async entityOf (change: Change): Promise<EntityType | undefined> {
    const entity = this.s.notices.entityOf(change, { count: false })
    if (entity !== undefined) return entity
    if (change.events === undefined && change.changeType !== 'archived' && this.mayLookFor(change)) {
      // a table created a moment ago: the event trigger's note may still be on its way
      await this.s.scanner.rescanDatabase(change.database).catch(() => {})
    }
    return this.s.notices.entityOf(change)
  }

  /** Routes the change after the entity's changes before it (outbox mode: stops after one that failed). */
  private async routeInOrder (entity: EntityType, change: Change, turn: Promise<void>, { stopAfterFailure }: { stopAfterFailure: boolean }): Promise<Outcome> {
    const tenantId = change.published === true ? change.tenantId : this.s.notices.tenantOf(entity, change)
    const channels = channelsOf(this.prefix, entity, change.id, tenantId)
    const key = channels[0]
    const previous = this.inFlight.get(key)
    const current: Promise<Outcome> = previous === undefined
      ? this.route(entity, channels, tenantId, change, turn)
      // outbox mode: after a failure the entity's later changes wait for the retry, so they never overtake it
      : previous.then(async (before) => before instanceof Error && stopAfterFailure ? before : await this.route(entity, channels, tenantId, change, turn))
    this.inFlight.set(key, current)
    const outcome = await current
    if (this.inFlight.get(key) === current) this.inFlight.delete(key)
    return outcome
  }

  /** Notify mode: a change that fails now is lost, and its watchers must hear of it. */
  async routeCaptured (change: Change): Promise<void> {
    if (!await this.routeChange(change)) this.giveUp(change)
  }

  /** Outbox mode: one batch of numbered rows (lib/capture/publisher.ts says when it is final). */
  async routeOutbox (database: string, rows: RowChange[], { final, current }: { final: boolean, current: () => boolean }): Promise<boolean> {
    const changes = coalesceRows(database, this.s.registry.tenantOfDatabase(database), rows)
    // a deposed publisher stops at once: the new leader publishes from the stored cursor
    const results = await Promise.all(changes.map(async (c) => current() && await this.routeChange(c, { stopAfterFailure: !final })))
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

  /**
   * The route of one change: whether anyone watches, its notice (a document read when needed), the stream, the
   * bus. `turn`: resolves once every change that came before this one has been handed on (or dropped). Never rejects:
   * a failure is logged and counted, and resolves with its error.
   */
  private async route (entity: EntityType, channels: string[], tenantId: string | null, change: Change, turn: Promise<void>): Promise<Outcome> {
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
      const watched = this.s.interest.local || needsRead ? await watchedOf(this.s.interest, channels, this.s.history?.(entity.name) != null ? this.s.bus.history : null) : channels
      if (watched.length === 0 && this.s.stream === null) {
        // its next watcher gets a full document first: the one kept here would only take room
        this.deltas.forget(channels[0])
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'unwatched')
        return 'unwatched'
      }
      const notice = await this.s.notices.noticeOf(entity, change, tenantId)
      this.counters.documentReads = this.s.notices.reads
      await turn
      if (this.s.stream !== null) await this.s.stream.publish({ entityType: entity.name, entityId: change.id, position: change.position, frame: notice.frame })
      if (watched.length === 0) {
        this.deltas.forget(channels[0])
        this.counters.unwatched++
        span.setAttribute('changefeed.outcome', 'streamed')
        return 'streamed'
      }
      await this.send(entity, watched, change.ts, this.deltas.noticeOf(entity, channels[0], notice), change.position, span, change.published === true ? undefined : change)
      span.setAttribute('changefeed.outcome', 'published')
      return 'published'
    } catch (err) {
      this.counters.failed++
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message })
      // a bus outage fails every change until the bus is back; it is reported once, by the bus, and counted
      if (this.counters.busErrors > busErrorsBefore) this.s.log.debug({ err: (err as Error).message, entityType: entity.name, entityId: change.id }, 'changefeed: the bus refused a change')
      else this.s.log.error({ err, entityType: entity.name, entityId: change.id }, 'changefeed: routing a change failed')
      return err as Error
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
    const entity = this.s.notices.entityOf(change, { count: false })
    if (entity === undefined) return
    this.counters.givenUp++
    this.s.log.error({ entityType: entity.name, entityId: change.id, position: change.position }, 'changefeed: a change could not be delivered; its watchers resync')
    this.owed.oweChange(entity, change.database, change.id, this.s.notices.tenantOf(entity, change))
  }

  /** Hands one encoded notification to the bus, on every channel whose watchers see it (and its history), once per change. */
  private async send (entity: EntityType, channels: string[], ts: number, notice: Notice & { delta?: DeltaFrame }, position: string, span?: Span, captured?: Change): Promise<void> {
    const carrier: { traceparent?: string } = {}
    if (span?.isRecording() === true) propagation.inject(trace.setSpan(context.active(), span), carrier)
    const message = wrap({ ts, payloadType: notice.payloadType, traceparent: carrier.traceparent, position, tenantId: notice.tenantId, owner: notice.owner, frame: notice.frame, delta: notice.delta, txid: captured?.txid })
    const limits = this.s.history?.(entity.name) ?? null
    // a captured change's key in the history: a new leader's publish of it again is found there (lib/bus/history.ts)
    const dedupe = captured === undefined ? undefined : { key: `${entity.name}:${captured.tenantId ?? ''}:${captured.id} ${position}`, check: captured.handoff === true }
    try {
      let at: string | undefined
      for (const channel of channels) at = await publishOn(this.s.bus, channel, message, limits, at, dedupe)
    } catch (err) {
      this.counters.busErrors++
      throw err
    }
    this.counters.published++
  }
}
