/**
 * Presence on this instance: a room per watched entity (lib/presence/room.ts), the sockets here that joined it as
 * members or watch it, and this instance's entry for each of its users (connections here, the info set here last).
 * An entry that changes is written to the store and published on the entity's own bus channel, which every instance
 * with a socket on the entity receives already; an instance that starts watching an entity reads the store. Every
 * third of the instance TTL, entries of instances whose heartbeat lapsed (lib/interest/) are dropped: their members
 * leave within the TTL, without any close frame.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { PubSub } from '../bus/bus.js'
import type { Receiver } from '../ws/fanout.js'
import { TokenBucket } from '../ws/limits.js'
import { WireError, encodeSignal, type PresenceRef, type PresenceSnapshotData, type WireErrorCode } from '../protocol/index.js'
import { PresenceRoom, type Entry } from './room.js'
import { presenceSettings, signalSettings, type PresenceSettings, type SignalSettings } from './options.js'
import type { EntityOptions } from '../options.js'
import type { PresenceStore } from './store.js'
import type { PresenceCounters } from './counters.js'
import { readMessage, memberMessage, signalMessage } from './messages.js'

/** A socket on a room: a member (its user, its signal rate) or a watcher only (user null). */
interface Seat { userId: string | null, signals: TokenBucket | null, infoSets: TokenBucket | null }

interface Hosted {
  room: PresenceRoom
  signals: SignalSettings | null
  seats: Map<Receiver, Seat>
  /** this instance's users on the room: their sockets here, and the info set here last */
  users: Map<string, { c: number, info?: unknown, at: number }>
  /** resolves once the store's entries are in (a cluster); messages wait in `buffer` until then */
  ready: Promise<void>
  buffer: string[] | null
}

export class Presence {
  private readonly rooms = new Map<string, Hosted>()
  readonly counters: PresenceCounters = { published: 0, publishErrors: 0, received: 0, signals: 0, unreadable: 0, storeErrors: 0 }
  /** versions of this instance's entries: a message applies only when newer than what a reader holds */
  private version = 0
  /** when an instance was last heard of (a message, or the store): it is not dropped for a registry read before */
  private readonly heard = new Map<string, number>()
  private timer: NodeJS.Timeout | null = null
  private sweeping = false

  constructor (
    private readonly store: PresenceStore,
    /** null: one process, nothing to publish */
    private readonly bus: PubSub | null,
    readonly instanceId: string,
    private readonly log: FastifyBaseLogger,
    /** the declared types' options (entities.<Type>.presence, .signals) */
    private readonly types: Record<string, EntityOptions>,
    sweepMs: number
  ) {
    if (bus === null) return
    this.timer = setInterval(() => { void this.sweep() }, sweepMs)
    this.timer.unref()
  }

  /** A type's presence and signal settings; null when it has no presence. */
  settingsOf (entityType: string): { presence: PresenceSettings, signals: SignalSettings | null } | null {
    const options = this.types[entityType]
    const presence = presenceSettings(options?.presence)
    return presence === null ? null : { presence, signals: signalSettings(options.signals) }
  }

  /** Rooms (entities with presence watched here). */
  get size (): number {
    return this.rooms.size
  }

  /**
   * Seats `socket` on the room of `channel`: as the member `userId` with `info`, or (userId null) watching. A socket
   * seated already changes seat: a watcher that joins becomes a member; a member that joins again sets its info.
   */
  async enter (socket: Receiver, channel: string, ref: PresenceRef, settings: PresenceSettings, signals: SignalSettings | null, userId: string | null, info: unknown): Promise<PresenceSnapshotData> {
    const hosted = this.host(channel, ref, settings, signals)
    const seat = hosted.seats.get(socket)
    if (seat === undefined) {
      hosted.seats.set(socket, { userId: null, signals: null, infoSets: null })
      hosted.room.addWatcher(socket)
    }
    if (userId !== null) {
      const now = hosted.seats.get(socket)!
      if (now.userId === null) {
        now.userId = userId
        now.signals = signals === null ? null : new TokenBucket(signals.ratePerSecond, signals.ratePerSecond)
        this.change(channel, hosted, userId, 1, info)
      } else {
        this.change(channel, hosted, now.userId, 0, info)
      }
    }
    await hosted.ready
    return hosted.room.snapshot()
  }

  /** The socket leaves the room (unsubscribe, close): as a member, its user's connection here ends. */
  leave (socket: Receiver, channel: string): void {
    const hosted = this.rooms.get(channel)
    const seat = hosted?.seats.get(socket)
    if (hosted === undefined || seat === undefined) return
    hosted.seats.delete(socket)
    hosted.room.removeWatcher(socket)
    if (seat.userId !== null) this.change(channel, hosted, seat.userId, -1, undefined)
    if (hosted.seats.size === 0) {
      hosted.room.close()
      this.rooms.delete(channel)
    }
  }

  /** Sets a member socket's info: null when set, or why not. */
  setInfo (socket: Receiver, channel: string, info: unknown): WireErrorCode | null {
    const hosted = this.rooms.get(channel)
    const seat = hosted?.seats.get(socket)
    if (hosted === undefined || seat?.userId == null) return WireError.notMember
    // a client moving its info with the pointer would make a frame per interval of every watcher anyway: a burst
    // of ten, then one per interval
    seat.infoSets ??= new TokenBucket(10, 1000 / hosted.room.settings.intervalMs)
    if (!seat.infoSets.take()) return WireError.rateLimited
    this.change(channel, hosted, seat.userId, 0, info)
    return null
  }

  /** Sends a member's signal (`data`: its JSON) to every other socket on the room, here and on other instances. */
  signal (socket: Receiver, channel: string, data: string): WireErrorCode | null {
    const hosted = this.rooms.get(channel)
    const seat = hosted?.seats.get(socket)
    if (hosted === undefined || seat?.userId == null) return WireError.notMember
    if (hosted.signals === null) return WireError.badRequest
    if (seat.signals?.take() !== true) return WireError.rateLimited
    const frame = encodeSignal(hosted.room.ref, seat.userId, data)
    this.counters.signals += hosted.room.broadcast(frame, socket, channel, signalKey(channel, seat.userId))
    this.publish(channel, signalMessage(this.instanceId, seat.userId, frame))
    return null
  }

  /** The signal settings of a room's type; undefined when the socket is not on it. */
  signalsOf (channel: string): SignalSettings | null | undefined {
    return this.rooms.get(channel)?.signals
  }

  private host (channel: string, ref: PresenceRef, settings: PresenceSettings, signals: SignalSettings | null): Hosted {
    let hosted = this.rooms.get(channel)
    if (hosted !== undefined) return hosted
    const room = new PresenceRoom({ entityType: ref.entityType, entityId: ref.entityId, tenantId: ref.tenantId }, settings)
    hosted = { room, signals, seats: new Map(), users: new Map(), ready: Promise.resolve(), buffer: null }
    this.rooms.set(channel, hosted)
    if (this.bus !== null) hosted.ready = this.load(channel, hosted)
    return hosted
  }

  /** The store's entries of a room, then the messages that came meanwhile (a message newer than an entry wins). */
  private async load (channel: string, hosted: Hosted): Promise<void> {
    hosted.buffer = []
    try {
      const live = await this.store.live()
      /** entries of instances that stopped, removed from the store while here (no heartbeat renews them in NATS) */
      const stale = new Map<string, string[]>()
      for (const { instance, userId, entry } of await this.store.load(channel)) {
        if (instance === this.instanceId) continue
        if (live !== null && !live.has(instance)) {
          stale.set(instance, [...stale.get(instance) ?? [], userId])
          continue
        }
        this.hear(instance)
        if (entry.v > hosted.room.versionOf(instance, userId)) hosted.room.apply(instance, userId, entry)
      }
      for (const [instance, users] of stale) this.store.forget(channel, instance, users).catch((err: Error) => this.storeFailed(err, channel))
    } catch (err) {
      this.counters.storeErrors++
      this.log.warn({ err: (err as Error).message, channel }, 'changefeed: presence store read failed; members of other instances appear as they change')
    }
    const buffer = hosted.buffer
    hosted.buffer = null
    for (const message of buffer) this.receive(channel, hosted, message)
  }

  /** This instance's entry for a user changes: `by` connections, and the info when one is given. */
  private change (channel: string, hosted: Hosted, userId: string, by: number, info: unknown): void {
    const before = hosted.users.get(userId)
    const c = (before?.c ?? 0) + by
    const entry: Entry | null = c <= 0 ? null : { c, at: before?.at ?? Date.now(), v: ++this.version }
    if (entry !== null) {
      if (info !== undefined) [entry.info, entry.at] = [info, Date.now()]
      else if (before?.info !== undefined) entry.info = before.info
      hosted.users.set(userId, entry)
    } else {
      hosted.users.delete(userId)
    }
    hosted.room.apply(this.instanceId, userId, entry)
    if (this.bus === null) return
    const v = entry?.v ?? ++this.version
    this.store.write(channel, userId, entry).catch((err: Error) => this.storeFailed(err, channel))
    this.publish(channel, memberMessage(this.instanceId, userId, v, entry))
  }

  private publish (channel: string, message: string): void {
    if (this.bus === null) return
    this.counters.published++
    this.bus.publish(channel, message).catch((err: Error) => {
      this.counters.publishErrors++
      this.log.warn({ err: err.message, channel }, 'changefeed: presence publish failed; other instances miss this change until the user\'s next one')
    })
  }

  private storeFailed (err: Error, channel: string): void {
    this.counters.storeErrors++
    this.log.warn({ err: err.message, channel }, 'changefeed: presence store write failed')
  }

  /** The fanout hands over what arrives on an entity channel in presence's layout. */
  readonly onBusMessage = (channel: string, message: string): void => {
    const hosted = this.rooms.get(channel)
    // a message can arrive for a room whose last socket just left: nobody to tell
    if (hosted === undefined) return
    if (hosted.buffer !== null) hosted.buffer.push(message)
    else this.receive(channel, hosted, message)
  }

  private receive (channel: string, hosted: Hosted, message: string): void {
    const read = readMessage(message)
    if (read === null) {
      if (this.counters.unreadable++ === 0) this.log.warn({ channel }, 'changefeed: a presence message in a layout this version does not read (logged once)')
      return
    }
    // this instance's own, back from the bus: applied when made
    if (read.instance === this.instanceId) return
    this.counters.received++
    this.hear(read.instance)
    if (read.kind === 'signal') {
      this.counters.signals += hosted.room.broadcast(read.frame, null, channel, signalKey(channel, read.userId))
      return
    }
    if (read.v > hosted.room.versionOf(read.instance, read.userId)) hosted.room.apply(read.instance, read.userId, read.entry)
  }

  private hear (instance: string): void {
    this.heard.set(instance, Date.now())
  }

  /** Drops the entries of instances that stopped, and renews this instance's own in the store. */
  private async sweep (): Promise<void> {
    if (this.sweeping) return
    this.sweeping = true
    const started = Date.now()
    try {
      const mine: string[] = []
      for (const [channel, hosted] of this.rooms) if (hosted.users.size > 0) mine.push(channel)
      if (mine.length > 0) await this.store.refresh(mine)
      const foreign = [...this.rooms.values()].some(({ room }) => room.instances.size > (room.instances.has(this.instanceId) ? 1 : 0))
      if (!foreign) return
      const live = await this.store.live()
      if (live === null) return
      for (const [channel, { room }] of this.rooms) {
        for (const instance of [...room.instances.keys()]) {
          if (instance === this.instanceId || live.has(instance) || (this.heard.get(instance) ?? 0) >= started) continue
          const users = room.removeInstance(instance)
          this.log.info({ instance, channel, members: users.length }, 'changefeed: presence of an instance that stopped removed')
          this.store.forget(channel, instance, users).catch((err: Error) => this.storeFailed(err, channel))
        }
      }
      for (const instance of this.heard.keys()) if (!live.has(instance) && (this.heard.get(instance) ?? 0) < started) this.heard.delete(instance)
    } catch (err) {
      this.storeFailed(err as Error, '*')
    } finally {
      this.sweeping = false
    }
  }

  close (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    for (const { room } of this.rooms.values()) room.close()
    this.rooms.clear()
  }
}

/** What a slow socket's held signal is replaced by: the same sender's next signal on the entity. */
const signalKey = (channel: string, userId: string): string => channel + '\u0000signal\u0000' + userId
