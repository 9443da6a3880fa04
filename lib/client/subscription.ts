/**
 * One watched entity (or feed) of a client: its holders, its snapshot, where it stands in the stream, and where it
 * stands with the server:
 *
 * | from                  | on                                                      | to                    |
 * | --------------------- | ------------------------------------------------------- | --------------------- |
 * | unsubscribed          | subscribe sent, no position known                       | subscribing           |
 * | unsubscribed          | subscribe sent with `since` (a position is known)       | resuming              |
 * | subscribing, resuming | `subscribed` (holders resync unless it `recovered`)     | subscribed            |
 * | subscribing, resuming | `subscription_error`: forbidden, unauthenticated, …     | error                 |
 * | subscribing, resuming | `rate_limited`, `internal_error`: sent again in ≤1.25 s | unsubscribed          |
 * | subscribed            | `resync`, with a resumable position                     | resuming              |
 * | subscribed            | watcher counts asked for                                | subscribing, resuming |
 * | error                 | `authenticated`, having been refused as unauthenticated | subscribing, resuming |
 * | any                   | connection lost (all are sent again when it opens)      | unsubscribed          |
 * | any                   | last holder gone, a tick later (unsubscribe sent)       | released (final)      |
 *
 * While `resuming`, notifications of the entity are dropped: they were written before the server took the resume,
 * and the replay that follows the reply carries them in their place.
 *
 * `delta` types: a patch that does not apply to the document held (patch-base.ts) makes the subscription ask again
 * (with `since` when a position is known, the server's next frame is then full, and with `snapshot`); unless the
 * server replays what was missed or sends a fresh state, holders resync (`patch_failed`).
 *
 * Snapshots (SnapshotAsk): a holder that asks for the entity's state gets it with the `subscribed` reply; after a
 * loss (a reconnect, a resync, a patch that did not apply) a subscription that holds a state asks again, with
 * `since`, and the server replays what was missed or sends the state afresh, which holders that take snapshots get
 * instead of a resync.
 */
import type { EntitySnapshotData, NotificationMessage, SubscribeOneRequest } from '../protocol/messages.js'
import { FEED, WireError, isAfter, parsePosition, subscriptionIdOf, type WireErrorCode } from '../protocol/wire.js'
import { Held, type HeldHost } from './held.js'
import { PatchBase } from './patch-base.js'
import type { EntityReceiver } from './receivers.js'
import type { EntitySnapshot, EntityState, SubscriptionEvents } from './types.js'

/** What a subscription needs of its client. */
export interface SubscriptionHost extends HeldHost {
  /** the client's origin id: notifications carrying it are its own writes */
  readonly origin: string
  /** a resync reached this subscription's holders (the client tells its every-resync listeners) */
  resynced (subscription: Subscription, reason: string): void
  /** a snapshot reached this subscription's holders (the client tells its every-snapshot listeners) */
  snapshotted (state: EntityState): void
}

/** resyncs of one entity within this long of each other reach the application as one */
const RESYNC_BURST_MS = 50
/** how many recent positions are kept to drop a notification delivered again (after a failover) */
const SEEN_POSITIONS = 64

/**
 * Where a subscription stands with the entity's state (a snapshot, asked for with a subscribe):
 * - `unwanted`: no holder takes snapshots (a whole document held is still renewed after a loss: see renewState);
 * - `wanted`: a holder takes them, and none is due (one came, or the server replayed what was missed);
 * - `due`: the next subscribe asks for one;
 * - `sent`: the subscribe on its way asked for one.
 */
type SnapshotAsk = 'unwanted' | 'wanted' | 'due' | 'sent'

/** the snapshot of an entity nobody watches yet, and of a new subscription */
export const PENDING: EntitySnapshot<never> = Object.freeze<EntitySnapshot<never>>({ status: 'pending', revision: 0 })

export class Subscription extends Held<EntitySnapshot<unknown>> implements EntityReceiver {
  /** subscribe() callers' events */
  readonly listeners = new Set<SubscriptionEvents<unknown>>()
  /** the last position of the entity: sent as `since` on the next subscribe */
  private since: string | undefined
  /** the latest document of the entity (full or patched) and its position: the base of the next patch */
  private readonly base = new PatchBase()
  /** recent positions, of the entity and of a feed's entities alike */
  private readonly seen: string[] = []
  /** why it was sent again (a reconnect, a resync): unless the server recovers what was missed, holders refetch */
  private resubscribed: string | undefined
  /** watcher counts were asked for (then every subscribe asks) */
  private counted = false
  private asking: SnapshotAsk = 'unwanted'
  /** the entity's state as last known (a snapshot, or a whole document, and the changes since): a late holder's start */
  current: EntityState | undefined
  private resyncTimer: ReturnType<typeof setTimeout> | undefined
  /** a resync of the burst under way brought no fresh state */
  private resyncStale = false

  constructor (readonly entityType: string, readonly entityId: string, readonly tenantId: string | undefined, protected override readonly host: SubscriptionHost) {
    super(subscriptionIdOf(entityType, entityId, tenantId), PENDING, host)
  }

  // ------------------------------------------------------------------ holders

  /** Asks for watcher counts: subscribing again is idempotent on the server, and this time it asks for counts too. */
  count (): void {
    if (this.counted) return
    this.counted = true
    this.subscribe()
  }

  /**
   * A holder wants the entity's state. With one known, it is the holder's to read; otherwise the next subscribe
   * asks for it, and a subscribe on its way without it is sent again with it.
   */
  askSnapshot (): void {
    if (this.asking !== 'unwanted' || this.entityId === FEED) return
    this.asking = this.current === undefined ? 'due' : 'wanted'
    if (this.asking === 'due' && (this.phase === 'subscribing' || this.phase === 'subscribed')) this.subscribe()
  }

  override close (): void {
    super.close()
    clearTimeout(this.resyncTimer)
  }

  // ------------------------------------------------------------------ the connection

  /** The socket opened: ask for it; after a reconnect, holders refetch unless the server recovers what was missed. */
  onOpen (reconnected: boolean): void {
    this.resubscribed = reconnected ? 'reconnected' : undefined
    if (reconnected) this.renewState()
    this.subscribe()
  }

  /** Signed in (again): a subscription refused for want of it is asked for once more. */
  onSignedIn (): void {
    if (this.phase === 'error' && this.snapshot.error?.code === WireError.unauthenticated) this.subscribe()
  }

  /** Sends the subscribe, with `since` when a position is known so that the server can replay what was missed. */
  override subscribe (): void {
    // replies carry the key as their id: they are matched by it, whatever name the server gives the entity
    if (this.host.send({ type: 'subscribe', id: this.key, data: this.request() })) this.phase = this.since === undefined ? 'subscribing' : 'resuming'
  }

  /** What a subscribe of it asks for now. */
  private request (): SubscribeOneRequest {
    const data: SubscribeOneRequest = { entityType: this.entityType, entityId: this.entityId }
    if (this.tenantId !== undefined) data.tenantId = this.tenantId
    if (this.since !== undefined) data.since = this.since
    if (this.counted) data.watchers = true
    if (this.asking === 'due' || this.asking === 'sent') {
      this.asking = 'sent'
      data.snapshot = true
    }
    return data
  }

  /** Subscribing again after a loss: a subscription that holds a state (or whose holders take one) asks afresh. */
  private renewState (): void {
    if (this.asking === 'wanted' || (this.asking === 'unwanted' && this.current !== undefined)) this.asking = 'due'
  }

  // ------------------------------------------------------------------ frames

  onSubscribed (recovered: boolean | undefined, snapshot?: EntitySnapshotData, position?: string): void {
    this.phase = 'subscribed'
    // where a subscription that starts now starts: a reconnect before any notification resumes from it
    if (position !== undefined && this.since === undefined) this.since = position
    // a state that came, or a replay of what was missed, is what was due; otherwise the next subscribe asks again
    if (this.asking === 'sent' || this.asking === 'due') this.asking = recovered === true || snapshot !== undefined ? 'wanted' : 'due'
    if (snapshot !== undefined) this.took(snapshot)
    else if (this.snapshot.status !== 'subscribed') this.update({ status: 'subscribed', error: undefined }, false)
    const reason = this.resubscribed
    this.resubscribed = undefined
    // a fresh document stands in for what was missed, for the holders that take it; the others refetch
    if (reason !== undefined && recovered !== true) this.resync(reason, snapshot !== undefined && 'payload' in snapshot)
  }

  /**
   * The entity's state with the reply. It is the base of the next patch (a `delta` type's), and where a resume
   * starts from; one older than a notification applied meanwhile (outbox positions tell) does not roll it back.
   */
  private took (snapshot: EntitySnapshotData): void {
    const { position } = snapshot
    if (position === undefined || position === this.since || isAfter(position, this.since)) {
      if ('payload' in snapshot) this.base.hold(snapshot.payload, position)
      if (position !== undefined) this.since = this.remember(position)
      this.current = { ...this.ref(), ...snapshot }
    }
    const state = this.current ?? { ...this.ref(), ...snapshot }
    this.update({ status: 'subscribed', error: undefined, version: state.version, ...('payload' in state ? { payload: state.payload } : {}) })
    for (const l of this.listeners) l.onSnapshot?.(state)
    this.host.snapshotted(state)
  }

  /** The entity as replies and states name it. */
  private ref (): Pick<EntityState, 'entityType' | 'entityId' | 'tenantId'> {
    return this.tenantId === undefined ? { entityType: this.entityType, entityId: this.entityId } : { entityType: this.entityType, entityId: this.entityId, tenantId: this.tenantId }
  }

  /** Refused: final (forbidden, unauthenticated, …), unless the server failed rather than the request. */
  onSubscriptionError (code: WireErrorCode, message: string): void {
    if (code === WireError.internal) return this.retry()
    this.phase = 'error'
    this.update({ status: 'error', error: { code, message } })
    for (const l of this.listeners) l.onError?.(code, message, this.entityId)
  }

  /** A subscribe beyond the server's rate. */
  onRateLimited (): void {
    this.retry()
  }

  /**
   * A notification of this entity (`own`), or of an entity of this feed. `before` gets it as holders will (a patch
   * with the whole document as its payload) before they do (the client's every-notification listeners, such as a
   * TanStack Query cache, are in step when an application's handler runs); nothing when they will not get it.
   */
  onNotification (notification: NotificationMessage, own: boolean, before?: (notification: NotificationMessage) => void): void {
    if (this.phase === 'resuming') return
    const { position, payloadType } = notification
    if (payloadType === 'delta') {
      // a feed gets full frames; a patch of its entities is another subscription's
      if (!own || this.entityId === FEED) return
      const made = this.base.apply(notification)
      if (made === null) this.patchFailed()
      if (made == null) return
      notification = { ...notification, payload: made.value }
    } else if (payloadType === 'full') {
      // kept even when a repeat: the server's next patch is made on the document it sent last
      this.base.hold(notification.payload, position)
    }
    if (position !== undefined) {
      // delivered again after a failover, or (the entity's own, a feed's) not after the last one: a repeat
      const resumable = own || this.entityId === FEED
      if (this.seen.includes(position) || (resumable && !isAfter(position, this.since))) return
      this.remember(position)
      if (resumable) this.since = position
    }
    const whole = payloadType === 'full' || payloadType === 'delta'
    const version = own && notification.version !== undefined ? notification.version : this.snapshot.version
    if (own && (whole || this.current !== undefined)) {
      this.current = { ...this.current, ...this.ref(), version, position, ...(whole ? { payload: notification.payload } : {}) }
    }
    before?.(notification)
    this.update({ status: 'subscribed', notification, version, payload: whole ? notification.payload : this.snapshot.payload })
    const mine = notification.origin !== undefined && notification.origin === this.host.origin
    for (const l of this.listeners) if (!(mine && l.skipOwnWrites === true)) l.onNotification?.(notification)
  }

  /**
   * A patch did not apply to the document held: ask again from the last position whose document was whole (the
   * server sends the next one full); holders refetch unless the server replays what was missed. A subscribe on
   * its way already asks.
   */
  private patchFailed (): void {
    this.since = this.base.at
    this.base.hold(undefined, undefined)
    if (this.phase !== 'subscribed') return
    this.renewState()
    this.resubscribed = 'patch_failed'
    this.subscribe()
  }

  onWatchers (count: number): void {
    this.update({ watchers: count }, false)
    for (const l of this.listeners) l.onWatchers?.(count)
  }

  /**
   * Changes may have been missed. With a resumable (outbox) position, ask for them (a subscribe with `since`; only
   * a refusal to replay reaches the holders); otherwise the holders refetch. A resume under way answers it too.
   */
  onResync (reason: string): void {
    if (this.phase === 'resuming') return
    if (this.since !== undefined && parsePosition(this.since) !== null) {
      this.resubscribed = reason
      this.renewState()
      this.subscribe()
    } else this.resync(reason)
  }

  // ------------------------------------------------------------------ internals

  /**
   * Tells the holders to refetch: once for a burst of resyncs (one gap can be reported several times). `fresh`: a
   * snapshot brought the state, so only holders that do not take snapshots refetch.
   */
  private resync (reason: string, fresh = false): void {
    if (!fresh) this.resyncStale = true
    if (this.resyncTimer !== undefined) return
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = undefined
      const stale = this.resyncStale
      this.resyncStale = false
      if (this.phase === 'released') return
      this.update({})
      for (const l of this.listeners) if (stale || l.onSnapshot === undefined) l.onResync?.(reason, this.entityId)
      if (stale) this.host.resynced(this, reason)
    }, RESYNC_BURST_MS)
  }

  /** Keeps a position among the recent ones; returns it. */
  private remember (position: string): string {
    if (this.seen.push(position) > SEEN_POSITIONS) this.seen.shift()
    return position
  }
}
