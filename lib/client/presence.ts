/**
 * Presence of one entity on a client (`client.presence()`): who is on it, kept current from the server's batched
 * events, this client's own info, and signals. It rides on the entity's subscription (held while a handle is open),
 * with a subscribe of its own that carries `presence` (request id `presence:<key>`), sent again on every reopen with
 * the latest info. Above the type's maxMembers the server sends counts only: `members` is then a sample, `truncated`.
 */
import type { PresenceEventData } from '../protocol/presence.js'
import type { WireErrorCode } from '../protocol/wire.js'
import type { ClientMessage } from './frames.js'
import type { PresenceReceiver } from './receivers.js'

/** The request id prefix of presence's subscribes and info updates. */
export const PRESENCE_ID = 'presence:'

export interface PresenceMember<I = unknown> { userId: string, info?: I, connections?: number }

/** What a presence handle reads: replaced, never changed, on every change. */
export interface PresenceState<I = unknown> {
  /** pending until the server answers; error when it refused (`error` says why) */
  status: 'pending' | 'live' | 'error'
  members: ReadonlyMap<string, PresenceMember<I>>
  /** members in all (more than `members` holds when `truncated`) */
  count: number
  truncated: boolean
  error?: { code: WireErrorCode, message: string }
}

export interface PresenceEvents<I = unknown> {
  /** a batch of the server: who joined, changed info, left (lists absent above maxMembers) */
  onEvent?: (event: { count: number, joined?: Array<PresenceMember<I>>, updated?: Array<PresenceMember<I>>, left?: Array<{ userId: string }> }) => void
  /** a signal of another socket on the entity */
  onSignal?: (signal: { userId: string, data: unknown }) => void
  /** the server refused an info update or a signal (not_member, too_large, rate_limited) */
  onError?: (code: WireErrorCode, message: string) => void
}

export interface PresenceHandle<I = unknown> extends PresenceState<I> {
  getSnapshot: () => PresenceState<I>
  /** Sets this client's info (joining, when the handle only watched). */
  set: (info: I) => void
  /** Sends a signal to every other socket on the entity (members only; rate- and size-limited by the server: a refusal reaches `on({ onError })`). */
  signal: (data: unknown) => void
  onChange: (listener: (state: PresenceState<I>) => void) => () => void
  /** Observes events, signals and refusals; returns the function that stops observing. */
  on: (events: PresenceEvents<I>) => () => void
  close: () => void
}

export interface PresenceHost {
  /** false when the socket is not open (presence is sent again when it opens) */
  send (message: ClientMessage): boolean
  /** the last handle closed */
  released (room: PresenceRoom): void
}

const PENDING: PresenceState<never> = Object.freeze({ status: 'pending', members: new Map(), count: 0, truncated: false })

export class PresenceRoom implements PresenceReceiver {
  snapshot: PresenceState = PENDING
  private readonly watchers = new Set<(state: PresenceState) => void>()
  private readonly listeners = new Set<PresenceEvents>()
  private handles = 0
  /** the info this client joins with; undefined: it watches (no handle gave one) */
  private info: unknown
  private member = false

  constructor (private readonly entityType: string, private readonly entityId: string, private readonly tenantId: string | undefined, readonly key: string, private readonly host: PresenceHost) {}

  private get ref (): { entityType: string, entityId: string, tenantId?: string } {
    const { entityType, entityId, tenantId } = this
    return tenantId === undefined ? { entityType, entityId } : { entityType, entityId, tenantId }
  }

  /** Sends the subscribe that joins (or watches): also on every reopen. */
  onOpen (): void {
    this.host.send({ type: 'subscribe', id: PRESENCE_ID + this.key, data: { ...this.ref, presence: this.member ? (this.info === undefined ? {} : { info: this.info }) : true } })
  }

  onClose (): void {
    this.update({ status: 'pending' })
  }

  /** A new handle; `info` joins (a later one's replaces it). `left`: what closing it lets go of besides. */
  open<I> (info: I | undefined, left: () => void): PresenceHandle<I> {
    this.handles++
    if (info !== undefined) [this.member, this.info] = [true, info]
    this.onOpen()
    const own = new Set<() => void>()
    let open = true
    const room = this as PresenceRoom
    return Object.defineProperties({}, Object.getOwnPropertyDescriptors({
      get status () { return room.snapshot.status },
      get members () { return room.snapshot.members },
      get count () { return room.snapshot.count },
      get truncated () { return room.snapshot.truncated },
      get error () { return room.snapshot.error },
      getSnapshot: () => room.snapshot,
      set: (next: unknown) => room.set(next),
      signal: (data: unknown) => { room.host.send({ type: 'signal', id: PRESENCE_ID + room.key, data: { ...room.ref, data } }) },
      onChange: (listener: (state: PresenceState) => void) => room.add(room.watchers, (state: PresenceState) => listener(state), own),
      on: (events: PresenceEvents) => room.add(room.listeners, { ...events }, own),
      close: () => {
        if (!open) return
        open = false
        for (const stop of own) stop()
        left()
        if (--room.handles > 0) return
        // the entity may stay subscribed (other holders): leave its presence explicitly
        room.host.send({ type: 'subscribe', id: PRESENCE_ID + room.key, data: { ...room.ref, presence: false } })
        room.host.released(room)
      }
    })) as PresenceHandle<I>
  }

  private add<T> (set: Set<T>, item: T, own: Set<() => void>): () => void {
    set.add(item)
    const stop = (): void => { set.delete(item); own.delete(stop) }
    own.add(stop)
    return stop
  }

  private set (info: unknown): void {
    const joining = !this.member
    ;[this.member, this.info] = [true, info]
    if (joining) this.onOpen()
    else this.host.send({ type: 'presence', id: PRESENCE_ID + this.key, data: { ...this.ref, info } })
  }

  onSubscribed (presence: { count: number, members: PresenceMember[], truncated: boolean } | undefined): void {
    if (presence === undefined) return
    this.update({ status: 'live', count: presence.count, truncated: presence.truncated, members: new Map(presence.members.map((m) => [m.userId, m])), error: undefined })
  }

  onRefused (code: WireErrorCode, message: string, final: boolean): void {
    // a refused join: a later handle watches, unless it gives an info of its own
    if (final) [this.member, this.info] = [false, undefined]
    if (final) this.update({ status: 'error', error: { code, message } })
    else for (const l of this.listeners) l.onError?.(code, message)
  }

  onEvent (event: Omit<PresenceEventData, 'entityType' | 'entityId' | 'tenantId'>): void {
    const members = new Map(event.members?.map((m) => [m.userId, m]) ?? this.snapshot.members)
    for (const m of [...event.joined ?? [], ...event.updated ?? []]) members.set(m.userId, { ...members.get(m.userId), ...m })
    for (const { userId } of event.left ?? []) members.delete(userId)
    this.update({ count: event.count, members, truncated: event.count > members.size })
    for (const l of this.listeners) l.onEvent?.(event)
  }

  onSignal (from: { userId: string }, data: unknown): void {
    for (const l of this.listeners) l.onSignal?.({ userId: from.userId, data })
  }

  private update (change: Partial<PresenceState>): void {
    this.snapshot = { ...this.snapshot, ...change }
    for (const watcher of this.watchers) watcher(this.snapshot)
  }
}
