/**
 * Deliver: this instance subscribes on the bus only to channels its own sockets watch, and writes each
 * pre-encoded frame to every local receiver. Gaps (a listener reconnect, a bus outage) become `resync` frames.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { PubSub } from '../bus/bus.js'
import type { EntityRegistry } from '../entities.js'
import { channelOf, tablesChannelOf } from '../route/channels.js'
import { LocalSubscriptionStore, type WatchedEntity } from '../interest/local.js'
import type { InterestStore } from '../interest/interest.js'
import { unwrap } from '../route/envelope.js'
import type { Telemetry } from '../telemetry.js'
import { encodeResync } from '../protocol/index.js'
import { BusMembership } from './membership.js'
import { gapChannelOf } from '../route/resync.js'
import { PreparedFrame } from './prepared.js'
import { ChannelPositions } from './positions.js'

/** What a receiver knows of a notification besides its frame. */
export interface FrameMeta {
  channel: string
  /** the change's position ('<epoch>:<n>' in outbox mode), or null */
  position: string | null
  payloadType: string
  /** tenanted types: the tenant of the changed entity (a channel of every tenant carries several) */
  tenantId: string | null
  /** what a socket's later notification of the same entity may replace while the socket reads slowly */
  key: string
  /** the frame encoded and framed once for every socket it goes to */
  prepared: PreparedFrame
  /** changes captured from PostgreSQL: the writer's transaction id (a snapshot that saw it has the change already) */
  txid?: string
  /** owner types with full documents: the owner the document names (null: none); undefined: nothing to check */
  owner?: string | null
  /**
   * payload type `delta` (a `delta` type's change with a document; `prepared` is then its full frame): its patch frame,
   * when it has one, for the sockets whose last frame of the entity was the one at `base`. `patched` counts them.
   */
  patch?: PatchFrame
  /** the frame a feed's sockets get, naming their subscription: made once per change by the first that needs it */
  feed?: FeedFrame
}

/** A change's frame as a type's feed sends it (`subscriptionId` added), encoded once for every socket it goes to. */
export interface FeedFrame {
  subscriptionId: string
  frame: string
  prepared: PreparedFrame
}

/** A change's patch frame, encoded once for every socket it goes to. */
export interface PatchFrame {
  frame: string
  prepared: PreparedFrame
  /** the position of the document the patch applies to */
  base: string
  /** sockets it was written to */
  patched: number
}

/** Anything that receives frames: one per socket. */
export interface Receiver {
  /**
   * `meta` comes with notifications (not with resync and other frames). `shared`: a frame without meta that goes
   * to many sockets as is, prepared once. False when the frame was not written (the socket is closing, or was just
   * closed as a slow consumer).
   */
  deliver(frame: string, meta?: FrameMeta, shared?: PreparedFrame): boolean
}

/** Counts read by telemetry. */
export interface FanoutCounters {
  sentByPayload: Record<string, number>
  failedByPayload: Record<string, number>
  createdByType: Record<string, number>
  removedByType: Record<string, number>
  busErrors: number
  /** bus messages this instance could not read (their watchers were told to resync) */
  unreadable: number
}

/** Which watchers of a database a gap concerns: of some types (of some tenants, or all), or all. */
interface Scope { types?: string[], tenants?: string[] | null }

/** resyncs asked within this long of each other go out as one frame per entity (one outage: both Redis connections and the leader) */
const RESYNC_COALESCE_MS = 100

export class Fanout {
  readonly store = new LocalSubscriptionStore<Receiver>()
  readonly counters: FanoutCounters = { sentByPayload: {}, failedByPayload: {}, createdByType: {}, removedByType: {}, busErrors: 0, unreadable: 0 }
  /** every instance listens here for gaps announced by whichever instance captures a database */
  readonly gapChannel: string
  /** and here for notes of tables changed (lib/route/channels.ts), which go to `onTables` */
  private readonly tablesChannel: string
  onTables: ((database: string) => void) | null = null
  private bus: PubSub | null = null
  private membership: BusMembership | null = null
  /** entities whose watchers are due a resync (channel → reason), written together after RESYNC_COALESCE_MS */
  private readonly dueResyncs = new Map<string, string>()
  private resyncTimer: NodeJS.Timeout | null = null
  /** where presence's messages on an entity channel go (lib/presence/messages.ts: they start `pr1 `) */
  onPresence: ((channel: string, message: string) => void) | null = null
  private readonly positions = new ChannelPositions()

  constructor (
    private readonly prefix: string,
    private readonly registry: EntityRegistry,
    private readonly log: FastifyBaseLogger,
    private readonly telemetry: Telemetry | null = null
  ) {
    this.gapChannel = gapChannelOf(prefix)
    this.tablesChannel = tablesChannelOf(prefix)
  }

  async attach (bus: PubSub, interest: InterestStore): Promise<void> {
    this.bus = bus
    this.membership = new BusMembership(bus, interest, (channel) => this.store.get(channel)?.receivers.size ?? 0)
    await bus.subscribe([this.gapChannel, this.tablesChannel])
  }

  /** Channels subscribed on the bus for local watchers. */
  get busChannels (): number { return this.membership?.channels ?? 0 }

  /** A snapshot's position as the channel's sockets know it (lib/ws/positions.ts). */
  readonly positionOf = (channel: string, position: string): string => this.positions.translate(this.store.get(channel) ?? {}, position)

  channel (entityType: string, entityId: string, tenantId: string | null = null): string {
    return channelOf(this.prefix, entityType, entityId, tenantId)
  }

  /**
   * Starts delivering a channel's changes to `receiver`. Resolves once this instance receives the channel and the
   * cluster knows it is watched; rejects (the receiver removed again) when the bus or the interest store failed.
   */
  async watch (receiver: Receiver, channel: string, entityType: string, entityId: string, tenantId: string | null): Promise<void> {
    this.store.add(channel, entityType, entityId, tenantId, receiver)
    try {
      await this.membership?.sync(channel, entityType)
    } catch (err) {
      this.counters.busErrors++
      if (this.store.remove(channel, receiver)) this.resync(channel, entityType)
      throw err
    }
    this.counters.createdByType[entityType] = (this.counters.createdByType[entityType] ?? 0) + 1
  }

  async unwatch (receiver: Receiver, channel: string, entityType: string): Promise<void> {
    const had = this.store.get(channel)?.receivers.has(receiver) === true
    this.store.remove(channel, receiver)
    if (!had) return
    this.counters.removedByType[entityType] = (this.counters.removedByType[entityType] ?? 0) + 1
    try {
      await this.membership?.sync(channel, entityType)
    } catch (err) {
      this.counters.busErrors++
      throw err
    }
  }

  /** A membership round after a failure, in the background: the next one retries what this one could not do. */
  private resync (channel: string, entityType: string): void {
    this.membership?.sync(channel, entityType).catch((err: Error) => this.log.warn({ err: err.message, channel }, 'changefeed: bus membership update failed'))
  }

  /** The bus's message handler: the hot path. */
  readonly onBusMessage = (channel: string, message: string): void => {
    const entry = this.store.get(channel)
    if (entry === undefined) {
      if (channel === this.gapChannel) this.onGapMessage(message)
      else if (channel === this.tablesChannel) this.onTables?.(message)
      // else: a message can arrive after the last local receiver left and before the bus unsubscribe took: drop it
      return
    }
    if (message.startsWith('pr1 ')) return this.onPresence?.(channel, message)
    const envelope = unwrap(message)
    if (envelope === null) return this.unreadable(channel)
    if (envelope.kind === 'resync' || envelope.payloadType === null) return this.resyncSoon(channel, envelope.frame)
    if (!this.positions.apply(entry, envelope)) return
    // a resync due to these watchers goes first: the notification may follow the changes the gap lost
    if (this.dueResyncs.has(channel)) this.writeResync(channel)
    const span = envelope.traceparent === null ? null : this.telemetry?.deliverySpan(envelope.traceparent, entry.receivers.size)
    // a channel of every tenant carries each tenant's entity: theirs are different entities
    const key = envelope.tenantId === null || entry.tenantId !== null ? channel : channel + '\u0000' + envelope.tenantId
    const meta: FrameMeta = {
      channel, position: envelope.position, payloadType: envelope.payloadType, tenantId: envelope.tenantId, key, owner: envelope.owner, prepared: new PreparedFrame(envelope.frame)
    }
    if (envelope.txid !== undefined) meta.txid = envelope.txid
    const { delta } = envelope
    if (delta !== undefined) meta.patch = { frame: delta.frame, prepared: new PreparedFrame(delta.frame), base: delta.base, patched: 0 }
    let sent = 0
    for (const receiver of entry.receivers) if (receiver.deliver(envelope.frame, meta)) sent++
    // a delta type's change went out as a patch to some sockets, and in full to the others
    const patched = meta.patch?.patched ?? 0
    const payloadType = envelope.payloadType === 'delta' ? 'full' : envelope.payloadType
    const { sentByPayload, failedByPayload } = this.counters
    sentByPayload[payloadType] = (sentByPayload[payloadType] ?? 0) + sent - patched
    if (patched > 0) sentByPayload.delta = (sentByPayload.delta ?? 0) + patched
    if (sent < entry.receivers.size) failedByPayload[payloadType] = (failedByPayload[payloadType] ?? 0) + entry.receivers.size - sent
    this.telemetry?.recordDelivery(envelope.ts, envelope.payloadType)
    span?.end()
  }

  /**
   * A message this instance cannot read (an instance of another version on the bus, during a rolling upgrade; or
   * another publisher): its watchers may have missed a change, so they refetch. Counted, and logged once.
   */
  private unreadable (channel: string): void {
    if (this.counters.unreadable++ === 0) this.log.warn({ channel }, 'changefeed: a bus message in a layout this version does not read; its watchers resync (logged once; see stats().bus)')
    this.resyncSoon(channel, 'unreadable')
  }

  /**
   * Tells every instance that changes of `database` may have been lost. A `precaution` (a new instance's first
   * listener, see ListenerEvents.onGap) is a normal start: it is logged only where it reaches watchers.
   */
  async announceGap (database: string, reason: string, { precaution = false }: { precaution?: boolean } = {}): Promise<void> {
    if (!precaution) this.log.warn({ database, reason }, 'changefeed: change gap, watchers told to resync')
    // what was lost is in no channel's history: no resume may pass this moment
    await this.bus?.history?.markGap()
    await this.bus?.publish(this.gapChannel, JSON.stringify({ database, reason, precaution }))
  }

  /** Tells every instance that a database's tables changed: those that did not hear it from PostgreSQL look again. */
  announceTables (database: string): void {
    this.bus?.publish(this.tablesChannel, database).catch((err: Error) => this.log.warn({ database, err: err.message }, 'changefeed: telling the other instances of a table change failed; they see it at their next re-scan'))
  }

  private onGapMessage (message: string): void {
    try {
      const { database, reason, precaution, types, tenants } = JSON.parse(message) as { database: string, reason: string, precaution?: boolean } & Scope
      const entities = this.resyncLocal(reason, { database, types, tenants })
      if (precaution === true && entities > 0) this.log.warn({ database, reason, entities }, 'changefeed: another instance took over listening; watchers told to resync')
    } catch {
      this.log.warn('changefeed: ignored a malformed gap message')
    }
  }

  /**
   * Makes `resync` due to the local watchers of every entity (a bus gap: types only a host publishes included), or of
   * the entities `database` holds; of those, only of `types` (a table truncated or made again: feeds too), of `tenants`
   * (and every tenant's) when named. Returns how many entities that concerns.
   */
  resyncLocal (reason: string, { database, types, tenants }: { database?: string } & Scope = {}): number {
    let entities = 0
    for (const [channel, entry] of this.store.channels()) {
      if (types !== undefined && (!types.includes(entry.entityType) || (tenants != null && entry.tenantId !== null && !tenants.includes(entry.tenantId)))) continue
      if (database !== undefined && !this.holds(database, entry, { named: types !== undefined })) continue
      this.resyncSoon(channel, reason)
      entities++
    }
    return entities
  }

  /**
   * Whether a database holds a watched entity: its type's table is there (for database tenancy, its tenant's). A type
   * the gap names that has no database of its own (a stream's aggregate without a table) is any database's.
   */
  private holds (database: string, entry: WatchedEntity<Receiver>, { named }: { named: boolean }): boolean {
    const entity = this.registry.get(entry.entityType)
    if (entity === undefined) return false
    if (!entity.databases.includes(database)) return named && entity.databases.length === 0
    return entity.tenancy !== 'database' || entry.tenantId === null || this.registry.databaseFor(entity, entry.tenantId) === database
  }

  /**
   * Resyncs come due, then are written together: one gap is often reported several times within moments (each Redis
   * connection, then the leader's announcement), and each receiver needs to hear it once. Merging only resyncs that
   * are all still unwritten is safe: the one frame goes out after every gap it stands for.
   */
  private resyncSoon (channel: string, reasonOrFrame: string): void {
    if (!this.dueResyncs.has(channel)) this.dueResyncs.set(channel, reasonOrFrame)
    this.resyncTimer ??= setTimeout(() => this.writeDueResyncs(), RESYNC_COALESCE_MS)
  }

  private writeDueResyncs (): void {
    this.resyncTimer = null
    for (const channel of [...this.dueResyncs.keys()]) this.writeResync(channel)
  }

  private writeResync (channel: string): void {
    const owed = this.dueResyncs.get(channel)
    this.dueResyncs.delete(channel)
    const entry = this.store.get(channel)
    if (owed === undefined || entry === undefined) return
    // a frame from the bus (a publisher gave up on a change), or a reason given here
    const frame = owed.startsWith('{') ? owed : encodeResync(owed, entry)
    const shared = new PreparedFrame(frame)
    for (const receiver of entry.receivers) receiver.deliver(frame, undefined, shared)
  }

  close (): void {
    if (this.resyncTimer !== null) clearTimeout(this.resyncTimer)
    this.resyncTimer = null
    this.dueResyncs.clear()
  }
}
